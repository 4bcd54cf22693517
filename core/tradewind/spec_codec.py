"""The JSON form of a DagSpec (version 1): encoding, strict decoding with errors that say
where the shape is wrong, canonical text and its hash."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from tradewind.errors import SerializationError
from tradewind.spec import (
    BranchKind,
    DagSpec,
    ScheduleKind,
    ScheduleSpec,
    TaskKind,
    TaskSpec,
)
from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule

__all__ = [
    "SERIALIZATION_VERSION",
    "check_json",
    "spec_from_dict",
    "spec_from_json",
    "spec_hash",
    "spec_to_dict",
    "spec_to_json",
]

SERIALIZATION_VERSION = 1
_VERSION_KEY = "__version"

Encode = Callable[[Any, str], Any]
Decode = Callable[[Any, str], Any]


def _fail(where: str, message: str) -> SerializationError:
    return SerializationError(f"serialized DAG: {where}: {message}")


def check_json(value: Any, where: str) -> None:
    """Raise SerializationError unless `value` is plain JSON (str-keyed dicts, lists, finite)."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, f"{value!r} is not a finite number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(where, f"key {key!r} is not a string")
            check_json(item, f"{where}[{key!r}]")
        return
    raise _fail(where, f"{type(value).__name__} value {value!r} is not JSON")


# -- scalar codecs: (encode, decode) ------------------------------------------------------
def _scalar(kind: type, name: str) -> tuple[Encode, Decode]:
    def decode(value: Any, where: str) -> Any:
        # bool is an int subclass; a JSON true is not a count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(where, f"expected {name}, got {type(value).__name__}: {value!r}")
        return value

    return decode, decode  # encoding only checks the type: the value is already JSON


def _encode_timedelta(value: timedelta, where: str) -> int | float:
    if not isinstance(value, timedelta):
        raise _fail(where, f"expected a timedelta, got {type(value).__name__}: {value!r}")
    if not value.microseconds:
        return value.days * 86400 + value.seconds
    seconds = value.total_seconds()
    if timedelta(seconds=seconds) != value:
        raise _fail(where, f"{value!r} cannot be stored exactly as seconds")
    return seconds


def _decode_timedelta(value: Any, where: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"expected a number of seconds, got {type(value).__name__}: {value!r}")
    try:
        return timedelta(seconds=value)
    except (OverflowError, ValueError):
        raise _fail(where, f"{value!r} seconds is out of range") from None


def _encode_datetime(value: datetime, where: str) -> str:
    if not isinstance(value, datetime):
        raise _fail(where, f"expected a datetime, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _fail(where, f"{value!r} is naive; specs hold aware datetimes")
    return value.isoformat()


def _decode_datetime(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise _fail(where, f"expected an ISO 8601 string, got {type(value).__name__}: {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(where, f"{value!r} is not an ISO 8601 datetime") from None
    if parsed.tzinfo is None:
        raise _fail(where, f"{value!r} has no UTC offset")
    return parsed


def _enum(kind: type[StrEnum]) -> tuple[Encode, Decode]:
    def decode(value: Any, where: str) -> StrEnum:
        try:
            return kind(value)
        except (ValueError, TypeError):
            known = ", ".join(member.value for member in kind)
            raise _fail(
                where, f"unknown {kind.__name__} {value!r}; expected one of: {known}"
            ) from None

    return (lambda value, where: decode(value, where).value), decode


def _optional(inner: tuple[Encode, Decode]) -> tuple[Encode, Decode]:
    encode, decode = inner
    return (
        lambda value, where: None if value is None else encode(value, where),
        lambda value, where: None if value is None else decode(value, where),
    )


def _encode_str_tuple(value: tuple[str, ...], where: str) -> list[str]:
    return list(value)


def _decode_str_tuple(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(where, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _encode_json_map(value: Mapping[str, Any], where: str) -> dict[str, Any]:
    copied = copy.deepcopy(dict(value))
    check_json(copied, where)
    return copied


def _decode_json_map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    copied = copy.deepcopy(value)
    check_json(copied, where)
    return copied


# -- dataclass codecs -------------------------------------------------------------------
def _codec(f: dataclasses.Field[Any]) -> tuple[Encode, Decode]:
    return _CODECS[str(f.type)]


def _dataclass_codec(kind: type[Any]) -> tuple[Encode, Decode]:
    def encode(value: Any, where: str) -> dict[str, Any]:
        return {
            f.name: _codec(f)[0](getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(kind)
        }

    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {type(value).__name__}")
        fields = {f.name: f for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise _fail(where, f"unknown keys {unknown} for {kind.__name__}")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _codec(f)[1](value[name], f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(where, f"missing required key {name!r} for {kind.__name__}")
        return kind(**kwargs)

    return encode, decode


def _encode_tasks(value: Mapping[str, TaskSpec], where: str) -> list[dict[str, Any]]:
    encode = _CODECS["TaskSpec"][0]
    return [encode(task, f"{where}[{task_id!r}]") for task_id, task in value.items()]


def _decode_tasks(value: Any, where: str) -> dict[str, TaskSpec]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list of tasks, got {type(value).__name__}")
    decode = _CODECS["TaskSpec"][1]
    tasks: dict[str, TaskSpec] = {}
    for i, item in enumerate(value):
        task = decode(item, f"{where}[{i}]")
        if task.task_id in tasks:
            raise _fail(where, f"task_id {task.task_id!r} appears twice")
        tasks[task.task_id] = task
    return tasks


_TIMEDELTA = (_encode_timedelta, _decode_timedelta)
_DATETIME = (_encode_datetime, _decode_datetime)
# Keyed by the annotation text of spec.py's fields: a new field type fails loudly here.
_CODECS: dict[str, tuple[Encode, Decode]] = {
    "str": _scalar(str, "a string"),
    "int": _scalar(int, "an integer"),
    "bool": _scalar(bool, "a boolean"),
    "str | None": _optional(_scalar(str, "a string")),
    "int | None": _optional(_scalar(int, "an integer")),
    "bool | None": _optional(_scalar(bool, "a boolean")),
    "timedelta": _TIMEDELTA,
    "timedelta | None": _optional(_TIMEDELTA),
    "datetime | None": _optional(_DATETIME),
    "tuple[str, ...]": (_encode_str_tuple, _decode_str_tuple),
    "Mapping[str, Any]": (_encode_json_map, _decode_json_map),
    "TriggerRule": _enum(TriggerRule),
    "WeightRule": _enum(WeightRule),
    "TaskKind": _enum(TaskKind),
    "ScheduleKind": _enum(ScheduleKind),
    "BranchKind | None": _optional(_enum(BranchKind)),
    "Mapping[str, TaskSpec]": (_encode_tasks, _decode_tasks),
}
_CODECS["TaskSpec"] = _dataclass_codec(TaskSpec)
_CODECS["ScheduleSpec"] = _dataclass_codec(ScheduleSpec)
_DAG_CODEC = _dataclass_codec(DagSpec)


def spec_to_dict(spec: DagSpec) -> dict[str, Any]:
    """The JSON-able form of `spec`, with `"__version": 1`; SerializationError if not JSON."""
    return {_VERSION_KEY: SERIALIZATION_VERSION, "dag": _DAG_CODEC[0](spec, repr(spec.dag_id))}


def spec_from_dict(data: Any) -> DagSpec:
    """Read back spec_to_dict's output; SerializationError on an unknown version or bad shape."""
    if not isinstance(data, dict):
        raise SerializationError(f"serialized DAG must be a JSON object, got {type(data).__name__}")
    version = data.get(_VERSION_KEY)
    if version != SERIALIZATION_VERSION or isinstance(version, bool):
        raise SerializationError(
            f"unsupported serialized DAG version {version!r}; "
            f"this Tradewind reads version {SERIALIZATION_VERSION}"
        )
    unknown = sorted(set(data) - {_VERSION_KEY, "dag"})
    if unknown or "dag" not in data:
        raise SerializationError(
            f"serialized DAG must have exactly the keys '__version' and 'dag'; got {sorted(data)}"
        )
    dag = data["dag"]
    where = repr(dag.get("dag_id")) if isinstance(dag, dict) else "dag"
    spec: DagSpec = _DAG_CODEC[1](dag, where)
    return spec


def spec_to_json(spec: DagSpec) -> str:
    """Canonical JSON text: sorted keys, no spaces, the same bytes on every run."""
    return json.dumps(
        spec_to_dict(spec),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,  # pure ASCII: any str (even a lone surrogate) encodes and hashes
        allow_nan=False,
    )


def spec_from_json(text: str | bytes) -> DagSpec:
    """Parse spec_to_json's output; SerializationError for invalid JSON or shape."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SerializationError(f"serialized DAG is not valid JSON: {exc}") from None
    return spec_from_dict(data)


def spec_hash(spec: DagSpec) -> str:
    """sha256 hex digest of the canonical JSON: equal specs hash equal."""
    return hashlib.sha256(spec_to_json(spec).encode("utf-8")).hexdigest()
