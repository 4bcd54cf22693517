"""DAG runs: creating scheduled and triggered runs, starting queued runs within
max_active_runs (creating their task instances), finishing runs, and the run's trace context
(the W3C traceparent of its root span, which every later span about the run descends from).

Lock order: the caller holds the dag row (claim_due_dags); queued runs are then locked with
`FOR UPDATE OF dag_run SKIP LOCKED`, and their task instances inserted — dag → dag_run → ti."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from tradewind.spec import DagSpec
from tradewind.states import DagRunState
from tradewind_cluster.store.notify import notify
from tradewind_cluster.store.rows import to_run_row
from tradewind_cluster.store.schema import dag, dag_run, task_instance
from tradewind_cluster.store.snapshots import RunRow

__all__ = [
    "NewRun",
    "active_run_counts",
    "create_runs",
    "finish_run",
    "first_task_start",
    "get_run",
    "insert_runs",
    "record_schedule",
    "runs_by_key",
    "set_missing_trace_contexts",
    "start_queued_runs",
    "trace_contexts",
    "trigger_run",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A run to insert in state queued."""

    run_id: str
    logical_date: datetime
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    run_type: str
    run_after: datetime | None = None
    conf: Mapping[str, Any] | None = None
    trace_context: str | None = None  # traceparent of the run's root span, if traced


def get_run(conn: Connection, dag_id: str, run_id: str) -> RunRow | None:
    """One run by its (dag_id, run_id)."""
    row = (
        conn.execute(
            sa.select(dag_run).where(dag_run.c.dag_id == dag_id, dag_run.c.run_id == run_id)
        )
        .mappings()
        .first()
    )
    return None if row is None else to_run_row(row)


def active_run_counts(conn: Connection, dag_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(queued, running) run counts per DAG."""
    if not dag_ids:
        return {}
    rows = conn.execute(
        sa.select(dag_run.c.dag_id, dag_run.c.state, sa.func.count())
        .where(dag_run.c.dag_id.in_(dag_ids), dag_run.c.state.in_(["queued", "running"]))
        .group_by(dag_run.c.dag_id, dag_run.c.state)
    )
    counts: dict[str, tuple[int, int]] = {d: (0, 0) for d in dag_ids}
    for dag_id, state, n in rows:
        queued, running = counts[dag_id]
        counts[dag_id] = (queued + n, running) if state == "queued" else (queued, running + n)
    return counts


def create_runs(
    conn: Connection, dag_id: str, runs: Iterable[NewRun], *, created_by: str
) -> dict[str, int]:
    """Insert queued runs; a run whose (dag_id, logical_date) or run_id exists is skipped, so
    two replicas can never create the same run twice. Returns run_id -> primary key of the
    runs inserted."""
    values = [
        {
            "dag_id": dag_id,
            "run_id": r.run_id,
            "logical_date": r.logical_date,
            "data_interval_start": r.data_interval_start,
            "data_interval_end": r.data_interval_end,
            "run_type": r.run_type,
            "state": DagRunState.QUEUED.value,
            "run_after": r.run_after,
            "conf": dict(r.conf or {}),
            "created_by": created_by,
            "trace_context": r.trace_context,
        }
        for r in runs
    ]
    if not values:
        return {}
    result = conn.execute(
        pg_insert(dag_run)
        .values(values)
        .on_conflict_do_nothing()
        .returning(dag_run.c.run_id, dag_run.c.id)
    )
    return {str(run_id): int(pk) for run_id, pk in result}


def insert_runs(
    conn: Connection, dag_id: str, runs: Iterable[NewRun], *, created_by: str
) -> list[int]:
    """create_runs, returning only the new primary keys."""
    return list(create_runs(conn, dag_id, runs, created_by=created_by).values())


def record_schedule(
    conn: Connection,
    dag_id: str,
    *,
    last_interval: tuple[datetime, datetime] | None,
    next_logical: datetime | None,
    next_interval: tuple[datetime, datetime] | None,
    next_create_after: datetime | None,
    check_runs: bool,
) -> None:
    """Store where the DAG's schedule stands after creating runs (caller holds the dag row)."""
    values: dict[str, Any] = {
        "next_dagrun": next_logical,
        "next_dagrun_interval_start": next_interval[0] if next_interval else None,
        "next_dagrun_interval_end": next_interval[1] if next_interval else None,
        "next_dagrun_create_after": next_create_after,
        "check_runs": check_runs,
        "updated_at": sa.func.clock_timestamp(),
    }
    if last_interval is not None:
        values["last_automated_interval_start"] = last_interval[0]
        values["last_automated_interval_end"] = last_interval[1]
    conn.execute(sa.update(dag).where(dag.c.dag_id == dag_id).values(**values))


def start_queued_runs(
    conn: Connection, spec: DagSpec, *, slots: int, now: datetime
) -> list[RunRow]:
    """Move up to `slots` queued runs (oldest logical date first) to running and create their
    task instances. Lock: `FOR UPDATE OF dag_run SKIP LOCKED` (caller holds the dag row)."""
    if slots <= 0:
        return []
    locked = conn.execute(
        sa.select(dag_run.c.id)
        .where(dag_run.c.dag_id == spec.dag_id, dag_run.c.state == "queued")
        .order_by(dag_run.c.logical_date)
        .limit(slots)
        .with_for_update(of=dag_run, skip_locked=True)
    ).scalars()
    ids = list(locked)
    if not ids:
        return []
    rows = conn.execute(
        sa.update(dag_run)
        .where(dag_run.c.id.in_(ids), dag_run.c.state == "queued")
        .values(state="running", start_date=now, examine_after=now)
        .returning(*dag_run.c)
    ).mappings()
    started = [to_run_row(r) for r in rows]
    insert_task_instances(conn, spec, started)
    return started


def insert_task_instances(
    conn: Connection, spec: DagSpec, runs: Sequence[RunRow], task_ids: Iterable[str] | None = None
) -> int:
    """Create the task instances (state none) of runs for every task of the spec (or the given
    ones); existing (run, task) pairs are left alone."""
    wanted = list(task_ids) if task_ids is not None else list(spec.tasks)
    tasks = [spec.tasks[i] for i in wanted if i in spec.tasks]
    pairs = [(run, t) for run in runs for t in tasks]
    if not pairs:
        return 0
    result = conn.execute(
        _INSERT_TIS,
        {
            "run_pk": [r.id for r, _ in pairs],
            "dag_id": [r.dag_id for r, _ in pairs],
            "run_id": [r.run_id for r, _ in pairs],
            "task_id": [t.task_id for _, t in pairs],
            "logical_date": [r.logical_date for r, _ in pairs],
            "max_tries": [t.retries for _, t in pairs],
            "pool": [t.pool for _, t in pairs],
            "pool_slots": [t.pool_slots for _, t in pairs],
            "queue": [t.queue for _, t in pairs],
            "priority_weight": [t.priority_weight_total for _, t in pairs],
            "max_active_tis_per_dag": [t.max_active_tis_per_dag for _, t in pairs],
            "operator": [t.operator for _, t in pairs],
        },
    )
    return int(result.rowcount)


# insert_task_instances as one prebuilt statement of array parameters (a run's tasks at once).
_INSERT_TIS = sa.text(
    """
    INSERT INTO task_instance (run_pk, dag_id, run_id, task_id, logical_date, max_tries, pool,
                               pool_slots, queue, priority_weight, max_active_tis_per_dag,
                               operator)
    SELECT * FROM unnest(
        CAST(:run_pk AS bigint[]), CAST(:dag_id AS text[]), CAST(:run_id AS text[]),
        CAST(:task_id AS text[]), CAST(:logical_date AS timestamptz[]),
        CAST(:max_tries AS integer[]), CAST(:pool AS text[]), CAST(:pool_slots AS integer[]),
        CAST(:queue AS text[]), CAST(:priority_weight AS integer[]),
        CAST(:max_active_tis_per_dag AS integer[]), CAST(:operator AS text[]))
    ON CONFLICT DO NOTHING
    """
)


def finish_run(conn: Connection, run_pk: int, *, to: DagRunState, now: datetime) -> bool:
    """Move a running run to success/failed (compare-and-set on state running)."""
    result = conn.execute(
        sa.update(dag_run)
        .where(dag_run.c.id == run_pk, dag_run.c.state == "running")
        .values(state=to.value, end_date=now, examine_after=None)
    )
    return result.rowcount == 1


def runs_by_key(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], RunRow]:
    """Runs by (dag_id, run_id), for building what a worker needs to know about a run."""
    if not keys:
        return {}
    rows = conn.execute(
        sa.select(dag_run).where(
            sa.tuple_(dag_run.c.dag_id, dag_run.c.run_id).in_(sorted(set(keys)))
        )
    ).mappings()
    return {(r["dag_id"], r["run_id"]): to_run_row(r) for r in rows}


def trace_contexts(conn: Connection, run_pks: Sequence[int]) -> dict[int, str | None]:
    """The stored traceparent of each run (None where the run was never traced)."""
    if not run_pks:
        return {}
    rows = conn.execute(
        sa.select(dag_run.c.id, dag_run.c.trace_context).where(
            dag_run.c.id.in_(sorted(set(run_pks)))
        )
    )
    return {int(pk): tp for pk, tp in rows}


def set_missing_trace_contexts(conn: Connection, values: Mapping[int, str]) -> None:
    """Give runs created untraced (a manual trigger from a process without tracing) the root
    span their scheduler opened when it started them; a run already traced keeps its own."""
    if values:
        conn.execute(
            sa.update(dag_run)
            .where(dag_run.c.id == sa.bindparam("pk"), dag_run.c.trace_context.is_(None))
            .values(trace_context=sa.bindparam("tp")),
            [{"pk": pk, "tp": tp} for pk, tp in sorted(values.items())],
        )


def first_task_start(conn: Connection, run_pk: int) -> datetime | None:
    """When the run's first task instance started (its earliest start_date), if any did."""
    return conn.execute(
        sa.select(sa.func.min(task_instance.c.start_date)).where(task_instance.c.run_pk == run_pk)
    ).scalar()


def trigger_run(conn: Connection, dag_id: str, run: NewRun, *, created_by: str) -> int | None:
    """Insert a queued manual (or backfill) run and ask the schedulers to start it.
    Returns its primary key, or None when a run with that id or logical date exists.
    Lock order: the dag row is updated first, then the run inserted (dag → dag_run)."""
    conn.execute(sa.update(dag).where(dag.c.dag_id == dag_id).values(check_runs=True))
    ids = insert_runs(conn, dag_id, [run], created_by=created_by)
    if ids:
        notify(conn, "runs")
    return ids[0] if ids else None
