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
from tradewind_cluster.store.prepared import PreparedStatement
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


_ACTIVE_RUN_COUNTS = PreparedStatement(
    "tw_active_run_counts",
    sa.text(
        """
    SELECT dag_id, state, count(*) FROM dag_run
    WHERE dag_id = ANY(CAST(:dag_ids AS text[])) AND state IN ('queued', 'running')
    GROUP BY dag_id, state
    """
    ),
    {"dag_ids": "text[]"},
)


def active_run_counts(conn: Connection, dag_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(queued, running) run counts per DAG."""
    if not dag_ids:
        return {}
    rows = _ACTIVE_RUN_COUNTS.execute(conn, {"dag_ids": list(dag_ids)})
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


_RECORD_SCHEDULE = PreparedStatement(
    "tw_record_schedule",
    sa.text(
        """
    UPDATE dag SET
        next_dagrun = :next_logical,
        next_dagrun_interval_start = :next_start, next_dagrun_interval_end = :next_end,
        next_dagrun_create_after = :next_create_after, check_runs = :check_runs,
        last_automated_interval_start = coalesce(:last_start, last_automated_interval_start),
        last_automated_interval_end = coalesce(:last_end, last_automated_interval_end),
        updated_at = clock_timestamp()
    WHERE dag_id = :dag_id
    """
    ),
    {
        "dag_id": "text",
        "next_logical": "timestamptz",
        "next_start": "timestamptz",
        "next_end": "timestamptz",
        "next_create_after": "timestamptz",
        "check_runs": "boolean",
        "last_start": "timestamptz",
        "last_end": "timestamptz",
    },
)


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
    """Store where the DAG's schedule stands after creating runs (caller holds the dag row);
    the last automated interval stays as it was when `last_interval` is None."""
    _RECORD_SCHEDULE.execute(
        conn,
        {
            "dag_id": dag_id,
            "next_logical": next_logical,
            "next_start": next_interval[0] if next_interval else None,
            "next_end": next_interval[1] if next_interval else None,
            "next_create_after": next_create_after,
            "check_runs": check_runs,
            "last_start": last_interval[0] if last_interval else None,
            "last_end": last_interval[1] if last_interval else None,
        },
    )


# The oldest queued runs of a DAG (SKIP LOCKED: another replica may be starting some) to running,
# in one statement. The pick is a materialized CTE: as `id IN (SELECT ... LIMIT n FOR UPDATE SKIP
# LOCKED)` the planner may run the subquery more than once and start more than n runs (a test
# caught it).
_START_QUEUED = PreparedStatement(
    "tw_start_queued_runs",
    sa.text(
        f"""
    WITH picked AS MATERIALIZED (
        SELECT id FROM dag_run WHERE dag_id = :dag_id AND state = 'queued'
        ORDER BY logical_date LIMIT :slots
        FOR UPDATE SKIP LOCKED
    )
    UPDATE dag_run SET state = 'running', start_date = :now, examine_after = :now
    FROM picked WHERE dag_run.id = picked.id AND dag_run.state = 'queued'
    RETURNING {", ".join(f"dag_run.{c.name}" for c in dag_run.c)}
    """
    ),
    {"now": "timestamptz", "dag_id": "text", "slots": "integer"},
)


def start_queued_runs(
    conn: Connection, spec: DagSpec, *, slots: int, now: datetime
) -> list[RunRow]:
    """Move up to `slots` queued runs (oldest logical date first) to running and create their
    task instances. Lock: `FOR UPDATE SKIP LOCKED` on the runs picked (caller holds the dag row)."""
    if slots <= 0:
        return []
    rows = _START_QUEUED.execute(conn, {"now": now, "dag_id": spec.dag_id, "slots": slots})
    started = sorted((to_run_row(r) for r in rows.mappings()), key=lambda r: r.logical_date)
    if started:
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


_SET_MISSING_TRACE_CONTEXTS = PreparedStatement(
    "tw_set_missing_trace_contexts",
    sa.text(
        """
    UPDATE dag_run SET trace_context = v.tp
    FROM unnest(CAST(:pks AS bigint[]), CAST(:tps AS text[])) AS v(pk, tp)
    WHERE dag_run.id = v.pk AND dag_run.trace_context IS NULL
    """
    ),
    {"pks": "bigint[]", "tps": "text[]"},
)


def set_missing_trace_contexts(conn: Connection, values: Mapping[int, str]) -> None:
    """Give runs created untraced (a manual trigger from a process without tracing) the root
    span their scheduler opened when it started them; a run already traced keeps its own."""
    if values:
        pairs = sorted(values.items())
        _SET_MISSING_TRACE_CONTEXTS.execute(
            conn, {"pks": [pk for pk, _ in pairs], "tps": [tp for _, tp in pairs]}
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
