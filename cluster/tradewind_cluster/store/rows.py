"""Mapping SQL result rows to snapshots, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import RowMapping

from tradewind.states import DagRunState, TaskInstanceState
from tradewind_cluster.store.snapshots import DagRow, RunRow, TaskInstanceRow

__all__ = ["to_dag_row", "to_run_row", "to_ti_row"]


def _pick(row: RowMapping, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: row[n] for n in names}


def to_dag_row(row: RowMapping) -> DagRow:
    """Snapshot of a `dag` row."""
    return DagRow(**_pick(row, tuple(DagRow.__dataclass_fields__)))


def to_run_row(row: RowMapping) -> RunRow:
    """Snapshot of a `dag_run` row."""
    data = _pick(row, tuple(f for f in RunRow.__dataclass_fields__ if f in row))
    data["state"] = DagRunState(row["state"])
    data["conf"] = dict(row["conf"] or {})
    return RunRow(**data)


def to_ti_row(row: RowMapping) -> TaskInstanceRow:
    """Snapshot of a `task_instance` row."""
    data = _pick(row, tuple(f for f in TaskInstanceRow.__dataclass_fields__ if f in row))
    data["state"] = TaskInstanceState(row["state"])
    followed = row.get("followed")
    data["followed"] = None if followed is None else tuple(followed)
    return TaskInstanceRow(**data)
