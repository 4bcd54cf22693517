"""Reports about attempts apply only under the current fencing token; stale ones are refused."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import admit
from tradewind.scheduling.retries import AttemptOutcome, decide_outcome
from tradewind.spec import TaskKind, TaskSpec
from tradewind.states import TaskInstanceState as TI
from tradewind_cluster.store.attempts import (
    AttemptStart,
    heartbeat_attempts,
    record_finish,
    record_start,
    requeue_attempt,
)
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.store.task_instances import get_ti

pytestmark = pytest.mark.store
NOW = datetime(2026, 3, 1, tzinfo=UTC)
SPEC = TaskSpec(
    task_id="t",
    operator="BashOperator",
    kind=TaskKind.BASH,
    retries=1,
    retry_delay=timedelta(seconds=30),
)


def decider(outcome: AttemptOutcome):  # type: ignore[no-untyped-def]
    def decide(start: AttemptStart):  # type: ignore[no-untyped-def]
        return decide_outcome(
            SPEC, outcome, start.try_number, start.max_tries, NOW, random.Random(1).random
        )

    return decide


def queued_attempt(database: Database, max_tries: int = 1) -> QueuedAttempt:
    """Task instance t of a run of DAG d, queued by the critical section (an attempt row too)."""

    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        insert_ti(conn, run, "t", state="scheduled", max_tries=max_tries)

    database.transaction(setup)
    outcome = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert outcome is not None
    return outcome.queued[0]


def test_start_then_success_under_the_current_token(database: Database) -> None:
    q = queued_attempt(database)
    started, info = database.transaction(
        lambda c: record_start(c, q.ti_id, q.token, worker_id="w1", now=NOW)
    )
    assert started.accepted
    assert info is not None
    assert info.try_number == 1
    done = database.transaction(
        lambda c: record_finish(
            c,
            q.ti_id,
            q.token,
            outcome=AttemptOutcome.SUCCESS,
            decide=decider(AttemptOutcome.SUCCESS),
            now=NOW,
            exit_code=0,
        )
    )
    assert done.accepted
    assert done.state is TI.SUCCESS
    with database.engine.connect() as conn:
        attempt = conn.execute(sa.text("SELECT state, exit_code, worker FROM task_attempt")).one()
        examine_after = conn.execute(sa.text("SELECT examine_after FROM dag_run")).scalar_one()
    assert tuple(attempt) == ("success", 0, "w1")
    assert examine_after == NOW


def test_failure_with_tries_left_goes_up_for_retry(database: Database) -> None:
    q = queued_attempt(database)
    database.transaction(lambda c: record_start(c, q.ti_id, q.token, worker_id="w1", now=NOW))
    done = database.transaction(
        lambda c: record_finish(
            c,
            q.ti_id,
            q.token,
            outcome=AttemptOutcome.FAILED,
            decide=decider(AttemptOutcome.FAILED),
            now=NOW,
            exit_code=1,
        )
    )
    assert done.state is TI.UP_FOR_RETRY
    row = database.read(lambda c: get_ti(c, q.ti_id))
    assert row is not None
    assert row.next_retry_at == NOW + timedelta(seconds=30)


def test_a_stale_token_is_refused_and_applies_nothing(database: Database) -> None:
    q = queued_attempt(database)
    assert database.transaction(
        lambda c: requeue_attempt(c, q.ti_id, q.token, reason="dispatch failed", now=NOW)
    )
    again = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert again is not None
    new = again.queued[0]
    assert new.token == q.token + 1
    stale, _ = database.transaction(
        lambda c: record_start(c, q.ti_id, q.token, worker_id="w-old", now=NOW)
    )
    assert not stale.accepted
    assert stale.reason == f"stale token {q.token}: the current attempt has token {new.token}"
    row = database.read(lambda c: get_ti(c, q.ti_id))
    assert row is not None
    assert (row.state, row.worker) == (TI.QUEUED, None)
    unknown, _ = database.transaction(lambda c: record_start(c, 999_999, 1, worker_id="w", now=NOW))
    assert unknown.reason == "unknown task instance 999999"


def test_heartbeat_names_the_attempts_no_longer_wanted(database: Database) -> None:
    q = queued_attempt(database)
    database.transaction(lambda c: record_start(c, q.ti_id, q.token, worker_id="w1", now=NOW))
    later = NOW + timedelta(seconds=5)
    unwanted = database.transaction(
        lambda c: heartbeat_attempts(c, [(q.ti_id, q.token), (q.ti_id, q.token - 1)], now=later)
    )
    assert unwanted == [(q.ti_id, q.token - 1)]
    row = database.read(lambda c: get_ti(c, q.ti_id))
    assert row is not None
    assert row.heartbeat_at == later


def test_dispatch_marks_in_one_batch_only_attempts_still_queued_under_their_token(
    database: Database,
) -> None:
    from tradewind_cluster.store.attempts import Dispatched, mark_dispatched_many

    q = queued_attempt(database)
    moved = database.statement(  # one statement: the hot path runs it in autocommit
        lambda c: mark_dispatched_many(
            c,
            [
                Dispatched(ti_id=q.ti_id, token=q.token, worker_id="w1", trace_context="00-ab"),
                Dispatched(ti_id=q.ti_id, token=q.token + 5, worker_id="w2"),
            ],
            now=NOW,
        )
    )
    assert moved == 1
    row = database.read(lambda c: get_ti(c, q.ti_id))
    assert row is not None
    assert row.worker == "w1"
    with database.engine.connect() as conn:
        attempt = conn.execute(
            sa.text("SELECT worker, dispatched_at, trace_context FROM task_attempt")
        ).one()
    assert tuple(attempt) == ("w1", NOW, "00-ab")


def test_dispatch_marks_keep_the_attempt_history_when_the_report_came_first(
    database: Database,
) -> None:
    """A fast task's report can be applied before the dispatcher stores the worker's answer: the
    task instance has moved on and keeps its state; the attempt row still gets its worker."""
    from tradewind_cluster.store.attempts import Dispatched, mark_dispatched_many

    q = queued_attempt(database)
    database.transaction(lambda c: record_start(c, q.ti_id, q.token, worker_id="w1", now=NOW))
    later = NOW + timedelta(seconds=1)
    moved = database.statement(
        lambda c: mark_dispatched_many(
            c, [Dispatched(ti_id=q.ti_id, token=q.token, worker_id="w1")], now=later
        )
    )
    assert moved == 0
    row = database.read(lambda c: get_ti(c, q.ti_id))
    assert row is not None
    assert row.state == TI.RUNNING
    with database.engine.connect() as conn:
        attempt = conn.execute(sa.text("SELECT worker, dispatched_at FROM task_attempt")).one()
    assert tuple(attempt) == ("w1", later)
