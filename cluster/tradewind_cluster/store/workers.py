"""Worker agents as the store knows them: registration, heartbeats judged on the database clock,
free slots counted from the attempts assigned to each worker, suspect and lost marking, and the
scope an attempt reported by a worker may act in (its task instance, under which token)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from tradewind_cluster.store.attempts import requeue_attempt
from tradewind_cluster.store.notify import WORKERS, notify
from tradewind_cluster.store.prepared import PreparedStatement
from tradewind_cluster.store.schema import task_attempt, task_instance, worker

__all__ = [
    "AttemptScope",
    "Board",
    "WorkerRow",
    "WorkerState",
    "attempt_scope",
    "heartbeat_worker",
    "list_workers",
    "live_workers",
    "mark_lost_workers",
    "mark_suspect",
    "read_board",
    "register_worker",
    "requeue_lost_dispatches",
    "undispatched",
]

w = worker
ti = task_instance
_ACTIVE = ("queued", "running")


class WorkerState(StrEnum):
    """A worker's standing; only `alive` workers are sent attempts."""

    ALIVE = "alive"
    """Registered or heartbeating (set by the worker's RegisterWorker / Heartbeat calls)."""
    SUSPECT = "suspect"
    """A scheduler's dispatches to it keep failing; its next heartbeat makes it alive again."""
    LOST = "lost"
    """No heartbeat for longer than its lease plus margin (housekeeping); it must register."""
    DRAINING = "draining"
    """The worker said it is shutting down: it finishes its attempts and takes no new ones."""
    STOPPED = "stopped"
    """Left the cluster cleanly; it must register again to come back."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRow:
    """A worker as the dispatcher sees it; `assigned` holds the (ti_id, token) of the active
    attempts the store has handed to it (filled by `live_workers` only)."""

    id: str
    name: str
    hostname: str
    grpc_address: str
    queues: tuple[str, ...]
    slots: int
    running: int  # as the worker last reported it
    state: WorkerState
    version: str | None
    registered_via: str | None
    registered_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    assigned: frozenset[tuple[int, int]] = frozenset()

    @property
    def free_slots(self) -> int:
        """Slots not taken by an attempt the store assigned to this worker."""
        return max(0, self.slots - len(self.assigned))


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptScope:
    """What a report about attempt (ti_id, token) may touch, and whether the token is current."""

    ti_id: int
    token: int
    current_token: int
    dag_id: str
    run_id: str
    task_id: str
    ti_state: str
    worker: str | None
    attempt_try: int | None  # try number of the attempt with this token (None: no such attempt)
    attempt_state: str | None

    @property
    def is_current(self) -> bool:
        """True when the reported token is the task instance's current one."""
        return self.token == self.current_token

    def stale_reason(self) -> str:
        """The refusal for a superseded token (same wording as the attempt reports)."""
        return f"stale token {self.token}: the current attempt has token {self.current_token}"


_AGE = sa.func.extract("epoch", sa.func.clock_timestamp() - w.c.heartbeat_at).label(
    "heartbeat_age_s"
)


def _fresh(max_age_s: float | sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    cutoff = sa.func.clock_timestamp() - sa.func.make_interval(0, 0, 0, 0, 0, 0, max_age_s)
    return w.c.heartbeat_at > cutoff


def _row(r: Mapping[Any, Any], assigned: frozenset[tuple[int, int]] = frozenset()) -> WorkerRow:
    return WorkerRow(
        id=r["id"],
        name=r["name"],
        hostname=r["hostname"],
        grpc_address=r["grpc_address"],
        queues=tuple(r["queues"] or ()),
        slots=r["slots"],
        running=r["running"],
        state=WorkerState(r["state"]),
        version=r["version"],
        registered_via=r["registered_via"],
        registered_at=r["registered_at"],
        heartbeat_at=r["heartbeat_at"],
        heartbeat_age_s=float(r["heartbeat_age_s"]),
        assigned=assigned,
    )


def register_worker(
    conn: Connection,
    *,
    worker_id: str,
    name: str,
    hostname: str,
    grpc_address: str,
    queues: Sequence[str],
    slots: int,
    version: str | None,
    registered_via: str | None,
    running: int = 0,
) -> None:
    """Insert or refresh a worker's row (a restarted worker keeps its id); it is alive again.
    Every replica hears of it (NOTIFY) on commit: its tasks waiting for a slot need not wait
    for an idle sleep or an expired view of free slots."""
    values = {
        "name": name,
        "hostname": hostname,
        "grpc_address": grpc_address,
        "queues": list(dict.fromkeys(queues)),
        "slots": slots,
        "running": running,
        "state": WorkerState.ALIVE.value,
        "version": version,
        "registered_via": registered_via,
        "registered_at": sa.func.clock_timestamp(),
        "heartbeat_at": sa.func.clock_timestamp(),
    }
    conn.execute(
        pg_insert(w)
        .values(id=worker_id, **values)
        .on_conflict_do_update(index_elements=[w.c.id], set_=values)
    )
    notify(conn, WORKERS)


def heartbeat_worker(conn: Connection, worker_id: str, *, running: int, draining: bool) -> bool:
    """Advance a known worker's heartbeat (a suspect one becomes alive again). False when the
    worker is unknown, lost or stopped: it must register again."""
    state = WorkerState.DRAINING if draining else WorkerState.ALIVE
    row = conn.execute(
        sa.update(w)
        .where(
            w.c.id == worker_id,
            w.c.state.in_([WorkerState.ALIVE, WorkerState.SUSPECT, WorkerState.DRAINING]),
        )
        .values(heartbeat_at=sa.func.clock_timestamp(), running=running, state=state.value)
        .returning(w.c.id)
    ).first()
    return row is not None


def mark_suspect(conn: Connection, worker_id: str) -> bool:
    """alive → suspect (dispatches keep failing); False if it was not alive."""
    result = conn.execute(
        sa.update(w)
        .where(w.c.id == worker_id, w.c.state == WorkerState.ALIVE.value)
        .values(state=WorkerState.SUSPECT.value)
    )
    return result.rowcount == 1


def mark_lost_workers(conn: Connection, *, max_age_s: float, limit: int = 100) -> list[str]:
    """Workers whose heartbeat is older than max_age_s (lease + margin) become lost; returns
    their ids. Lock: SKIP LOCKED on worker, so replicas sweeping at once split the rows."""
    stale = (
        sa.select(w.c.id)
        .where(
            w.c.state.in_([WorkerState.ALIVE, WorkerState.SUSPECT, WorkerState.DRAINING]),
            ~_fresh(max_age_s),
        )
        .order_by(w.c.heartbeat_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = conn.execute(
        sa.update(w).where(w.c.id.in_(stale)).values(state=WorkerState.LOST.value).returning(w.c.id)
    )
    return sorted(r[0] for r in rows)


def list_workers(
    conn: Connection, *, states: Sequence[WorkerState] | None = None, limit: int = 1000
) -> list[WorkerRow]:
    """Workers (all, or in the given states), most recent heartbeat first."""
    q = sa.select(w, _AGE).order_by(w.c.heartbeat_at.desc(), w.c.id).limit(limit)
    if states is not None:
        q = q.where(w.c.state.in_([s.value for s in states]))
    return [_row(r) for r in conn.execute(q).mappings()]


# Built once, with bound parameters: housekeeping reads live workers every pass (the
# dispatcher reads the same and more through _BOARD below, prepared).
_MAX_AGE = sa.bindparam("max_age_s", type_=sa.Float)
_LIMIT = sa.bindparam("limit", type_=sa.Integer)
_REFS: sa.BindParameter[Any] = sa.bindparam("refs", expanding=True)
_LIVE = (
    sa.select(
        w,
        _AGE,
        sa.func.array_remove(sa.func.array_agg(ti.c.id), None).label("assigned_ids"),
        sa.func.array_remove(sa.func.array_agg(ti.c.token), None).label("assigned_tokens"),
    )
    .select_from(w.outerjoin(ti, sa.and_(ti.c.worker == w.c.id, ti.c.state.in_(_ACTIVE))))
    .where(w.c.state == WorkerState.ALIVE.value, _fresh(_MAX_AGE))
    .group_by(w.c.id)
    .order_by(w.c.id)
    .limit(_LIMIT)
)


def _live_row(r: Mapping[Any, Any]) -> WorkerRow:
    return _row(r, frozenset(zip(r["assigned_ids"], r["assigned_tokens"], strict=True)))


def live_workers(conn: Connection, *, max_age_s: float, limit: int = 1000) -> list[WorkerRow]:
    """Alive workers that heartbeated within max_age_s, each with the active attempts
    assigned to it (queued after dispatch, or running); one statement."""
    rows = conn.execute(_LIVE, {"max_age_s": max_age_s, "limit": limit}).mappings()
    return [_live_row(r) for r in rows]


_UNDISPATCHED = sa.and_(
    sa.tuple_(ti.c.id, ti.c.token).in_(_REFS),
    ti.c.state == "queued",
    ti.c.worker.is_(None),
)


def undispatched(conn: Connection, refs: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
    """The attempts among refs still queued under that token with no worker recorded yet."""
    if not refs:
        return set()
    rows = conn.execute(
        sa.select(ti.c.id, ti.c.token).where(_UNDISPATCHED), {"refs": list(refs)}
    ).all()
    return {(r[0], r[1]) for r in rows}


@dataclass(frozen=True, slots=True, kw_only=True)
class Board:
    """What a dispatcher reads of the store, from one snapshot: live workers with their
    assigned attempts, which of the attempts it asked about are still undispatched, and (when
    asked) how many attempts wait for a worker per queue."""

    workers: list[WorkerRow]
    undispatched: set[tuple[int, int]]
    pending: dict[str, int]


# The board as one prepared statement: the attempts asked about come as two arrays (a fixed
# shape, where an IN list of pairs would be a new statement for every length). Columns are
# listed, not `*`: a prepared statement whose result columns change (a migration adding one
# while older schedulers run) no longer executes.
_MAX_QUEUES = 1000  # per-queue counts the board returns at most
_WORKER_COLUMNS = tuple(c.name for c in worker.c)
_LIVE_COLUMNS = (*_WORKER_COLUMNS, "heartbeat_age_s", "assigned_ids", "assigned_tokens")
_BOARD = PreparedStatement(
    "tw_dispatch_board",
    sa.text(
        f"""
        WITH live AS (
            SELECT {", ".join(f"w.{c}" for c in _WORKER_COLUMNS)},
                   extract(epoch FROM clock_timestamp() - w.heartbeat_at) AS heartbeat_age_s,
                   array_remove(array_agg(t.id), NULL) AS assigned_ids,
                   array_remove(array_agg(t.token), NULL) AS assigned_tokens
            FROM worker AS w
            LEFT JOIN task_instance AS t
                   ON t.worker = w.id AND t.state IN ('queued', 'running')
            WHERE w.state = 'alive'
              AND w.heartbeat_at > clock_timestamp()
                                   - make_interval(secs => CAST(:max_age_s AS double precision))
            GROUP BY w.id
            ORDER BY w.id
            LIMIT :limit
        )
        SELECT extras.undispatched, extras.pending,
               {", ".join(f"live.{c}" for c in _LIVE_COLUMNS)}
        FROM (
            SELECT
                (SELECT json_agg(json_build_array(t.id, t.token)) FROM task_instance AS t
                 WHERE (t.id, t.token) IN (
                     SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[])))
                   AND t.state = 'queued' AND t.worker IS NULL) AS undispatched,
                CASE WHEN CAST(:with_pending AS boolean) THEN (
                    SELECT json_object_agg(q.queue, q.n) FROM (
                        SELECT queue, count(*) AS n FROM task_instance
                        WHERE state = 'queued' AND worker IS NULL
                        GROUP BY queue LIMIT :queues) AS q
                ) END AS pending
        ) AS extras
        LEFT JOIN live ON true
        ORDER BY live.id
        """
    ),
    {
        "max_age_s": "double precision",
        "limit": "integer",
        "ids": "bigint[]",
        "tokens": "bigint[]",
        "with_pending": "boolean",
        "queues": "integer",
    },
)


def read_board(
    conn: Connection,
    refs: Sequence[tuple[int, int]],
    *,
    max_age_s: float,
    limit: int = 1000,
    with_pending: bool = False,
) -> Board:
    """live_workers, undispatched(refs) and the attempts waiting per queue in one statement: the
    dispatcher reads them after nearly every finished report, and each round trip of a loop
    pass waits for a CPU on a busy host. One row comes back even with no live worker."""
    params = {
        "max_age_s": float(max_age_s),
        "limit": limit,
        "ids": [ti_id for ti_id, _ in refs],
        "tokens": [token for _, token in refs],
        "with_pending": with_pending,
        "queues": _MAX_QUEUES,
    }
    rows = _BOARD.execute(conn, params).mappings()
    first = rows[0]
    return Board(
        workers=[_live_row(r) for r in rows if r["id"] is not None],
        undispatched={(int(i), int(t)) for i, t in first["undispatched"] or ()},
        pending={str(q): int(n) for q, n in (first["pending"] or {}).items()},
    )


def requeue_lost_dispatches(
    conn: Connection, worker_ids: Sequence[str], *, now: datetime, limit: int = 500
) -> list[tuple[int, int]]:
    """Attempts dispatched to lost workers but never started go back to scheduled (a new token
    comes with the next queueing). Lock: SKIP LOCKED on task_instance."""
    if not worker_ids:
        return []
    rows = conn.execute(
        sa.select(ti.c.id, ti.c.token, ti.c.worker)
        .where(ti.c.state == "queued", ti.c.worker.in_(list(worker_ids)))
        .order_by(ti.c.id)
        .limit(limit)
        .with_for_update(of=ti, skip_locked=True)
    ).all()
    done: list[tuple[int, int]] = []
    for ti_id, token, worker_id in rows:
        reason = f"worker {worker_id} was lost before the attempt started"
        if requeue_attempt(conn, ti_id, token, reason=reason, now=now):
            done.append((ti_id, token))
    return done


def attempt_scope(conn: Connection, ti_id: int, token: int) -> AttemptScope | None:
    """The task instance behind a reported attempt and the attempt row of that token, or None
    when no such task instance exists."""
    a = task_attempt
    row = conn.execute(
        sa.select(
            ti.c.token,
            ti.c.dag_id,
            ti.c.run_id,
            ti.c.task_id,
            ti.c.state,
            ti.c.worker,
            a.c.try_number,
            a.c.state.label("attempt_state"),
        )
        .select_from(ti.outerjoin(a, sa.and_(a.c.ti_id == ti.c.id, a.c.token == token)))
        .where(ti.c.id == ti_id)
        .limit(1)
    ).first()
    if row is None:
        return None
    return AttemptScope(
        ti_id=ti_id,
        token=token,
        current_token=row.token,
        dag_id=row.dag_id,
        run_id=row.run_id,
        task_id=row.task_id,
        ti_state=row.state,
        worker=row.worker,
        attempt_try=row.try_number,
        attempt_state=row.attempt_state,
    )
