"""What travels between the agent, the fork server and a task process: the launch order of one
attempt and the events a task process sends back (started, result), as JSON lines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from tradewind.errors import BadInputError

__all__ = [
    "ChildEvent",
    "ChildResult",
    "Launch",
    "Outcome",
    "SchedulerAccess",
    "attempt_key",
    "decode_line",
    "encode_line",
]


def attempt_key(ti_id: int, token: int) -> str:
    """The name of one attempt between agent and fork server."""
    return f"{ti_id}.{token}"


class Outcome(StrEnum):
    """How a task process says its task ended."""

    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


class ChildEvent(StrEnum):
    """Events a task process writes on its event pipe."""

    STARTED = "started"  # user code is about to start
    RESULT = "result"  # the outcome, sent once just before exiting


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerAccess:
    """How a task process reaches a scheduler for XComs and Variables (handed over in memory,
    never through the environment, so the token is not inherited by user subprocesses)."""

    addresses: tuple[str, ...]
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    call_timeout_s: float = 5.0

    def __repr__(self) -> str:
        return (
            f"SchedulerAccess(addresses={self.addresses!r}, token={'***' if self.token else None})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """One attempt as the task process needs it."""

    ti_id: int
    token: int
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    logical_date: str
    fileloc: str
    file_hash: str
    task_json: str
    context_json: str
    queue: str
    log_path: str
    dags_folder: str
    default_timezone: str = "UTC"
    max_xcom_bytes: int = 1024 * 1024
    hostname: str = ""
    env: dict[str, str] = field(default_factory=dict)
    access: SchedulerAccess = field(default_factory=lambda: SchedulerAccess(addresses=()))

    @property
    def key(self) -> str:
        """attempt_key of this attempt."""
        return attempt_key(self.ti_id, self.token)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (shallow: every field is a string, a number, the env mapping or the
        access record; dataclasses.asdict deep-copied the whole environment per attempt)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in _PLAIN_FIELDS}
        data["env"] = dict(self.env)
        access = self.access
        data["access"] = {name: getattr(access, name) for name in _ACCESS_FIELDS}
        data["access"]["addresses"] = list(access.addresses)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Launch:
        """Read back to_dict's output."""
        raw = dict(data)
        access = dict(raw.pop("access", {}))
        access["addresses"] = tuple(access.get("addresses", ()))
        return cls(**raw, access=SchedulerAccess(**access))


_PLAIN_FIELDS = tuple(f.name for f in fields(Launch) if f.name not in ("env", "access"))
_ACCESS_FIELDS = tuple(f.name for f in fields(SchedulerAccess))


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildResult:
    """What a task process reports as its last word."""

    outcome: Outcome
    error: str | None = None
    followed: tuple[str, ...] | None = None  # set for branch and short-circuit tasks
    # (key, JSON text) of the values a successful task returned: they travel with the outcome
    xcoms: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The event payload."""
        followed = None if self.followed is None else list(self.followed)
        data: dict[str, Any] = {
            "outcome": self.outcome.value,
            "error": self.error,
            "followed": followed,
        }
        if self.xcoms:
            data["xcoms"] = [list(pair) for pair in self.xcoms]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChildResult:
        """Read back to_dict's output; BadInputError on a bad shape."""
        try:
            followed = data.get("followed")
            return cls(
                outcome=Outcome(data["outcome"]),
                error=None if data.get("error") is None else str(data["error"]),
                followed=None if followed is None else tuple(str(t) for t in followed),
                xcoms=tuple((str(k), str(v)) for k, v in data.get("xcoms") or ()),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInputError(f"malformed task result {data!r}: {exc}") from None


def encode_line(message: dict[str, Any]) -> bytes:
    """One message as a JSON line (json.dumps never emits a raw newline)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    """One JSON line back to a message; BadInputError when it is not a JSON object."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise BadInputError(f"malformed message line {line[:200]!r}: {exc}") from None
    if not isinstance(value, dict):
        raise BadInputError(f"message line is not a JSON object: {line[:200]!r}")
    return value
