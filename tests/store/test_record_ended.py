"""record_ended, the one-statement report of a success or skip: it applies only under the current
token of a running try (or a queued one it also starts), stores the returned XComs with it, waits
on the run lock and refuses, never applies, a report superseded while it waited."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.store import test_attempts as attempts_tests
from tradewind.scheduling.admission import admit
from tradewind.scheduling.retries import AttemptOutcome, OutcomeDecision, decide_outcome
from tradewind.spec import TaskKind, TaskSpec
from tradewind.states import TaskInstanceState as TI
from tradewind_cluster.store.attempts import (
    ReportResult,
    record_ended,
    record_start,
    requeue_attempt,
)
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.store.schema import xcom
from tradewind_cluster.store.xcom import pull_xcoms

pytestmark = pytest.mark.store
NOW = datetime(2026, 3, 1, tzinfo=UTC)
STARTED = NOW + timedelta(seconds=1)
ENDED = NOW + timedelta(seconds=5)
SPEC = TaskSpec(
    task_id="t",
    operator="BashOperator",
    kind=TaskKind.BASH,
    retries=1,
    retry_delay=timedelta(seconds=30),
)
TABLES = ("task_instance", "task_attempt", "xcom", "dag_run")


def decision(outcome: AttemptOutcome, try_number: int = 1) -> OutcomeDecision:
    return decide_outcome(SPEC, outcome, try_number, 2, ENDED, random.Random(1).random)


def queued_attempt(database: Database) -> QueuedAttempt:
    return attempts_tests.queued_attempt(database, max_tries=2)


def running_attempt(database: Database) -> QueuedAttempt:
    q = queued_attempt(database)
    started, _ = database.transaction(
        lambda c: record_start(c, q.ti_id, q.token, worker_id="w1", now=STARTED)
    )
    assert started.accepted
    return q


def end(
    database: Database,
    ti_id: int,
    token: int,
    *,
    outcome: AttemptOutcome = AttemptOutcome.SUCCESS,
    started_at: datetime | None = None,
    returned: Sequence[tuple[str, str]] | None = None,
) -> ReportResult:
    return database.statement(
        lambda c: record_ended(
            c,
            ti_id,
            token,
            outcome=outcome,
            decision=decision(outcome),
            now=ENDED,
            exit_code=0,
            started_at=started_at,
            worker_id="w2" if started_at is not None else None,
            returned=returned,
        )
    )


def insert_xcom(database: Database, q: QueuedAttempt, key: str, value: str) -> None:
    database.transaction(
        lambda c: c.execute(
            sa.insert(xcom).values(
                dag_id=q.dag_id, run_id=q.run_id, task_id=q.task_id, key=key, value=value
            )
        )
    )


def xcoms(database: Database, q: QueuedAttempt) -> dict[str, str]:
    rows = database.read(
        lambda c: pull_xcoms(c, dag_id=q.dag_id, run_id=q.run_id, task_ids=[q.task_id], key=None)
    )
    return {r.key: r.value for r in rows}


def one_row(database: Database, sql: str, **params: object) -> tuple[Any, ...]:
    with database.engine.connect() as conn:
        return tuple(conn.execute(sa.text(sql), params).one())


def snapshot(database: Database) -> dict[str, list[dict[str, object]]]:
    """Every row of the tables a report may touch, to show a refusal changed nothing."""
    with database.engine.connect() as conn:
        return {
            table: [
                dict(r)
                for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY id")).mappings()
            ]
            for table in TABLES
        }


def test_running_to_success_under_the_current_token(database: Database) -> None:
    q = running_attempt(database)
    insert_xcom(database, q, "older", '"kept"')  # not a starting try: older XComs stay

    done = end(database, q.ti_id, q.token, returned=[("return_value", "42"), ("extra", '"x"')])

    assert done.accepted, done.reason
    assert done.state is TI.SUCCESS
    assert not done.started
    assert done.attempt is not None
    assert (done.attempt.try_number, done.attempt.dag_id, done.attempt.task_id) == (1, "d", "t")
    assert done.attempt.start_date == STARTED
    assert done.run_id == q.run_id
    row = one_row(
        database,
        "SELECT state, end_date, start_date, worker FROM task_instance WHERE id = :i",
        i=q.ti_id,
    )
    assert row == ("success", ENDED, STARTED, "w1")
    attempt = one_row(
        database,
        "SELECT state, end_date, exit_code, start_date, worker FROM task_attempt WHERE token = :t",
        t=q.token,
    )
    assert attempt == ("success", ENDED, 0, STARTED, "w1")
    assert one_row(database, "SELECT id, examine_after FROM dag_run") == (done.run_pk, ENDED)
    assert xcoms(database, q) == {"return_value": "42", "extra": '"x"', "older": '"kept"'}


def test_queued_to_success_also_starts_the_try_and_replaces_older_xcoms(
    database: Database,
) -> None:
    q = queued_attempt(database)
    insert_xcom(database, q, "older", '"from a previous try"')
    insert_xcom(database, q, "return_value", '"previous"')

    done = end(database, q.ti_id, q.token, started_at=STARTED, returned=[("return_value", "7")])

    assert done.accepted, done.reason
    assert done.started
    assert done.state is TI.SUCCESS
    assert done.attempt is not None
    assert (done.attempt.try_number, done.attempt.start_date) == (1, STARTED)
    row = one_row(
        database,
        "SELECT state, try_number, worker, start_date, end_date, heartbeat_at"
        " FROM task_instance WHERE id = :i",
        i=q.ti_id,
    )
    assert row == ("success", 1, "w2", STARTED, ENDED, ENDED)
    attempt = one_row(
        database,
        "SELECT state, worker, start_date, end_date, exit_code FROM task_attempt WHERE token = :t",
        t=q.token,
    )
    assert attempt == ("success", "w2", STARTED, ENDED, 0)
    assert xcoms(database, q) == {"return_value": "7"}


def test_queued_to_success_without_returned_leaves_xcoms_alone(database: Database) -> None:
    q = queued_attempt(database)
    insert_xcom(database, q, "older", '"from a previous try"')

    done = end(database, q.ti_id, q.token, started_at=STARTED, returned=None)

    assert done.accepted, done.reason
    assert done.started
    assert xcoms(database, q) == {"older": '"from a previous try"'}


def test_queued_without_started_at_is_refused(database: Database) -> None:
    q = queued_attempt(database)
    insert_xcom(database, q, "older", "1")
    before = snapshot(database)

    done = end(database, q.ti_id, q.token, returned=[("return_value", "2")])

    assert not done.accepted
    assert done.reason == "task instance is queued"
    assert done.state is TI.QUEUED
    assert snapshot(database) == before


def test_a_stale_token_is_refused_and_changes_nothing(database: Database) -> None:
    old = queued_attempt(database)
    assert database.transaction(
        lambda c: requeue_attempt(c, old.ti_id, old.token, reason="dispatch failed", now=NOW)
    )
    again = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert again is not None
    new = again.queued[0]
    database.transaction(lambda c: record_start(c, new.ti_id, new.token, worker_id="w1", now=NOW))
    insert_xcom(database, new, "older", "1")
    before = snapshot(database)

    for started_at in (None, STARTED):
        done = end(
            database, old.ti_id, old.token, started_at=started_at, returned=[("return_value", "2")]
        )
        assert not done.accepted
        assert done.reason.startswith("stale token")
        assert done.reason == (
            f"stale token {old.token}: the current attempt has token {new.token}"
        )
    assert snapshot(database) == before
    states = {r["token"]: r["state"] for r in before["task_attempt"]}
    assert states == {old.token: "requeued", new.token: "running"}


def test_an_unknown_task_instance_is_refused(database: Database) -> None:
    queued_attempt(database)
    before = snapshot(database)

    done = end(database, 999_999, 1, started_at=STARTED, returned=[("return_value", "1")])

    assert not done.accepted
    assert done.reason == "unknown task instance 999999"
    assert snapshot(database) == before


@pytest.mark.parametrize("starts", [False, True], ids=["running", "queued"])
def test_a_skip_stores_no_xcoms(database: Database, starts: bool) -> None:
    q = queued_attempt(database) if starts else running_attempt(database)

    done = end(
        database,
        q.ti_id,
        q.token,
        outcome=AttemptOutcome.SKIPPED,
        started_at=STARTED if starts else None,
        returned=[("return_value", "42")],
    )

    assert done.accepted, done.reason
    assert done.state is TI.SKIPPED
    assert done.started is starts
    row = one_row(database, "SELECT state, end_date FROM task_instance WHERE id = :i", i=q.ti_id)
    assert row == ("skipped", ENDED)
    attempt = one_row(database, "SELECT state FROM task_attempt WHERE token = :t", t=q.token)
    assert attempt == ("skipped",)
    assert xcoms(database, q) == {}


def wait_for_report_lock_wait(database: Database, deadline_s: float = 10.0) -> None:
    """Until a backend other than ours waits on a lock (a report's statement on the run row)."""
    deadline = time.monotonic() + deadline_s
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND (query LIKE '%WITH cur AS%' OR query LIKE 'EXECUTE tw_report_ended%')"
    )
    with database.autocommit_engine.connect() as conn:
        while conn.execute(query).scalar_one() == 0:
            assert time.monotonic() < deadline, "record_ended never waited on the run lock"
            time.sleep(0.02)


@pytest.mark.parametrize("superseded", [True, False], ids=["token-bumped", "unchanged"])
def test_a_report_waits_on_the_run_lock_and_sees_what_its_holder_committed(
    database: Database, superseded: bool
) -> None:
    q = running_attempt(database)
    [run_pk] = one_row(database, "SELECT run_pk FROM task_instance WHERE id = :i", i=q.ti_id)

    with database.engine.connect() as holder, ThreadPoolExecutor(max_workers=1) as pool:
        holder.begin()
        # The examiner's lock: a report for a task of this run must wait until it commits.
        holder.execute(
            sa.text("SELECT id FROM dag_run WHERE id = :r FOR UPDATE"), {"r": run_pk}
        ).one()
        pending = pool.submit(end, database, q.ti_id, q.token, returned=[("return_value", "1")])
        try:
            wait_for_report_lock_wait(database)
            wait([pending], timeout=0.3)
            assert not pending.done(), "record_ended did not wait for the run lock"
            if superseded:
                holder.execute(
                    sa.text("UPDATE task_instance SET token = token + 1 WHERE id = :i"),
                    {"i": q.ti_id},
                )
            holder.commit()
        finally:
            if holder.in_transaction():
                holder.rollback()
        done = pending.result(timeout=10)

    ti_row = one_row(database, "SELECT state, token FROM task_instance WHERE id = :i", i=q.ti_id)
    attempt = one_row(database, "SELECT state FROM task_attempt WHERE token = :t", t=q.token)
    if superseded:
        assert not done.accepted
        assert done.reason == f"stale token {q.token}: the current attempt has token {q.token + 1}"
        assert ti_row == ("running", q.token + 1)
        assert attempt == ("running",)
        assert xcoms(database, q) == {}
    else:
        assert done.accepted, done.reason
        assert ti_row == ("success", q.token)
        assert attempt == ("success",)
        assert xcoms(database, q) == {"return_value": "1"}


def test_a_decision_with_a_retry_time_is_rejected(database: Database) -> None:
    q = running_attempt(database)
    retry = decision(AttemptOutcome.FAILED)
    assert retry.next_retry_at is not None
    before = snapshot(database)

    with pytest.raises(ValueError, match="use record_finish"):
        database.statement(
            lambda c: record_ended(
                c,
                q.ti_id,
                q.token,
                outcome=AttemptOutcome.FAILED,
                decision=retry,
                now=ENDED,
            )
        )
    assert snapshot(database) == before
