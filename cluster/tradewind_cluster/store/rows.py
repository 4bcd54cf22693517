"""Mapping SQL result rows to snapshots, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradewind.states import DagRunState, TaskInstanceState
from tradewind_cluster.store.snapshots import DagRow, RunRow, TaskInstanceRow

__all__ = ["to_dag_row", "to_run_row", "to_ti_row"]


def _pick(row: Mapping[Any, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {n: row[n] for n in names}


def to_dag_row(row: Mapping[Any, Any]) -> DagRow:
    """Snapshot of a `dag` row."""
    return DagRow(**_pick(row, tuple(DagRow.__dataclass_fields__)))


def to_run_row(row: Mapping[Any, Any]) -> RunRow:
    """Snapshot of a `dag_run` row."""
    data = _pick(row, tuple(f for f in RunRow.__dataclass_fields__ if f in row))
    data["state"] = DagRunState(row["state"])
    data["conf"] = dict(row["conf"] or {})
    return RunRow(**data)


_TI_FIELDS = tuple(TaskInstanceRow.__dataclass_fields__)
_TI_STATES = {s.value: s for s in TaskInstanceState}


def to_ti_row(row: Mapping[Any, Any]) -> TaskInstanceRow:
    """Snapshot of a `task_instance` row."""
    return _ti_row({f: row[f] for f in _TI_FIELDS if f in row})


def _ti_row(data: dict[str, Any]) -> TaskInstanceRow:
    data["state"] = _TI_STATES[data["state"]]
    followed = data.get("followed")
    if followed is not None:
        data["followed"] = tuple(followed)
    return TaskInstanceRow(**data)
