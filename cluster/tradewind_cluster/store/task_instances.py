"""Task-instance rows: reads and compare-and-set state changes.

Every change names the state it expects (and the fencing token where an attempt exists) in
its WHERE clause and checks the row count: zero rows means another actor moved first, and
the change is dropped as stale, never retried blindly."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.states import TaskInstanceState, can_transition
from tradewind_cluster.store.rows import to_ti_row
from tradewind_cluster.store.schema import task_instance
from tradewind_cluster.store.snapshots import TaskInstanceRow

__all__ = ["check_legal", "get_ti", "set_ti_state", "set_tis_state", "tis_of_run"]

ti = task_instance


def get_ti(conn: Connection, ti_id: int) -> TaskInstanceRow | None:
    """One task instance by primary key, or None."""
    row = conn.execute(sa.select(ti).where(ti.c.id == ti_id)).mappings().first()
    return None if row is None else to_ti_row(row)


def tis_of_run(conn: Connection, run_pk: int, limit: int = 10_000) -> list[TaskInstanceRow]:
    """Every task instance of one run (bounded by the DAG's size)."""
    rows = conn.execute(
        sa.select(ti).where(ti.c.run_pk == run_pk).order_by(ti.c.id).limit(limit)
    ).mappings()
    return [to_ti_row(r) for r in rows]


def set_ti_state(
    conn: Connection,
    ti_id: int,
    *,
    expect: TaskInstanceState,
    to: TaskInstanceState,
    token: int | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move one TI from `expect` to `to` if it is still there (and holds `token`).

    Returns False when the row moved on: the caller drops the change as stale."""
    check_legal(expect, to)
    where = [ti.c.id == ti_id, ti.c.state == expect.value]
    if token is not None:
        where.append(ti.c.token == token)
    result = conn.execute(
        sa.update(ti)
        .where(*where)
        .values(state=to.value, updated_at=sa.func.clock_timestamp(), **(values or {}))
    )
    return result.rowcount == 1


def set_tis_state(
    conn: Connection,
    ti_ids: Iterable[int],
    *,
    expect: TaskInstanceState,
    to: TaskInstanceState,
    values: dict[str, Any] | None = None,
) -> Sequence[int]:
    """Move many TIs in one statement; returns the ids that were still in `expect`."""
    check_legal(expect, to)
    ids = list(ti_ids)
    if not ids:
        return []
    result = conn.execute(
        sa.update(ti)
        .where(ti.c.id.in_(ids), ti.c.state == expect.value)
        .values(state=to.value, updated_at=sa.func.clock_timestamp(), **(values or {}))
        .returning(ti.c.id)
    )
    return [r[0] for r in result]


def check_legal(expect: TaskInstanceState, to: TaskInstanceState) -> None:
    """InvalidTransitionError unless the state machine allows `expect` -> `to`."""
    if not can_transition(expect, to):
        from tradewind.errors import InvalidTransitionError

        raise InvalidTransitionError(f"task instance: {expect.value!r} -> {to.value!r}")
