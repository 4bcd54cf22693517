"""Attempts and the reports workers send about them, applied only under the current token.

Each update names the task instance's state and fencing token in its WHERE clause: a report
for an attempt that was superseded (requeued, cleared, marked, reaped) matches no row and is
refused with a reason, never applied. Finishing a try re-arms its run for examination."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.retries import AttemptOutcome, OutcomeDecision
from tradewind.states import TaskInstanceState
from tradewind_cluster.store.prepared import PreparedStatement, ResultRow
from tradewind_cluster.store.queueing import QueuedAttempt
from tradewind_cluster.store.schema import task_attempt, task_instance

__all__ = [
    "ENDED_CTES",
    "ENDED_TYPES",
    "AttemptStart",
    "Dispatched",
    "ReportResult",
    "ended_params",
    "ended_result",
    "heartbeat_attempts",
    "mark_dispatched",
    "mark_dispatched_many",
    "record_ended",
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
    handed: QueuedAttempt | None = None  # the next attempt given to the reporting worker
    # the loop has work from it: its run is due for examination, or eager dispatch scheduled
    # a task instance it did not hand over
    rearmed: bool = True


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
# One statement: it runs in autocommit (no BEGIN / COMMIT round trips) and is atomic on its
# own. The attempt rows are updated only once the task instances are (the scalar subquery on
# `ti` makes PostgreSQL run that CTE to the end first), so the rows are locked task instance
# before attempt, as every transaction locks them. An attempt is marked even when its task
# instance already moved on (a fast task's report came first): the history keeps its worker.
_MARK_DISPATCHED = sa.text(
    f"""
    WITH a AS (SELECT * FROM {_ACCEPTED}),
    ti AS (
        UPDATE task_instance SET worker = a.worker FROM a
        WHERE task_instance.id = a.ti_id AND task_instance.token = a.token
          AND task_instance.state = 'queued'
        RETURNING task_instance.id
    ),
    attempt AS (
        UPDATE task_attempt SET worker = a.worker, dispatched_at = :now, trace_context = a.trace
        FROM a
        WHERE task_attempt.ti_id = a.ti_id AND task_attempt.token = a.token
          AND (SELECT count(*) FROM ti) >= 0
        RETURNING task_attempt.id
    )
    SELECT (SELECT count(*) FROM ti) AS moved, (SELECT count(*) FROM attempt) AS marked
    """
)


def mark_dispatched_many(conn: Connection, accepted: Sequence[Dispatched], *, now: datetime) -> int:
    """mark_dispatched for many attempts in one set-based, prebuilt statement (the hot path: one
    per dispatch batch, not one per attempt; fit for Database.statement). Returns how many
    task instances were still queued under the token."""
    if not accepted:
        return 0
    params = {
        "ids": [a.ti_id for a in accepted],
        "tokens": [a.token for a in accepted],
        "workers": [a.worker_id for a in accepted],
        "traces": [a.trace_context for a in accepted],
        "now": now,
    }
    moved, _ = conn.execute(_MARK_DISPATCHED, params).one()
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


def _ending_try(row: ResultRow, *, starts: bool, started_at: datetime | None) -> AttemptStart:
    """The try a finish report ends, from the task instance row read before the change; a
    report that also starts it counts it and takes the worker's start time."""
    return AttemptStart(
        dag_id=row.dag_id,
        task_id=row.task_id,
        try_number=row.try_number + 1 if starts else row.try_number,
        max_tries=row.max_tries,
        operator=row.operator,
        queue=row.queue,
        queued_at=row.queued_at,
        start_date=started_at if starts else row.start_date,
    )


# record_finish, prebuilt (every report runs them). Lock order dag_run → task_instance.
_FINISH_READ = sa.text(
    """
    SELECT ti.run_pk, ti.run_id, ti.token, ti.state, ti.dag_id, ti.task_id, ti.try_number,
           ti.max_tries, ti.operator, ti.queue, ti.queued_at, ti.start_date
    FROM task_instance ti JOIN dag_run ON dag_run.id = ti.run_pk
    WHERE ti.id = :ti_id
    FOR UPDATE OF dag_run
    """
)
# The task instance under (token, state); then, only if it changed, the attempt's history and
# the run's next examination. `starts`: the report also starts the try (queued → outcome).
_FINISH = sa.text(
    """
    WITH changed AS (
        UPDATE task_instance SET
            state = :state, end_date = :now, next_retry_at = CAST(:next_retry_at AS timestamptz),
            followed = CAST(:followed AS jsonb), reason = :reason, updated_at = :now,
            try_number = CASE WHEN :starts THEN CAST(:try_number AS integer) ELSE try_number END,
            worker = CASE WHEN :starts THEN CAST(:worker AS text) ELSE worker END,
            start_date = CASE WHEN :starts THEN CAST(:started_at AS timestamptz)
                              ELSE start_date END,
            heartbeat_at = CASE WHEN :starts THEN :now ELSE heartbeat_at END
        WHERE id = :ti_id AND token = :token AND state = :expect
        RETURNING id
    ), history AS (
        UPDATE task_attempt SET
            state = :outcome, end_date = :now, exit_code = CAST(:exit_code AS integer),
            error = CAST(:error AS text),
            start_date = CASE WHEN :starts THEN CAST(:started_at AS timestamptz)
                              ELSE start_date END,
            worker = CASE WHEN :starts THEN CAST(:worker AS text) ELSE worker END
        WHERE ti_id = :ti_id AND token = :token AND EXISTS (SELECT 1 FROM changed)
    ), rearmed AS (
        UPDATE dag_run SET examine_after = :now
        WHERE id = :run_pk AND state = 'running' AND EXISTS (SELECT 1 FROM changed)
    )
    SELECT count(*) FROM changed
    """
)


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
    compare-and-set on (token, state). Two round trips: lock and read, then one statement."""
    cur = conn.execute(_FINISH_READ, {"ti_id": ti_id}).first()
    if cur is None:
        return ReportResult(accepted=False, reason=f"unknown task instance {ti_id}")
    starts = started_at is not None and cur.state == "queued"
    if cur.token != token or (cur.state != "running" and not starts):
        return _refused(cur.state, cur.token, token)
    start = _ending_try(cur, starts=starts, started_at=started_at)
    decision = decide(start)
    # The run is locked, the task instance is not: the compare-and-set in _FINISH is the fence.
    done = conn.execute(
        _FINISH,
        {
            "ti_id": ti_id,
            "token": token,
            "expect": cur.state,
            "run_pk": cur.run_pk,
            "now": now,
            "state": decision.to_state.value,
            "next_retry_at": decision.next_retry_at,
            "followed": None if followed is None else json.dumps(list(followed)),
            "reason": decision.reason,
            "outcome": outcome.value,
            "exit_code": exit_code,
            "error": error,
            "starts": starts,
            "try_number": start.try_number,
            "worker": worker_id,
            "started_at": started_at,
        },
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


# record_ended in one statement: lock the run and the task instance (dag_run → task_instance:
# PostgreSQL locks a joined row's relations in the order of the FOR ... OF list; NO KEY UPDATE
# still excludes the examiner's FOR UPDATE but not the KEY SHARE of foreign-key checks),
# compare-and-set on (token, state), the attempt's history, the run's next examination and the
# XComs the try returned. A single statement is atomic on its own: no BEGIN / COMMIT needed.
# The report's parts every variant shares (the eager one adds its own, store/eager.py):
ENDED_CTES = """
    WITH cur AS (
        SELECT ti.id, ti.run_pk, ti.run_id, ti.token, ti.state, ti.dag_id, ti.task_id,
               ti.try_number, ti.max_tries, ti.operator, ti.queue, ti.queued_at, ti.start_date,
               ti.pool, ti.pool_slots, dag_run.state AS run_state
        FROM dag_run JOIN task_instance ti ON ti.run_pk = dag_run.id
        WHERE ti.id = :ti_id
        FOR NO KEY UPDATE OF dag_run, ti
    ), go AS (
        SELECT cur.*, cur.state = 'queued' AS starts FROM cur
        WHERE cur.token = :token
          AND (cur.state = 'running' OR (cur.state = 'queued' AND :can_start))
    ), changed AS (
        UPDATE task_instance t SET
            state = :state, end_date = :now, next_retry_at = NULL,
            followed = CAST(:followed AS jsonb), reason = :reason, updated_at = :now,
            try_number = CASE WHEN go.starts THEN go.try_number + 1 ELSE t.try_number END,
            worker = CASE WHEN go.starts THEN CAST(:worker AS text) ELSE t.worker END,
            start_date = CASE WHEN go.starts THEN CAST(:started_at AS timestamptz)
                              ELSE t.start_date END,
            heartbeat_at = CASE WHEN go.starts THEN :now ELSE t.heartbeat_at END
        FROM go WHERE t.id = go.id
        RETURNING t.id
    ), history AS (
        UPDATE task_attempt SET
            state = :outcome, end_date = :now, exit_code = CAST(:exit_code AS integer),
            error = CAST(:error AS text),
            start_date = CASE WHEN go.starts THEN CAST(:started_at AS timestamptz)
                              ELSE task_attempt.start_date END,
            worker = CASE WHEN go.starts THEN CAST(:worker AS text) ELSE task_attempt.worker END
        FROM go WHERE task_attempt.ti_id = go.id AND task_attempt.token = go.token
    ), gone AS (
        DELETE FROM xcom USING go
        WHERE :xcoms AND go.starts AND xcom.dag_id = go.dag_id AND xcom.run_id = go.run_id
          AND xcom.task_id = go.task_id AND xcom.key <> ALL(CAST(:keys AS text[]))
    ), kept AS (
        INSERT INTO xcom (dag_id, run_id, task_id, key, value, created_at)
        SELECT go.dag_id, go.run_id, go.task_id, v.key, v.value, clock_timestamp()
        FROM go, unnest(CAST(:keys AS text[]), CAST(:values AS text[])) AS v(key, value)
        ON CONFLICT (dag_id, run_id, task_id, key)
        DO UPDATE SET value = excluded.value, created_at = excluded.created_at
    )"""
ENDED_TYPES = {
    "ti_id": "bigint",
    "token": "bigint",
    "can_start": "boolean",
    "now": "timestamptz",
    "state": "text",
    "reason": "text",
    "followed": "text",
    "outcome": "text",
    "exit_code": "integer",
    "error": "text",
    "worker": "text",
    "started_at": "timestamptz",
    "xcoms": "boolean",
    "keys": "text[]",
    "values": "text[]",
}
_ENDED = PreparedStatement(
    "tw_report_ended",
    sa.text(
        ENDED_CTES
        + """, rearmed AS (
        UPDATE dag_run SET examine_after = :now
        FROM go WHERE dag_run.id = go.run_pk AND dag_run.state = 'running'
    )
    SELECT cur.*, go.starts, (SELECT count(*) FROM changed) AS changed
    FROM cur LEFT JOIN go ON true
    """
    ),
    ENDED_TYPES,
)


def ended_params(
    ti_id: int,
    token: int,
    *,
    outcome: AttemptOutcome,
    decision: OutcomeDecision,
    now: datetime,
    exit_code: int | None,
    error: str | None,
    followed: Sequence[str] | None,
    started_at: datetime | None,
    worker_id: str | None,
    returned: Sequence[tuple[str, str]] | None,
) -> dict[str, object]:
    """The parameters of ENDED_CTES for a report (record_ended's arguments)."""
    if decision.next_retry_at is not None:
        raise ValueError("record_ended takes decisions without a retry; use record_finish")
    state = decision.to_state
    kept = dict(returned or ()) if state is _TI.SUCCESS else {}
    return {
        "ti_id": ti_id,
        "token": token,
        "can_start": started_at is not None,
        "now": now,
        "state": state.value,
        "reason": decision.reason,
        "followed": None if followed is None else json.dumps(list(followed)),
        "outcome": outcome.value,
        "exit_code": exit_code,
        "error": error,
        "worker": worker_id,
        "started_at": started_at,
        "xcoms": returned is not None,
        "keys": list(kept),
        "values": list(kept.values()),
    }


def ended_result(
    row: ResultRow | None, ti_id: int, token: int, state: TaskInstanceState,
    started_at: datetime | None,
) -> ReportResult:  # fmt: skip
    """The ReportResult of an ENDED_CTES statement's row."""
    if row is None:
        return ReportResult(accepted=False, reason=f"unknown task instance {ti_id}")
    if not row.changed:
        return _refused(row.state, row.token, token)
    return ReportResult(
        accepted=True,
        state=state,
        run_pk=row.run_pk,
        attempt=_ending_try(row, starts=bool(row.starts), started_at=started_at),
        run_id=row.run_id,
        started=bool(row.starts),
    )


def record_ended(
    conn: Connection,
    ti_id: int,
    token: int,
    *,
    outcome: AttemptOutcome,
    decision: OutcomeDecision,
    now: datetime,
    exit_code: int | None = None,
    error: str | None = None,
    followed: Sequence[str] | None = None,
    started_at: datetime | None = None,
    worker_id: str | None = None,
    returned: Sequence[tuple[str, str]] | None = None,
) -> ReportResult:
    """record_finish for a try whose `decision` does not depend on the try (success, skipped:
    no retry policy to read, so nothing to decide between reading and writing), as one
    statement (see _ENDED): the hot path of every report.
    `returned`: the XComs a success returned, kept in the same statement (a try this report
    also starts first loses its older ones, as STARTED would clear them); None leaves XComs
    alone (a backend other than the database stores them itself)."""
    params = ended_params(
        ti_id, token, outcome=outcome, decision=decision, now=now, exit_code=exit_code,
        error=error, followed=followed, started_at=started_at, worker_id=worker_id,
        returned=returned,
    )  # fmt: skip
    row = _ENDED.execute(conn, params).first()
    return ended_result(row, ti_id, token, decision.to_state, started_at)


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
