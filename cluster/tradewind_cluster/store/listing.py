"""Read-only queries behind the CLI's listings: DAGs, runs, the task instances of a run and
the cluster's status (replicas, workers, queue and pool depth, parse shards). None takes a
lock; every query has a LIMIT or reads a bounded partial index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.members import MemberRow, list_members
from tradewind_cluster.store.rows import to_run_row
from tradewind_cluster.store.schema import (
    dag,
    dag_file,
    dag_run,
    pool,
    serialized_dag,
    task_instance,
)
from tradewind_cluster.store.snapshots import RunRow
from tradewind_cluster.store.workers import WorkerRow, list_workers

__all__ = [
    "ClusterStatus",
    "DagInfo",
    "ParseShare",
    "PoolDepth",
    "QueueDepth",
    "TaskState",
    "cluster_status",
    "find_run",
    "find_task_instance",
    "get_dag",
    "list_dags",
    "list_runs",
    "task_states",
]

ti = task_instance
_NOW = sa.func.clock_timestamp()
_WAITING = ("scheduled", "queued", "running")


@dataclass(frozen=True, slots=True, kw_only=True)
class DagInfo:
    """One DAG as `dags list` shows it; owners come from its serialized tasks."""

    dag_id: str
    fileloc: str
    owners: tuple[str, ...]
    is_paused: bool
    is_active: bool
    schedule: str
    description: str | None
    tags: tuple[str, ...]
    max_active_runs: int
    next_dagrun: datetime | None
    next_dagrun_create_after: datetime | None
    has_spec: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskState:
    """One task instance of a run, with its dates (`tasks states-for-dag-run`)."""

    ti_id: int
    task_id: str
    state: str
    try_number: int
    max_tries: int
    operator: str | None
    pool: str
    queue: str
    worker: str | None
    start_date: datetime | None
    end_date: datetime | None
    reason: str | None


def _dag_query() -> sa.Select[tuple[object, ...]]:
    owners = sa.func.jsonb_path_query_array(serialized_dag.c.data, "$.dag.tasks[*].owner")
    return sa.select(
        dag, owners.label("owners"), serialized_dag.c.dag_id.label("spec_dag_id")
    ).select_from(dag.outerjoin(serialized_dag, serialized_dag.c.dag_id == dag.c.dag_id))


def _dag_info(r: sa.RowMapping) -> DagInfo:
    return DagInfo(
        dag_id=r["dag_id"],
        fileloc=r["fileloc"],
        owners=tuple(sorted({str(o) for o in r["owners"] or ()})),
        is_paused=r["is_paused"],
        is_active=r["is_active"],
        schedule=r["schedule_label"],
        description=r["description"],
        tags=tuple(r["tags"] or ()),
        max_active_runs=r["max_active_runs"],
        next_dagrun=r["next_dagrun"],
        next_dagrun_create_after=r["next_dagrun_create_after"],
        has_spec=r["spec_dag_id"] is not None,
    )


def list_dags(conn: Connection, *, limit: int, include_inactive: bool = False) -> list[DagInfo]:
    """DAGs by dag_id; only active ones (their file still defines them) unless asked."""
    q = _dag_query().order_by(dag.c.dag_id).limit(limit)
    if not include_inactive:
        q = q.where(dag.c.is_active)
    return [_dag_info(r) for r in conn.execute(q).mappings()]


def get_dag(conn: Connection, dag_id: str) -> DagInfo | None:
    """One DAG, active or not, or None."""
    row = conn.execute(_dag_query().where(dag.c.dag_id == dag_id)).mappings().first()
    return None if row is None else _dag_info(row)


def list_runs(
    conn: Connection, dag_id: str, *, state: str | None = None, limit: int = 1000
) -> list[RunRow]:
    """Runs of a DAG, newest logical date first (Airflow's `dags list-runs` order)."""
    q = (
        sa.select(dag_run)
        .where(dag_run.c.dag_id == dag_id)
        .order_by(dag_run.c.logical_date.desc())
        .limit(limit)
    )
    if state is not None:
        q = q.where(dag_run.c.state == state)
    return [to_run_row(r) for r in conn.execute(q).mappings()]


def find_run(
    conn: Connection, dag_id: str, *, run_id: str, logical_date: datetime | None = None
) -> RunRow | None:
    """A run by its run id, else (when given) by its logical date."""
    where = dag_run.c.run_id == run_id
    if logical_date is not None:
        where = where | (dag_run.c.logical_date == logical_date)
    row = (
        conn.execute(
            sa.select(dag_run)
            .where(dag_run.c.dag_id == dag_id, where)
            .order_by((dag_run.c.run_id == run_id).desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return None if row is None else to_run_row(row)


def _task_state(r: sa.RowMapping) -> TaskState:
    return TaskState(
        ti_id=r["id"],
        task_id=r["task_id"],
        state=r["state"],
        try_number=r["try_number"],
        max_tries=r["max_tries"],
        operator=r["operator"],
        pool=r["pool"],
        queue=r["queue"],
        worker=r["worker"],
        start_date=r["start_date"],
        end_date=r["end_date"],
        reason=r["reason"],
    )


def task_states(conn: Connection, run_pk: int, *, limit: int = 10_000) -> list[TaskState]:
    """Every task instance of one run, by task id (bounded by the DAG's size)."""
    rows = conn.execute(
        sa.select(ti).where(ti.c.run_pk == run_pk).order_by(ti.c.task_id).limit(limit)
    ).mappings()
    return [_task_state(r) for r in rows]


def find_task_instance(
    conn: Connection, dag_id: str, run_id: str, task_id: str
) -> TaskState | None:
    """One task instance by (dag_id, run_id, task_id), or None."""
    row = (
        conn.execute(
            sa.select(ti)
            .where(ti.c.dag_id == dag_id, ti.c.run_id == run_id, ti.c.task_id == task_id)
            .limit(1)
        )
        .mappings()
        .first()
    )
    return None if row is None else _task_state(row)


# ------------------------------------------------------------------------------ cluster status
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDepth:
    """Task instances waiting or running per queue."""

    queue: str
    scheduled: int
    queued: int
    running: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolDepth:
    """A pool's slots and what occupies or waits for them; slots is None for a pool that
    task instances name but that does not exist (they will not be queued)."""

    pool: str
    slots: int | None
    used_slots: int
    scheduled: int
    queued: int
    running: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseShare:
    """DAG files a replica holds a parse lease on now, and those it parsed last."""

    member_id: str
    leased: int
    parsed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    """What `tradewind cluster status` shows."""

    members: tuple[MemberRow, ...]
    workers: tuple[WorkerRow, ...]
    worker_slots_used: dict[str, int]
    queues: tuple[QueueDepth, ...]
    pools: tuple[PoolDepth, ...]
    oldest_queued_age_s: float | None
    parsing: tuple[ParseShare, ...]


_Count = tuple[str, str, str, int, int]  # queue, pool, state, task instances, pool slots


def _active_counts(conn: Connection, limit: int) -> list[_Count]:
    # The partial indexes on scheduled and queued/running rows keep this to work in flight.
    rows = conn.execute(
        sa.select(ti.c.queue, ti.c.pool, ti.c.state, sa.func.count(), sa.func.sum(ti.c.pool_slots))
        .where(ti.c.state.in_(_WAITING))
        .group_by(ti.c.queue, ti.c.pool, ti.c.state)
        .limit(limit)
    ).all()
    return [(str(q), str(p), str(s), int(n), int(slots or 0)) for q, p, s, n, slots in rows]


def _queue_depths(rows: list[_Count]) -> tuple[QueueDepth, ...]:
    counts: dict[str, dict[str, int]] = {}
    for queue, _pool, state, n, _slots in rows:
        per = counts.setdefault(queue, dict.fromkeys(_WAITING, 0))
        per[state] += n
    return tuple(QueueDepth(queue=q, **c) for q, c in sorted(counts.items()))


def _pool_depths(conn: Connection, rows: list[_Count], limit: int) -> tuple[PoolDepth, ...]:
    found = conn.execute(sa.select(pool.c.name, pool.c.slots).order_by(pool.c.name).limit(limit))
    slots = {str(name): int(n) for name, n in found.all()}
    counts: dict[str, dict[str, int]] = {name: dict.fromkeys(_WAITING, 0) for name in slots}
    used: dict[str, int] = dict.fromkeys(slots, 0)
    for _queue, pool_name, state, n, pool_slots in rows:
        counts.setdefault(pool_name, dict.fromkeys(_WAITING, 0))[state] += n
        if state != "scheduled":
            used[pool_name] = used.get(pool_name, 0) + pool_slots
    return tuple(
        PoolDepth(pool=name, slots=slots.get(name), used_slots=used.get(name, 0), **c)
        for name, c in sorted(counts.items())
    )


def _oldest_queued_age(conn: Connection) -> float | None:
    age = conn.execute(
        sa.select(sa.func.extract("epoch", _NOW - sa.func.min(ti.c.queued_at))).where(
            ti.c.state == "queued"
        )
    ).scalar()
    return None if age is None else float(age)


def _parse_shares(conn: Connection, limit: int) -> tuple[ParseShare, ...]:
    leased: dict[str, int] = dict(
        conn.execute(
            sa.select(dag_file.c.lease_owner, sa.func.count())
            .where(dag_file.c.lease_owner.is_not(None), dag_file.c.lease_expires_at > _NOW)
            .group_by(dag_file.c.lease_owner)
            .limit(limit)
        ).all()
    )
    parsed: dict[str, int] = dict(
        conn.execute(
            sa.select(dag_file.c.parsed_by, sa.func.count())
            .where(dag_file.c.is_present, dag_file.c.parsed_by.is_not(None))
            .group_by(dag_file.c.parsed_by)
            .limit(limit)
        ).all()
    )
    return tuple(
        ParseShare(member_id=m, leased=int(leased.get(m, 0)), parsed=int(parsed.get(m, 0)))
        for m in sorted(set(leased) | set(parsed))
    )


def _slots_used(conn: Connection, limit: int) -> dict[str, int]:
    rows = conn.execute(
        sa.select(ti.c.worker, sa.func.count())
        .where(ti.c.state.in_(("queued", "running")), ti.c.worker.is_not(None))
        .group_by(ti.c.worker)
        .limit(limit)
    ).all()
    return {str(w): int(n) for w, n in rows}


def cluster_status(conn: Connection, *, limit: int = 1000) -> ClusterStatus:
    """Replicas (ended ones too), workers, queue and pool depth, the oldest queued attempt's
    age (database clock) and each replica's share of DAG-file parsing."""
    rows = _active_counts(conn, limit)
    return ClusterStatus(
        members=tuple(list_members(conn, include_ended=True, limit=limit)),
        workers=tuple(list_workers(conn, limit=limit)),
        worker_slots_used=_slots_used(conn, limit),
        queues=_queue_depths(rows),
        pools=_pool_depths(conn, rows, limit),
        oldest_queued_age_s=_oldest_queued_age(conn),
        parsing=_parse_shares(conn, limit),
    )
