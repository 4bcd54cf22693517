"""DAG rows: registration from parsed files and the run-creation claim."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.prepared import PreparedStatement
from tradewind_cluster.store.rows import to_dag_row
from tradewind_cluster.store.schema import dag
from tradewind_cluster.store.snapshots import DagRow

__all__ = ["any_due_dags", "claim_due_dags", "clear_check_runs", "next_due_at", "set_paused"]


# A DAG with a run due at :now, or with queued runs waiting to start: the probe and the claim
# test the same predicate.
_DUE = (
    "(next_dagrun_create_after <= :now AND is_active AND NOT is_paused)"
    " OR (check_runs AND is_active)"
)
# Run on every loop pass: prepared (see store/prepared.py).
_ANY_DUE = PreparedStatement(
    "tw_any_due_dags",
    sa.text(f"SELECT EXISTS (SELECT 1 FROM dag WHERE {_DUE})"),
    {"now": "timestamptz"},
)
_CLAIM = (
    sa.select(dag)
    .where(sa.text(_DUE).bindparams(sa.bindparam("now", type_=dag.c.next_dagrun_create_after.type)))
    .order_by(dag.c.next_dagrun_create_after.asc().nulls_last())
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .with_for_update(of=dag, skip_locked=True)
)
# Read before every idle wait: prepared.
_NEXT_DUE = PreparedStatement(
    "tw_next_due_at",
    sa.text(
        """
        SELECT least(
            (SELECT min(next_dagrun_create_after) FROM dag WHERE is_active AND NOT is_paused),
            (SELECT min(examine_after) FROM dag_run WHERE state = 'running'))
        """
    ),
    {},
)


def any_due_dags(conn: Connection, *, now: datetime) -> bool:
    """Whether claim_due_dags could find anything, without a transaction or a lock: most loop
    passes have no run to create or start, and this is one statement where the claim's
    transaction is three round trips. A DAG another replica holds counts as due."""
    return bool(_ANY_DUE.execute(conn, {"now": now}).scalar())


def claim_due_dags(conn: Connection, *, now: datetime, limit: int) -> list[DagRow]:
    """Lock up to `limit` DAGs that have a run due (or queued runs waiting to start).

    Lock: `FOR UPDATE OF dag SKIP LOCKED` — each due DAG is handled by one replica per loop;
    the others skip it rather than wait. First in the lock order (dag → dag_run → ti → pool)."""
    rows = conn.execute(_CLAIM, {"now": now, "limit": limit}).mappings()
    return [to_dag_row(r) for r in rows]


def clear_check_runs(conn: Connection, dag_id: str) -> None:
    """The DAG was looked at; it needs no further look until a run finishes or is triggered."""
    conn.execute(sa.update(dag).where(dag.c.dag_id == dag_id).values(check_runs=False))


def set_paused(conn: Connection, dag_id: str, paused: bool) -> bool:
    """Pause or unpause a DAG; unpausing asks the schedulers to look at it at once."""
    result = conn.execute(
        sa.update(dag).where(dag.c.dag_id == dag_id).values(is_paused=paused, check_runs=not paused)
    )
    return result.rowcount == 1


def next_due_at(conn: Connection) -> datetime | None:
    """The earliest moment scheduled work falls due: a DAG's next run, or a run's pending
    examination (retry delay, timeout). An idle replica sleeps until then at most."""
    value = _NEXT_DUE.execute(conn, {}).scalar()
    return value if isinstance(value, datetime) else None
