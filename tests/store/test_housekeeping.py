"""Housekeeping sweeps on a real PostgreSQL: zombies, orphans of dead replicas, stuck queued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.retries import FailureDecision
from tradewind.states import TaskInstanceState as TI
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.housekeeping import adopt_orphans, reap_zombies, requeue_stuck_queued

pytestmark = pytest.mark.store
NOW = datetime(2026, 4, 1, 12, tzinfo=UTC)


def fail_or_retry(dag_id: str, task_id: str, try_number: int, max_tries: int) -> FailureDecision:
    if try_number <= max_tries:
        return FailureDecision(to_state=TI.UP_FOR_RETRY, next_retry_at=NOW, reason="retry")
    return FailureDecision(to_state=TI.FAILED, next_retry_at=None, reason="no tries left")


def state_of(db: Database, task_id: str) -> tuple[str, int]:
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT state, token FROM task_instance WHERE task_id = :t"), {"t": task_id}
        ).one()
    return row[0], row[1]


def test_zombies_past_the_threshold_are_failed_or_retried(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        old = NOW - timedelta(seconds=30)
        insert_ti(
            conn,
            run,
            "stale_retry",
            state="running",
            token=1,
            heartbeat_at=old,
            try_number=1,
            max_tries=1,
        )
        insert_ti(
            conn,
            run,
            "stale_last",
            state="running",
            token=1,
            heartbeat_at=old,
            try_number=2,
            max_tries=1,
        )
        insert_ti(
            conn, run, "fresh", state="running", token=1, heartbeat_at=NOW - timedelta(seconds=2)
        )
        insert_ti(conn, run, "never_beat", state="running", token=1, start_date=old)

    database.transaction(setup)
    reaped = database.transaction(
        lambda c: reap_zombies(
            c, now=NOW, threshold=timedelta(seconds=8), decide=fail_or_retry, limit=10
        )
    )
    assert sorted(r.task_id for r in reaped) == ["never_beat", "stale_last", "stale_retry"]
    assert state_of(database, "stale_retry")[0] == "up_for_retry"
    assert state_of(database, "stale_last")[0] == "failed"
    assert state_of(database, "fresh")[0] == "running"
    assert all(r.reason.startswith("zombie: no heartbeat") for r in reaped)


def test_orphans_of_a_dead_replica_are_requeued_or_adopted(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        for mid in ("alive", "gone"):
            members.register_member(conn, member_id=mid, name=mid, hostname="h", pid=1, version="t")
        members.declare_dead(conn, "gone", seen_seq=0, by="alive", reason="test")
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        insert_ti(conn, run, "queued_by_dead", state="queued", token=3, queued_by="gone")
        insert_ti(conn, run, "running_by_dead", state="running", token=3, queued_by="gone")
        insert_ti(conn, run, "queued_by_alive", state="queued", token=3, queued_by="alive")

    database.transaction(setup)
    requeued, adopted = database.transaction(
        lambda c: adopt_orphans(c, member_id="alive", now=NOW, limit=10)
    )
    assert [r.task_id for r in requeued] == ["queued_by_dead"]
    assert adopted == 1
    assert state_of(database, "queued_by_dead")[0] == "scheduled"
    assert state_of(database, "queued_by_alive")[0] == "queued"
    with database.engine.connect() as conn:
        owner = conn.execute(
            sa.text("SELECT queued_by FROM task_instance WHERE task_id = 'running_by_dead'")
        ).scalar()
    assert owner == "alive"


def test_queued_too_long_is_requeued_then_failed(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        old = NOW - timedelta(minutes=20)
        insert_ti(conn, run, "first", state="queued", token=1, queued_at=old, requeue_count=0)
        insert_ti(conn, run, "last", state="queued", token=1, queued_at=old, requeue_count=3)
        insert_ti(conn, run, "young", state="queued", token=1, queued_at=NOW)

    database.transaction(setup)
    out = database.transaction(
        lambda c: requeue_stuck_queued(
            c, now=NOW, timeout=timedelta(minutes=10), max_requeues=3, limit=10
        )
    )
    assert {r.task_id: r.to_state for r in out} == {"first": TI.SCHEDULED, "last": TI.FAILED}
    assert state_of(database, "young")[0] == "queued"
    assert "giving up" in next(r.reason for r in out if r.task_id == "last")
