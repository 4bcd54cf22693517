"""The ledger: what the tasks themselves say they did. Each attempt appends `start`, `tick` and
`end` (or `term`) lines; grouped by process they become executions, which the invariants use
to find duplicates and overlaps from the tasks' own point of view."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "Execution",
    "IdentitySource",
    "Ledger",
    "LedgerEvent",
    "LedgerLine",
    "build_ledger",
    "parse_line",
    "read_ledger",
    "ti_key",
]


class LedgerEvent(StrEnum):
    """What a ledger line records."""

    START = "start"  # the task's user code began
    TICK = "tick"  # still working (long tasks only)
    TERM = "term"  # SIGTERM received; the task exits now
    END = "end"  # the task's user code finished


class IdentitySource(StrEnum):
    """How much of an attempt's identity the ledger carries."""

    ENV = "env"  # TRADEWIND_TI_ID / _ATTEMPT_TOKEN / _TRY_NUMBER set by the executor
    TEMPLATE = "template"  # run id and try number rendered from templates
    STATIC = "static"  # only the DAG and task ids written into the command


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerLine:
    """One parsed line."""

    event: LedgerEvent
    at: float
    dag_id: str
    task_id: str
    run_id: str | None
    ti_id: int | None
    token: int | None
    try_number: int | None
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    """One process running one attempt's user code, as its lines tell it."""

    key: str
    dag_id: str
    task_id: str
    run_id: str | None
    ti_id: int | None
    token: int | None
    try_number: int | None
    pid: int
    start: float
    last_seen: float  # the latest line of any kind: the process was alive until at least then
    end: float | None  # None: never finished (killed, or still running)
    terminated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Ledger:
    """Every execution of a run, and how trustworthy the identities are."""

    executions: tuple[Execution, ...]
    lines: int
    malformed: int
    identity: IdentitySource


def ti_key(dag_id: str, task_id: str, run_id: str | None) -> str:
    """The task-instance key executions are grouped by; `*` when the run is unknown."""
    return f"{dag_id}/{run_id or '*'}/{task_id}"


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _run_or_none(text: str) -> str | None:
    # An executor that renders no templates leaves the placeholder as written.
    return None if "{{" in text or text in ("None", "-") else text


def parse_line(text: str) -> LedgerLine | None:
    """One ledger line, or None when it is malformed (a torn or foreign line)."""
    fields = text.split()
    if len(fields) != 10:
        return None
    event, at, dag_id, task_id, run_id, ti_id, token, try_env, try_tpl, pid = fields
    try:
        kind = LedgerEvent(event)
        when = float(at.replace(",", "."))  # EPOCHREALTIME follows the locale's decimal point
    except ValueError:
        return None
    if not pid.isdigit():
        return None
    tries = _int_or_none(try_env)
    return LedgerLine(
        event=kind,
        at=when,
        dag_id=dag_id,
        task_id=task_id,
        run_id=_run_or_none(run_id),
        ti_id=_int_or_none(ti_id),
        token=_int_or_none(token),
        try_number=tries if tries is not None else _int_or_none(try_tpl),
        pid=int(pid),
    )


def _identity(lines: list[LedgerLine]) -> IdentitySource:
    if not lines or any(line.run_id is None for line in lines):
        return IdentitySource.STATIC
    if all(line.ti_id is not None and line.token is not None for line in lines):
        return IdentitySource.ENV
    return IdentitySource.TEMPLATE


def _execution(key: str, group: list[LedgerLine]) -> Execution:
    first = group[0]
    starts = [x.at for x in group if x.event is LedgerEvent.START]
    ends = [x.at for x in group if x.event is LedgerEvent.END]
    return Execution(
        key=key,
        dag_id=first.dag_id,
        task_id=first.task_id,
        run_id=first.run_id,
        ti_id=first.ti_id,
        token=first.token,
        try_number=first.try_number,
        pid=first.pid,
        start=min(starts) if starts else min(x.at for x in group),
        last_seen=max(x.at for x in group),
        end=max(ends) if ends else None,
        terminated=any(x.event is LedgerEvent.TERM for x in group),
    )


def build_ledger(raw_lines: Iterable[str]) -> Ledger:
    """Group lines into executions: one per (attempt identity, process id)."""
    parsed: list[LedgerLine] = []
    malformed = 0
    total = 0
    for raw in raw_lines:
        if not raw.strip():
            continue
        total += 1
        line = parse_line(raw)
        if line is None:
            malformed += 1
        else:
            parsed.append(line)
    identity = _identity(parsed)
    with_run = identity is not IdentitySource.STATIC
    groups: dict[tuple[object, ...], list[LedgerLine]] = {}
    for line in parsed:
        ident = (line.dag_id, line.task_id, line.run_id, line.ti_id, line.token, line.pid)
        groups.setdefault(ident, []).append(line)
    executions = [
        _execution(ti_key(g[0].dag_id, g[0].task_id, g[0].run_id if with_run else None), g)
        for g in groups.values()
    ]
    executions.sort(key=lambda e: (e.start, e.key))
    return Ledger(executions=tuple(executions), lines=total, malformed=malformed, identity=identity)


def read_ledger(path: Path) -> Ledger:
    """Read a run's ledger file (an absent file is an empty ledger)."""
    if not path.exists():
        return build_ledger([])
    with path.open(encoding="utf-8", errors="replace") as f:
        return build_ledger(f)
