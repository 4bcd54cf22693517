"""Attempts and the reports workers send about them, applied only under the current token.

Each update names the task instance's state and fencing token in its WHERE clause: a report
for an attempt that was superseded (requeued, cleared, marked, reaped) matches no row and is
refused with a reason, never applied. Finishing a try re-arms its run for examination."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.retries import AttemptOutcome, OutcomeDecision
from tradewind.states import TaskInstanceState
from tradewind_cluster.store.schema import dag_run, task_attempt, task_instance

__all__ = [
    "AttemptStart",
    "Dispatched",
    "ReportResult",
    "heartbeat_attempts",
    "mark_dispatched",
    "mark_dispatched_many",
    "record_finish",
    "record_start",
    "requeue_attempt",
    "update_attempt",
]

ti = task_instance
_TI = TaskInstanceState


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportResult:
    """Whether a report was applied, and why not when it was refused."""

    accepted: bool
    reason: str = ""
    state: TaskInstanceState | None = None
    run_pk: int | None = None
    attempt: AttemptStart | None = None  # the try it applied to (for the task metrics)
    run_id: str | None = None
    started: bool = False  # this report also started the try (its STARTED was never sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStart:
    """What the store knows of a try when it starts: enough to decide its outcome later."""

    dag_id: str
    task_id: str
    try_number: int
    max_tries: int
    operator: str | None = None
    queue: str | None = None
    queued_at: datetime | None = None
    start_date: datetime | None = None  # when this try started running


def update_attempt(conn: Connection, ti_id: int, token: int, **values: object) -> None:
    """Update the attempt row of (ti_id, token): its history, never a fencing decision."""
    conn.execute(
        sa.update(task_attempt)
        .where(task_attempt.c.ti_id == ti_id, task_attempt.c.token == token)
        .values(**values)
    )


def _refusal(conn: Connection, ti_id: int, token: int) -> ReportResult:
    row = conn.execute(sa.select(ti.c.state, ti.c.token).where(ti.c.id == ti_id)).first()
    if row is None:
        return ReportResult(accepted=False, reason=f"unknown task instance {ti_id}")
    return _refused(row.state, row.token, token)


def _refused(state: str, current: int, token: int) -> ReportResult:
    if current != token:
        return ReportResult(
            accepted=False, reason=f"stale token {token}: the current attempt has token {current}"
        )
    return ReportResult(accepted=False, reason=f"task instance is {state}", state=_TI(state))


def mark_dispatched(
    conn: Connection,
    ti_id: int,
    token: int,
    *,
    worker_id: str,
    now: datetime,
    trace_context: str | None = None,
) -> bool:
    """Record which worker accepted the attempt (still queued, same token), and the traceparent
    of the dispatch span the worker's spans descend from."""
    result = conn.execute(
        sa.update(ti)
        .where(ti.c.id == ti_id, ti.c.token == token, ti.c.state == "queued")
        .values(worker=worker_id)
    )
    update_attempt(
        conn, ti_id, token, worker=worker_id, dispatched_at=now, trace_context=trace_context
    )
    return result.rowcount == 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatched:
    """One attempt a worker accepted."""

    ti_id: int
    token: int
    worker_id: str
    trace_context: str | None = None


_ACCEPTED = (
    "unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[]), CAST(:workers AS text[]),"
    " CAST(:traces AS text[])) AS a(ti_id, token, worker, trace)"
)
_MARK_TI_DISPATCHED = sa.text(
    f"""
    UPDATE task_instance SET worker = a.worker FROM {_ACCEPTED}
    WHERE task_instance.id = a.ti_id AND task_instance.token = a.token
      AND task_instance.state = 'queued'
    """
)
_MARK_ATTEMPTS_DISPATCHED = sa.text(
    f"""
    UPDATE task_attempt SET worker = a.worker, dispatched_at = :now, trace_context = a.trace
    FROM {_ACCEPTED}
    WHERE task_attempt.ti_id = a.ti_id AND task_attempt.token = a.token
    """
)


def mark_dispatched_many(conn: Connection, accepted: Sequence[Dispatched], *, now: datetime) -> int:
    """mark_dispatched for many attempts in two set-based, prebuilt statements (the hot path:
    one pair per dispatch batch, not one per attempt; task instance before attempt, as every
    transaction locks them). Returns how many were still queued under the token."""
    if not accepted:
        return 0
    params = {
        "ids": [a.ti_id for a in accepted],
        "tokens": [a.token for a in accepted],
        "workers": [a.worker_id for a in accepted],
        "traces": [a.trace_context for a in accepted],
        "now": now,
    }
    moved = conn.execute(_MARK_TI_DISPATCHED, params).rowcount
    conn.execute(_MARK_ATTEMPTS_DISPATCHED, params)
    return int(moved)


def requeue_attempt(
    conn: Connection, ti_id: int, token: int, *, reason: str, now: datetime
) -> bool:
    """Send a queued attempt back to scheduled (dispatch failed, orphaned, queued too long);
    the critical section will queue it again under a new token."""
    result = conn.execute(
        sa.update(ti)
        .where(ti.c.id == ti_id, ti.c.token == token, ti.c.state == "queued")
        .values(state="scheduled", worker=None, queued_by=None, reason=reason, updated_at=now)
    )
    update_attempt(conn, ti_id, token, state="requeued", end_date=now, error=reason)
    return result.rowcount == 1


def record_start(
    conn: Connection, ti_id: int, token: int, *, worker_id: str, now: datetime
) -> tuple[ReportResult, AttemptStart | None]:
    """queued → running under the token; the try number counts tries that started."""
    row = conn.execute(
        sa.update(ti)
        .where(ti.c.id == ti_id, ti.c.token == token, ti.c.state == "queued")
        .values(
            state="running",
            try_number=ti.c.try_number + 1,
            worker=worker_id,
            start_date=now,
            end_date=None,
            heartbeat_at=now,
            updated_at=now,
        )
        .returning(
            ti.c.run_pk,
            ti.c.dag_id,
            ti.c.task_id,
            ti.c.try_number,
            ti.c.max_tries,
            ti.c.operator,
            ti.c.queue,
            ti.c.queued_at,
        )
    ).first()
    if row is None:
        return _refusal(conn, ti_id, token), None
    update_attempt(conn, ti_id, token, state="running", start_date=now, worker=worker_id)
    start = AttemptStart(
        dag_id=row.dag_id,
        task_id=row.task_id,
        try_number=row.try_number,
        max_tries=row.max_tries,
        operator=row.operator,
        queue=row.queue,
        queued_at=row.queued_at,
        start_date=now,
    )
    result = ReportResult(accepted=True, state=_TI.RUNNING, run_pk=row.run_pk, attempt=start)
    return result, start


def record_finish(
    conn: Connection,
    ti_id: int,
    token: int,
    *,
    outcome: AttemptOutcome,
    decide: Callable[[AttemptStart], OutcomeDecision],
    now: datetime,
    exit_code: int | None = None,
    error: str | None = None,
    followed: Sequence[str] | None = None,
    started_at: datetime | None = None,
    worker_id: str | None = None,
) -> ReportResult:
    """running → success / skipped / up_for_retry / failed under the token, as `decide` says
    (the caller passes the core's decide_outcome bound to the task's spec). With `started_at`
    the report covers a short try whose STARTED was never sent: queued → outcome directly, the
    try counted and its start recorded as record_start would have.

    Lock order dag_run → task_instance, as the examiner's: the run row is locked first (waiting
    for an examination of that run in progress), then the task instance is changed by a
    compare-and-set on (token, state). Three round trips: lock and read, update, history."""
    cur = conn.execute(
        sa.select(
            ti.c.run_pk,
            ti.c.run_id,
            ti.c.token,
            ti.c.state,
            ti.c.dag_id,
            ti.c.task_id,
            ti.c.try_number,
            ti.c.max_tries,
            ti.c.operator,
            ti.c.queue,
            ti.c.queued_at,
            ti.c.start_date,
        )
        .select_from(ti.join(dag_run, dag_run.c.id == ti.c.run_pk))
        .where(ti.c.id == ti_id)
        .with_for_update(of=dag_run)
    ).first()
    if cur is None:
        return ReportResult(accepted=False, reason=f"unknown task instance {ti_id}")
    starts = started_at is not None and cur.state == "queued"
    if cur.token != token or (cur.state != "running" and not starts):
        return _refused(cur.state, cur.token, token)
    start = AttemptStart(
        dag_id=cur.dag_id,
        task_id=cur.task_id,
        try_number=cur.try_number + 1 if starts else cur.try_number,
        max_tries=cur.max_tries,
        operator=cur.operator,
        queue=cur.queue,
        queued_at=cur.queued_at,
        start_date=started_at if starts else cur.start_date,
    )
    decision = decide(start)
    values: dict[str, object] = {
        "state": decision.to_state.value,
        "end_date": now,
        "next_retry_at": decision.next_retry_at,
        "followed": list(followed) if followed is not None else None,
        "reason": decision.reason,
        "updated_at": now,
    }
    history: dict[str, object] = {
        "state": outcome.value,
        "end_date": now,
        "exit_code": exit_code,
        "error": error,
    }
    if starts:
        values.update(
            try_number=start.try_number,
            worker=worker_id,
            start_date=started_at,
            heartbeat_at=now,
        )
        history.update(start_date=started_at, worker=worker_id)
    # The run is locked, the task instance is not: the compare-and-set below is the fence.
    # One statement: the task instance, then (only if it changed) the attempt's history and
    # the run's next examination.
    changed = (
        sa.update(ti)
        .where(ti.c.id == ti_id, ti.c.token == token, ti.c.state == cur.state)
        .values(**values)
        .returning(ti.c.id)
        .cte("changed")
    )
    kept = (
        sa.update(task_attempt)
        .where(
            task_attempt.c.ti_id == ti_id,
            task_attempt.c.token == token,
            sa.exists(sa.select(changed.c.id)),
        )
        .values(**history)
        .cte("history")
    )
    rearmed = (
        sa.update(dag_run)
        .where(
            dag_run.c.id == cur.run_pk,
            dag_run.c.state == "running",
            sa.exists(sa.select(changed.c.id)),
        )
        .values(examine_after=now)
        .cte("rearmed")
    )
    done = conn.execute(
        sa.select(sa.func.count()).select_from(changed).add_cte(kept).add_cte(rearmed)
    ).scalar_one()
    if done != 1:
        return _refusal(conn, ti_id, token)
    return ReportResult(
        accepted=True,
        state=decision.to_state,
        run_pk=cur.run_pk,
        attempt=start,
        run_id=cur.run_id,
        started=starts,
    )


def heartbeat_attempts(
    conn: Connection, refs: Sequence[tuple[int, int]], *, now: datetime
) -> list[tuple[int, int]]:
    """Refresh the heartbeat of attempts a worker says it runs; returns those no longer wanted
    (token superseded, or the task instance left queued/running): the worker kills them."""
    if not refs:
        return []
    alive = conn.execute(
        sa.update(ti)
        .where(
            sa.tuple_(ti.c.id, ti.c.token).in_(list(refs)), ti.c.state.in_(["queued", "running"])
        )
        .values(heartbeat_at=now)
        .returning(ti.c.id, ti.c.token)
    ).all()
    wanted = {(r[0], r[1]) for r in alive}
    return [r for r in refs if r not in wanted]
