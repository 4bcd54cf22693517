"""The critical section: move scheduled task instances to queued, one pool at a time, so that
replicas queue concurrently where their work does not conflict.

Per pool, in one short transaction:
1. lock the pool's best candidates: `FOR UPDATE OF task_instance SKIP LOCKED` (ti before pool);
2. lock the pool row `FOR UPDATE SKIP LOCKED`: only its holder may add to the pool's usage, so
   the usage it counts is exact; a pool held by another replica is skipped, not waited for;
3. try-lock each candidate DAG with a transaction advisory lock (never waits): DAG-wide limits
   (max_active_tasks, max_active_tis_per_dag) span pools, and only the holder may add to them;
4. when a cluster-wide parallelism is set, take one advisory lock for the final count and
   update only (held for about a millisecond, not across the decision);
5. decide with the pure `admit()`, then queue the admitted rows and create their attempts with
   new fencing tokens in the same transaction, so a token is committed before any dispatch.

Four round trips: the candidates; the locks of steps 2-4 (one statement); the counts the
decision needs (one statement, after the locks, so its snapshot sees what the previous holder
committed); the queueing.

Also the pools' slot figures (Airflow's Pool.slots_stats) the pool gauges report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.admission import Admission, Candidate, Capacity, PoolCapacity
from tradewind_cluster.store.prepared import PreparedStatement
from tradewind_cluster.store.schema import pool, task_instance

__all__ = [
    "PoolOutcome",
    "PoolSlots",
    "QueuedAttempt",
    "RunFacts",
    "pool_slots",
    "pools_with_scheduled",
    "queue_pool",
    "queued_from_row",
]

ti = task_instance
_ACTIVE = ("queued", "running")
_DAG_LOCK_SPACE = 0x7477_0001  # advisory lock namespace of per-DAG admission
_PARALLELISM_LOCK = (0x7477_0002, 0)
# With N free worker slots the section first weighs max(2N, this) candidates.
_FIRST_LOOK = 32

Decide = Callable[[Sequence[Candidate], Capacity], Admission]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFacts:
    """An attempt's run as a worker is told about it, and its DAG's stored spec version."""

    run_type: str
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    conf: Mapping[str, Any]
    spec_hash: str | None  # None: the DAG has no stored spec


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedAttempt:
    """An attempt just queued, with the fencing token every report about it must carry."""

    attempt_id: int
    ti_id: int
    token: int
    try_number: int  # the try this attempt will be when it starts
    dag_id: str
    run_id: str
    task_id: str
    queue: str
    pool: str
    logical_date: datetime
    queued_at: datetime | None = None
    scheduled_at: datetime | None = None  # when the examiner last moved it to scheduled
    first_try: bool = True  # no try of it has started yet (Airflow's "first round")
    run_trace_context: str | None = None  # traceparent of the run's root span
    trace_context: str | None = None  # traceparent of the task.queue span, once recorded
    # What dispatch needs of the run and the DAG, read by the statement that queued it (so a
    # dispatch pass reads nothing more): None where it was not (an attempt built elsewhere).
    run: RunFacts | None = None

    @property
    def scheduled_for(self) -> float | None:
        """Seconds it waited in scheduled before it was queued (task.scheduled_duration)."""
        if self.queued_at is None or self.scheduled_at is None:
            return None
        return (self.queued_at - self.scheduled_at).total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSlots:
    """A pool's slots as Airflow's pool gauges count them: slots taken by queued and running
    task instances, slots wanted by scheduled ones, and what is open (total - queued -
    running, negative after the pool was shrunk below its use)."""

    pool: str
    total: int
    queued: int
    running: int
    scheduled: int

    @property
    def open(self) -> int:
        """Slots free now."""
        return self.total - self.queued - self.running


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolOutcome:
    """What one pool's critical section did (None from queue_pool: the pool was busy)."""

    pool: str
    queued: tuple[QueuedAttempt, ...]
    admission: Admission | None  # None when there was nothing to decide
    skipped_dags: frozenset[str]  # DAGs another replica was admitting for
    looked: int = 0  # scheduled task instances locked and weighed


_POOLS_WITH_SCHEDULED = PreparedStatement(
    "tw_pools_with_scheduled",
    sa.text("SELECT pool FROM task_instance WHERE state = 'scheduled' GROUP BY pool LIMIT :limit"),
    {"limit": "integer"},
)


def pools_with_scheduled(conn: Connection, *, limit: int = 256) -> list[str]:
    """Pools that have scheduled task instances (reads the partial index only); every loop
    pass runs it, prepared."""
    return [r[0] for r in _POOLS_WITH_SCHEDULED.execute(conn, {"limit": limit})]


# The critical section's first statement (ix_ti_scheduled), prepared.
_CANDIDATES = PreparedStatement(
    "tw_queue_candidates",
    sa.text(
        """
        SELECT t.id, t.dag_id, t.run_id, t.task_id, t.logical_date, t.pool, t.pool_slots,
               t.priority_weight, t.queue, t.max_active_tis_per_dag, d.max_active_tasks
        FROM task_instance AS t JOIN dag AS d ON d.dag_id = t.dag_id
        WHERE t.state = 'scheduled' AND t.pool = :pool
        ORDER BY t.priority_weight DESC, t.logical_date, t.id
        LIMIT :limit
        FOR UPDATE OF t SKIP LOCKED
        """
    ),
    {"pool": "text", "limit": "integer"},
)


def _lock_candidates(conn: Connection, pool_name: str, limit: int) -> list[Candidate]:
    rows = _CANDIDATES.execute(conn, {"pool": pool_name, "limit": limit}).mappings()
    return [
        Candidate(
            ti_id=r["id"],
            dag_id=r["dag_id"],
            run_id=r["run_id"],
            task_id=r["task_id"],
            logical_date=r["logical_date"],
            pool=r["pool"],
            pool_slots=r["pool_slots"],
            priority_weight=r["priority_weight"],
            queue=r["queue"],
            max_active_tis_per_dag=r["max_active_tis_per_dag"],
            dag_max_active_tasks=r["max_active_tasks"],
        )
        for r in rows
    ]


# The section's locks after the candidates', in one statement (none of them waits except the
# last): the pool row (FOR UPDATE SKIP LOCKED), then, only when this replica got it, a
# try-lock per candidate DAG and, with a cluster-wide parallelism, the advisory lock its count
# and update need. A CTE referenced twice runs once, so the pool row is locked once.
_LOCKS = PreparedStatement(
    "tw_queue_locks",
    sa.text(
        """
    WITH p AS (SELECT slots FROM pool WHERE name = :pool FOR UPDATE SKIP LOCKED)
    SELECT
        EXISTS (SELECT 1 FROM pool WHERE name = :pool) AS pool_exists,
        (SELECT slots FROM p) AS slots,
        ARRAY(
            SELECT d FROM unnest(CAST(:dags AS text[])) AS d
            WHERE CASE WHEN EXISTS (SELECT 1 FROM p)
                       THEN pg_try_advisory_xact_lock(:space, hashtext(d)) ELSE false END
        ) AS locked_dags,
        CASE WHEN :parallelism AND EXISTS (SELECT 1 FROM p)
             THEN pg_advisory_xact_lock(:pa, :pb) IS NOT NULL END AS parallelism_locked
    """
    ),
    {
        "pool": "text",
        "dags": "text[]",
        "space": "integer",
        "parallelism": "boolean",
        "pa": "integer",
        "pb": "integer",
    },
)

# What the decision needs, counted after every lock above is held (its own statement, so its
# snapshot includes whatever the previous holder committed): the pool's occupied slots, active
# task instances per candidate DAG and per limited task, and with a parallelism all of them.
_COUNTS = PreparedStatement(
    "tw_queue_counts",
    sa.text(
        """
    SELECT
        (SELECT coalesce(sum(pool_slots), 0) FROM task_instance
         WHERE pool = :pool AND state IN ('queued', 'running')) AS occupied,
        (SELECT coalesce(json_agg(json_build_array(dag_id, n)), '[]') FROM (
            SELECT dag_id, count(*) AS n FROM task_instance
            WHERE dag_id = ANY(CAST(:dags AS text[])) AND state IN ('queued', 'running')
            GROUP BY dag_id) AS d) AS dag_active,
        (SELECT coalesce(json_agg(json_build_array(dag_id, task_id, n)), '[]') FROM (
            SELECT dag_id, task_id, count(*) AS n FROM task_instance
            WHERE (dag_id, task_id) IN (
                SELECT * FROM unnest(CAST(:limited_dags AS text[]), CAST(:limited_tasks AS text[])))
              AND state IN ('queued', 'running')
            GROUP BY dag_id, task_id) AS t) AS task_active,
        CASE WHEN :parallelism THEN (SELECT count(*) FROM task_instance
                                     WHERE state IN ('queued', 'running')) END AS active
    """
    ),
    {
        "pool": "text",
        "dags": "text[]",
        "limited_dags": "text[]",
        "limited_tasks": "text[]",
        "parallelism": "boolean",
    },
)


@dataclass(frozen=True, slots=True)
class _Locks:
    exists: bool
    total: int | None  # None: another replica holds the pool
    dags: frozenset[str]  # candidate DAGs this replica may admit for


def _lock(
    conn: Connection, pool_name: str, dag_ids: Sequence[str], parallelism: int | None
) -> _Locks:
    row = _LOCKS.execute(
        conn,
        {
            "pool": pool_name,
            "dags": sorted(set(dag_ids)),
            "space": _DAG_LOCK_SPACE,
            "parallelism": parallelism is not None,
            "pa": _PARALLELISM_LOCK[0],
            "pb": _PARALLELISM_LOCK[1],
        },
    ).one()
    total = None if row.slots is None else int(row.slots)
    return _Locks(exists=bool(row.pool_exists), total=total, dags=frozenset(row.locked_dags))


def _capacity(
    conn: Connection,
    pool_name: str,
    total: int,
    cands: Sequence[Candidate],
    parallelism: int | None,
    queue_open: Mapping[str, int] | None,
) -> Capacity:
    limited = sorted({(c.dag_id, c.task_id) for c in cands if c.max_active_tis_per_dag})
    row = _COUNTS.execute(
        conn,
        {
            "pool": pool_name,
            "dags": sorted({c.dag_id for c in cands}),
            "limited_dags": [d for d, _ in limited],
            "limited_tasks": [t for _, t in limited],
            "parallelism": parallelism is not None,
        },
    ).one()
    parallelism_open = None
    if parallelism is not None:
        parallelism_open = max(0, parallelism - int(row.active))
    return Capacity(
        pools={
            pool_name: PoolCapacity(total=None if total < 0 else total, occupied=int(row.occupied))
        },
        dag_active={d: int(n) for d, n in row.dag_active},
        task_active={(d, t): int(n) for d, t, n in row.task_active},
        parallelism_open=parallelism_open,
        queue_open=queue_open,
    )


_QUEUE = PreparedStatement(
    "tw_queue_move",
    sa.text(
        """
    WITH moved AS (
        UPDATE task_instance SET
            state = 'queued', token = token + 1, queued_by = :member, queued_at = :now,
            worker = NULL, heartbeat_at = NULL, updated_at = :now
        WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'scheduled'
        RETURNING id, token, try_number, dag_id, run_id, task_id, queue, pool, logical_date,
                  scheduled_at, run_pk
    ), attempt AS (
        INSERT INTO task_attempt
            (ti_id, dag_id, run_id, task_id, try_number, token, state, queued_by, queued_at)
        SELECT id, dag_id, run_id, task_id, try_number + 1, token, 'queued', :member, :now
        FROM moved
        RETURNING id, ti_id
    )
    SELECT attempt.id AS attempt_id, moved.*, dag_run.trace_context,
           dag_run.run_type, dag_run.data_interval_start, dag_run.data_interval_end,
           dag_run.conf, sd.spec_hash
    FROM moved
    JOIN attempt ON attempt.ti_id = moved.id
    JOIN dag_run ON dag_run.id = moved.run_pk
    LEFT JOIN serialized_dag AS sd ON sd.dag_id = moved.dag_id
    """
    ).columns(
        logical_date=sa.DateTime(timezone=True),
        scheduled_at=sa.DateTime(timezone=True),
        data_interval_start=sa.DateTime(timezone=True),
        data_interval_end=sa.DateTime(timezone=True),
    ),
    {"member": "text", "now": "timestamptz", "ids": "bigint[]"},
)


def queued_from_row(r: Mapping[Any, Any], now: datetime, prefix: str = "") -> QueuedAttempt:
    """The QueuedAttempt a statement that queued it returned: the task instance's columns
    (`id`, `token`, ... as the task instance had them before the try), `attempt_id`, the run's
    `trace_context`, `run_type`, data interval and `conf`, and the DAG's `spec_hash`, each name
    with `prefix` (a statement returning other rows too names them apart)."""

    def col(name: str) -> Any:
        return r[prefix + name]

    return QueuedAttempt(
        attempt_id=col("attempt_id"),
        ti_id=col("id"),
        token=col("token"),
        try_number=col("try_number") + 1,
        dag_id=col("dag_id"),
        run_id=col("run_id"),
        task_id=col("task_id"),
        queue=col("queue"),
        pool=col("pool"),
        logical_date=col("logical_date"),
        queued_at=now,
        scheduled_at=col("scheduled_at"),
        first_try=col("try_number") == 0,
        run_trace_context=col("trace_context"),
        run=RunFacts(
            run_type=col("run_type"),
            data_interval_start=col("data_interval_start"),
            data_interval_end=col("data_interval_end"),
            conf=col("conf") or {},
            spec_hash=col("spec_hash"),
        ),
    )


def _queue(
    conn: Connection, admitted: Sequence[Candidate], member_id: str, now: datetime
) -> tuple[QueuedAttempt, ...]:
    """scheduled → queued under a new token, with the attempt row, in one prebuilt statement."""
    if not admitted:
        return ()
    rows = _QUEUE.execute(
        conn, {"ids": [c.ti_id for c in admitted], "member": member_id, "now": now}
    ).mappings()
    order = {c.ti_id: i for i, c in enumerate(admitted)}
    queued = [queued_from_row(r, now) for r in rows]
    return tuple(sorted(queued, key=lambda q: order[q.ti_id]))


def queue_pool(
    conn: Connection,
    pool_name: str,
    *,
    member_id: str,
    decide: Decide,
    now: datetime,
    max_tis: int = 512,
    parallelism: int | None = None,
    queue_open: Mapping[str, int] | None = None,
) -> PoolOutcome | None:
    """Run the critical section for one pool (see the module docstring for the locks).
    Returns None when another replica holds the pool; the caller moves on to other pools.

    With few free worker slots only the first few candidates (by priority) are locked and
    weighed; if those cannot fill the free slots (a DAG or task limit holds them back) the
    section looks again at up to max_tis, so a limit on one DAG never starves the others."""
    free = None if queue_open is None else sum(queue_open.values())
    first = max_tis if free is None else min(max_tis, max(2 * free, _FIRST_LOOK))
    outcome = _queue_pool(
        conn, pool_name, member_id=member_id, decide=decide, now=now, limit=first,
        parallelism=parallelism, queue_open=queue_open,
    )  # fmt: skip
    if (
        outcome is None
        or outcome.admission is None
        or first >= max_tis
        or outcome.looked < first
        or free is None
        or len(outcome.queued) >= free
    ):
        return outcome
    more = _queue_pool(
        conn, pool_name, member_id=member_id, decide=decide, now=now, limit=max_tis,
        parallelism=parallelism, queue_open=_less(queue_open, outcome.queued),
    )  # fmt: skip
    if more is None or more.admission is None:
        return outcome
    return replace(more, queued=outcome.queued + more.queued)


def _less(
    queue_open: Mapping[str, int] | None, queued: Sequence[QueuedAttempt]
) -> Mapping[str, int] | None:
    """Free slots per queue once `queued` take theirs."""
    if queue_open is None:
        return None
    left = dict(queue_open)
    for a in queued:
        if a.queue in left:
            left[a.queue] = max(0, left[a.queue] - 1)
    return left


def _queue_pool(
    conn: Connection,
    pool_name: str,
    *,
    member_id: str,
    decide: Decide,
    now: datetime,
    limit: int,
    parallelism: int | None,
    queue_open: Mapping[str, int] | None,
) -> PoolOutcome | None:
    cands = _lock_candidates(conn, pool_name, limit)
    if not cands:
        return PoolOutcome(pool=pool_name, queued=(), admission=None, skipped_dags=frozenset())
    locks = _lock(conn, pool_name, [c.dag_id for c in cands], parallelism)
    exists, total = locks.exists, locks.total
    if exists and total is None:
        return None
    looked = len(cands)
    skipped = frozenset({c.dag_id for c in cands} - locks.dags) if exists else frozenset()
    cands = [c for c in cands if c.dag_id in locks.dags] if exists else cands
    if not exists:
        admission = decide(cands, Capacity(pools={}))  # every candidate: pool does not exist
        return PoolOutcome(
            pool=pool_name, queued=(), admission=admission, skipped_dags=skipped, looked=looked
        )
    assert total is not None
    capacity = _capacity(conn, pool_name, total, cands, parallelism, queue_open)
    admission = decide(cands, capacity)
    queued = _queue(conn, admission.admitted, member_id, now)
    return PoolOutcome(
        pool=pool_name, queued=queued, admission=admission, skipped_dags=skipped, looked=looked
    )


def pool_slots(conn: Connection, *, limit: int = 1000) -> list[PoolSlots]:
    """Every pool (up to limit, by name) with the slots its task instances take or want."""
    names = dict(
        conn.execute(sa.select(pool.c.name, pool.c.slots).order_by(pool.c.name).limit(limit)).all()
    )
    if not names:
        return []
    used: dict[tuple[str, str], int] = {
        (name, state): int(slots or 0)
        for name, state, slots in conn.execute(
            sa.select(ti.c.pool, ti.c.state, sa.func.sum(ti.c.pool_slots))
            .where(ti.c.pool.in_(list(names)), ti.c.state.in_(("scheduled", *_ACTIVE)))
            .group_by(ti.c.pool, ti.c.state)
        )
    }
    return [
        PoolSlots(
            pool=name,
            total=int(total),
            queued=used.get((name, "queued"), 0),
            running=used.get((name, "running"), 0),
            scheduled=used.get((name, "scheduled"), 0),
        )
        for name, total in names.items()
    ]
