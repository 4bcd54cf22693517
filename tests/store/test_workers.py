"""Worker rows on a real PostgreSQL: registration, heartbeats on the database clock, free slots
from assigned attempts, suspect and lost marking, and the scope of a reported attempt."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import admit
from tradewind_cluster.store import workers
from tradewind_cluster.store.attempts import record_start, requeue_attempt
from tradewind_cluster.store.database import Database, DatabaseOptions
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.store.workers import WorkerState

pytestmark = pytest.mark.store
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def register(
    db: Database, worker_id: str, *, queues: tuple[str, ...] = ("default",), slots: int = 4
) -> None:
    db.transaction(
        lambda c: workers.register_worker(
            c,
            worker_id=worker_id,
            name=worker_id,
            hostname="host",
            grpc_address=f"{worker_id}:50051",
            queues=queues,
            slots=slots,
            version="t",
            registered_via="r1",
        )
    )


def age(db: Database, worker_id: str, seconds: float) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE worker SET heartbeat_at = clock_timestamp() - make_interval(secs => :s) "
                "WHERE id = :id"
            ),
            {"s": seconds, "id": worker_id},
        )


def state(db: Database, worker_id: str) -> str:
    with db.engine.connect() as conn:
        return str(
            conn.execute(
                sa.text("SELECT state FROM worker WHERE id = :id"), {"id": worker_id}
            ).scalar_one()
        )


def queue_tasks(db: Database, *task_ids: str, queue: str = "default") -> list[QueuedAttempt]:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        for task_id in task_ids:
            insert_ti(conn, run, task_id, state="scheduled", queue=queue)

    db.transaction(setup)
    outcome = db.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="r1", decide=admit, now=NOW)
    )
    assert outcome is not None
    return sorted(outcome.queued, key=lambda q: q.task_id)


def assign(db: Database, q: QueuedAttempt, worker_id: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE task_instance SET worker = :w WHERE id = :id"),
            {"w": worker_id, "id": q.ti_id},
        )


def test_a_registered_worker_is_live_with_its_queues_and_free_slots(database: Database) -> None:
    register(database, "w1", queues=("default", "spark", "default"), slots=3)
    [row] = database.read(lambda c: workers.live_workers(c, max_age_s=5))
    assert row.id == "w1"
    assert row.queues == ("default", "spark")
    assert (row.slots, row.free_slots, row.state) == (3, 3, WorkerState.ALIVE)
    assert row.grpc_address == "w1:50051"
    assert row.registered_via == "r1"
    assert 0 <= row.heartbeat_age_s < 5


def test_registering_again_updates_the_row_and_revives_a_lost_worker(database: Database) -> None:
    register(database, "w1", slots=2)
    age(database, "w1", 60)
    assert database.transaction(lambda c: workers.mark_lost_workers(c, max_age_s=6)) == ["w1"]
    assert (
        database.transaction(lambda c: workers.heartbeat_worker(c, "w1", running=0, draining=False))
        is False
    )
    register(database, "w1", queues=("gpu",), slots=8)
    [row] = database.read(lambda c: workers.live_workers(c, max_age_s=5))
    assert (row.queues, row.slots, row.state) == (("gpu",), 8, WorkerState.ALIVE)


def test_heartbeat_knows_only_registered_workers_and_revives_a_suspect(database: Database) -> None:
    assert not database.transaction(
        lambda c: workers.heartbeat_worker(c, "nobody", running=0, draining=False)
    )
    register(database, "w1")
    assert database.transaction(lambda c: workers.mark_suspect(c, "w1"))
    assert not database.transaction(lambda c: workers.mark_suspect(c, "w1"))  # not alive any more
    assert database.read(lambda c: workers.live_workers(c, max_age_s=5)) == []
    age(database, "w1", 3)
    assert database.transaction(
        lambda c: workers.heartbeat_worker(c, "w1", running=2, draining=False)
    )
    [row] = database.read(lambda c: workers.live_workers(c, max_age_s=5))
    assert (row.state, row.running) == (WorkerState.ALIVE, 2)
    assert row.heartbeat_age_s < 3


def test_a_draining_worker_gets_no_new_attempts(database: Database) -> None:
    register(database, "w1")
    assert database.transaction(
        lambda c: workers.heartbeat_worker(c, "w1", running=1, draining=True)
    )
    assert state(database, "w1") == "draining"
    assert database.read(lambda c: workers.live_workers(c, max_age_s=5)) == []
    listed = database.read(lambda c: workers.list_workers(c, states=[WorkerState.DRAINING]))
    assert [w.id for w in listed] == ["w1"]


def test_a_silent_worker_is_not_live_and_becomes_lost_after_lease_and_margin(
    database: Database,
) -> None:
    register(database, "fresh")
    register(database, "quiet")
    register(database, "gone")
    age(database, "quiet", 5)
    age(database, "gone", 7)
    assert [w.id for w in database.read(lambda c: workers.live_workers(c, max_age_s=4))] == [
        "fresh"
    ]
    assert database.transaction(lambda c: workers.mark_lost_workers(c, max_age_s=6)) == ["gone"]
    assert database.transaction(lambda c: workers.mark_lost_workers(c, max_age_s=6)) == []
    assert (state(database, "fresh"), state(database, "quiet"), state(database, "gone")) == (
        "alive",
        "alive",
        "lost",
    )


def test_free_slots_count_active_attempts_assigned_to_the_worker(database: Database) -> None:
    register(database, "w1", slots=3)
    register(database, "w2", slots=3)
    a, b, c = queue_tasks(database, "a", "b", "c")
    assign(database, a, "w1")
    assign(database, b, "w1")
    assign(database, c, "w2")
    with database.engine.begin() as conn:  # a finished attempt frees its slot
        conn.execute(
            sa.text("UPDATE task_instance SET state = 'success' WHERE id = :id"), {"id": c.ti_id}
        )
    rows = {w.id: w for w in database.read(lambda conn: workers.live_workers(conn, max_age_s=5))}
    assert rows["w1"].assigned == {(a.ti_id, a.token), (b.ti_id, b.token)}
    assert (rows["w1"].free_slots, rows["w2"].free_slots) == (1, 3)


def test_undispatched_attempts_are_queued_ones_no_worker_took(database: Database) -> None:
    a, b, c = queue_tasks(database, "a", "b", "c", queue="spark")
    assign(database, a, "w1")
    database.transaction(lambda conn: record_start(conn, c.ti_id, c.token, worker_id="w1", now=NOW))
    refs = [(q.ti_id, q.token) for q in (a, b, c)] + [(b.ti_id, b.token + 1)]
    assert database.read(lambda conn: workers.undispatched(conn, refs)) == {(b.ti_id, b.token)}
    board = database.read(lambda c: workers.read_board(c, [], max_age_s=5, with_pending=True))
    assert board.pending == {"spark": 1}  # attempts waiting for a worker, per queue


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
def test_the_board_is_the_three_reads_in_one_statement(
    database: Database, db_url: str, prepared: bool
) -> None:
    reader = Database(db_url, DatabaseOptions(prepared_statements=prepared))

    def board(refs: list[tuple[int, int]], with_pending: bool = True) -> workers.Board:
        return reader.read(
            lambda c: workers.read_board(c, refs, max_age_s=5, with_pending=with_pending)
        )

    empty = board([])  # no worker, nothing queued: still one answer
    assert (empty.workers, empty.undispatched, empty.pending) == ([], set(), {})
    register(database, "w1", slots=3)
    register(database, "w2", slots=3)
    a, b, c = queue_tasks(database, "a", "b", "c", queue="spark")
    assign(database, a, "w1")
    refs = [(q.ti_id, q.token) for q in (a, b, c)] + [(b.ti_id, b.token + 1)]
    got = board(refs)

    def ages(rows: list[workers.WorkerRow]) -> list[workers.WorkerRow]:
        return [replace(r, heartbeat_age_s=0.0) for r in rows]  # the clock moves between reads

    assert ages(got.workers) == ages(database.read(lambda c: workers.live_workers(c, max_age_s=5)))
    assert [w.id for w in got.workers] == ["w1", "w2"]
    assert got.workers[0].assigned == {(a.ti_id, a.token)}
    assert got.undispatched == database.read(lambda c: workers.undispatched(c, refs))
    assert got.undispatched == {(b.ti_id, b.token), (c.ti_id, c.token)}
    assert got.pending == {"spark": 2}
    assert board(refs, with_pending=False).pending == {}
    reader.dispose()


def test_attempts_sent_to_a_lost_worker_go_back_to_scheduled(database: Database) -> None:
    a, b = queue_tasks(database, "a", "b")
    assign(database, a, "lost-one")
    assign(database, b, "lost-one")
    database.transaction(
        lambda conn: record_start(conn, b.ti_id, b.token, worker_id="lost-one", now=NOW)
    )
    done = database.transaction(
        lambda conn: workers.requeue_lost_dispatches(conn, ["lost-one"], now=NOW)
    )
    assert done == [(a.ti_id, a.token)]
    with database.engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT task_id, state FROM task_instance")).all())
    assert rows == {"a": "scheduled", "b": "running"}  # running ones are the zombie sweep's


def test_attempt_scope_names_the_task_instance_and_whether_the_token_is_current(
    database: Database,
) -> None:
    [q] = queue_tasks(database, "a")
    assert database.read(lambda c: workers.attempt_scope(c, 999_999, 1)) is None
    scope = database.read(lambda c: workers.attempt_scope(c, q.ti_id, q.token))
    assert scope is not None
    assert (scope.dag_id, scope.task_id, scope.ti_state) == ("d", "a", "queued")
    assert scope.is_current
    assert (scope.attempt_try, scope.attempt_state) == (1, "queued")
    database.transaction(lambda c: requeue_attempt(c, q.ti_id, q.token, reason="test", now=NOW))
    again = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="r1", decide=admit, now=NOW)
    )
    assert again is not None
    stale = database.read(lambda c: workers.attempt_scope(c, q.ti_id, q.token))
    assert stale is not None
    assert not stale.is_current
    assert (
        stale.stale_reason()
        == f"stale token {q.token}: the current attempt has token {q.token + 1}"
    )
    missing = database.read(lambda c: workers.attempt_scope(c, q.ti_id, 77))
    assert missing is not None
    assert (missing.attempt_try, missing.attempt_state) == (None, None)
