"""The scheduler loop in process, step by step, with an in-process dispatcher: triggers and
schedules become runs, trigger rules and retries play out, and runs finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.dags import register, trigger
from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind.operators.empty import EmptyOperator
from tradewind_cluster.scheduler.context import SchedulerContext, SchedulerOptions
from tradewind_cluster.scheduler.local_dispatch import LocalDispatcher
from tradewind_cluster.scheduler.loop import SchedulerLoop
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store import members, workers
from tradewind_cluster.store.database import Database

pytestmark = pytest.mark.cluster


@pytest.fixture
def replica(database: Database) -> Iterator[tuple[SchedulerLoop, LocalDispatcher]]:
    database.transaction(
        lambda c: members.register_member(
            c, member_id="r1", name="r1", hostname="h", pid=1, version="t"
        )
    )
    ctx = SchedulerContext(db=database, member_id="r1", options=SchedulerOptions(idle_sleep_s=0.05))
    reports = ReportHandler(ctx)
    dispatcher = LocalDispatcher(reports, slots=4)
    loop = SchedulerLoop(ctx, dispatcher)
    reports.on_change = loop.waker.wake
    yield loop, dispatcher
    dispatcher.close()
    loop.close()


def states(db: Database, dag_id: str) -> dict[str, str]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT task_id, state FROM task_instance WHERE dag_id = :d"), {"d": dag_id}
        )
        return dict(rows.all())


def run_state(db: Database, dag_id: str) -> list[str]:
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT state FROM dag_run WHERE dag_id = :d ORDER BY logical_date"),
                {"d": dag_id},
            ).scalars()
        )


def drive(loop: SchedulerLoop, until: callable, timeout: float = 20) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        report = loop.run_once()
        assert report.errors == {}
        if not report.busy:
            time.sleep(0.01)


def test_triggered_chain_with_skip_and_empty_runs_to_success(database: Database, replica) -> None:  # type: ignore[no-untyped-def]
    loop, _ = replica
    with DAG("chain", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        a = BashOperator(task_id="a", bash_command="true")
        b = EmptyOperator(task_id="b")
        c = BashOperator(task_id="c", bash_command="exit 99")
        d = BashOperator(task_id="d", bash_command="true")
        a >> b >> c >> d
    now = datetime.now(UTC)
    spec = register(database, dag, now=now)
    trigger(database, spec, now - timedelta(minutes=1))
    drive(loop, lambda: run_state(database, "chain") == ["success"])
    assert states(database, "chain") == {
        "a": "success",
        "b": "success",
        "c": "skipped",
        "d": "skipped",
    }


def test_attempts_of_a_dispatch_pass_that_failed_are_dispatched_next_pass(  # type: ignore[no-untyped-def]
    database: Database, replica
) -> None:
    loop, _ = replica
    with DAG("flaky", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        BashOperator(task_id="a", bash_command="true")
    now = datetime.now(UTC)
    trigger(database, register(database, dag, now=now), now - timedelta(minutes=1))
    dispatcher = loop.dispatch.dispatcher
    real = dispatcher.dispatch
    failures = []

    def once(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not failures:  # the pass fails after the attempt was queued, before any answer
            failures.append(1)
            raise RuntimeError("connection lost")
        return real(*args, **kwargs)

    dispatcher.dispatch = once  # type: ignore[method-assign]
    deadline = time.monotonic() + 20
    errors: list[str] = []
    while run_state(database, "flaky") != ["success"]:
        assert time.monotonic() < deadline, (states(database, "flaky"), errors)
        errors += loop.run_once().errors.values()
        time.sleep(0.01)
    assert failures == [1]
    assert errors == ["RuntimeError: connection lost"]  # one failed pass, then dispatched
    assert not loop.dispatch.has_pending()


def test_run_creation_probes_only_after_a_claim_that_found_nothing(  # type: ignore[no-untyped-def]
    database: Database, replica
) -> None:
    """A pass with nothing due costs one autocommit probe, not the claim's transaction; a pass
    after one that claimed DAGs claims at once (on a busy schedule most are due)."""
    loop, _ = replica
    with DAG("probe", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        EmptyOperator(task_id="e")
    now = datetime.now(UTC)
    spec = register(database, dag, now=now)
    seen: list[str] = []

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if "tw_any_due_dags" in statement and statement.startswith("EXECUTE"):
            seen.append("probe")
        elif "FOR UPDATE OF dag SKIP LOCKED" in statement:
            seen.append("claim")

    for engine in (database.engine, database.autocommit_engine):
        sa.event.listen(engine, "before_cursor_execute", record)
    try:
        loop.creator.run_once()  # nothing due: the probe alone
        trigger(database, spec, now - timedelta(minutes=1))
        loop.creator.run_once()  # the triggered run is due: probe, then claim
        loop.creator.run_once()  # the last claim found the DAG: claim at once (nothing now)
        loop.creator.run_once()  # the last claim found nothing: the probe alone
    finally:
        for engine in (database.engine, database.autocommit_engine):
            sa.event.remove(engine, "before_cursor_execute", record)
    assert seen == ["probe", "probe", "claim", "claim", "probe"]
    assert run_state(database, "probe") == ["running"]


def test_a_dispatch_right_after_queueing_reads_nothing_from_the_store(  # type: ignore[no-untyped-def]
    database: Database, replica
) -> None:
    """The critical section's statement returns what dispatch needs of the run and the DAG's
    spec version; with that version cached (the examine step just used it) dispatch issues no
    statement before its marks. A retried attempt, or a version not cached, is read."""
    loop, _ = replica
    with DAG("lean", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        BashOperator(task_id="a", bash_command="echo {{ run_id }}")
    now = datetime.now(UTC)
    trigger(database, register(database, dag, now=now), now - timedelta(minutes=1))
    loop.creator.run_once()
    loop.examiner.run_once()
    queued = loop.queuer.run_once().queued
    assert [q.task_id for q in queued] == ["a"]
    assert queued[0].run is not None
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    for engine in (database.engine, database.autocommit_engine):
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        [result] = loop.dispatch.run_once(queued)
        assert result.worker_id is not None
        # (the in-process dispatcher records the attempt's start itself, and the marks follow;
        # neither the run nor the DAG's spec version is read)
        reads = [s for s in statements if "serialized_dag" in s or "dag_run" in s]
        assert reads == [], reads
        assert any("dispatched_at" in s for s in statements)
        loop.ctx.specs = type(loop.ctx.specs)()  # an empty cache: that version must be read
        statements.clear()
        assert loop.dispatch._requests_from_queueing(queued) == []  # the caller reads instead
        assert statements == []
    finally:
        for engine in (database.engine, database.autocommit_engine):
            sa.event.remove(engine, "before_cursor_execute", count)
    drive(loop, lambda: run_state(database, "lean") == ["success"])
    log = states(database, "lean")
    assert log == {"a": "success"}


def test_failure_retries_then_fails_the_run_and_all_done_still_runs(
    database: Database, replica
) -> None:  # type: ignore[no-untyped-def]
    loop, _ = replica
    with DAG("flaky", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        bad = BashOperator(
            task_id="bad", bash_command="exit 3", retries=1, retry_delay=timedelta(seconds=0)
        )
        cleanup = BashOperator(task_id="cleanup", bash_command="true", trigger_rule="all_done")
        after = BashOperator(task_id="after", bash_command="true")
        bad >> [cleanup, after]
    now = datetime.now(UTC)
    spec = register(database, dag, now=now)
    trigger(database, spec, now - timedelta(minutes=1))
    drive(loop, lambda: run_state(database, "flaky") == ["failed"])
    assert states(database, "flaky") == {
        "bad": "failed",
        "cleanup": "success",
        "after": "upstream_failed",
    }
    with database.engine.connect() as conn:
        tries = conn.execute(
            sa.text("SELECT try_number FROM task_instance WHERE task_id = 'bad'")
        ).scalar_one()
        attempts = conn.execute(
            sa.text(
                "SELECT count(*) FROM task_attempt a JOIN task_instance t ON t.id = a.ti_id "
                "WHERE t.task_id = 'bad'"
            )
        ).scalar_one()
    assert (tries, attempts) == (2, 2)


def test_catchup_creates_every_interval_once_within_max_active_runs(
    database: Database, replica
) -> None:  # type: ignore[no-untyped-def]
    loop, _ = replica
    now = datetime.now(UTC).replace(microsecond=0)
    with DAG(
        "hourly",
        schedule=timedelta(hours=1),
        start_date=now - timedelta(hours=5, minutes=30),
        catchup=True,
        max_active_runs=2,
    ) as dag:
        BashOperator(task_id="t", bash_command="true")
    register(database, dag, now=now)
    drive(loop, lambda: run_state(database, "hourly") == ["success"] * 5)
    loop.run_once()
    assert run_state(database, "hourly") == ["success"] * 5


def test_run_forever_wakes_on_work_and_stops(database: Database, replica) -> None:  # type: ignore[no-untyped-def]
    loop, _ = replica
    with DAG("wake", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        BashOperator(task_id="t", bash_command="true")
    loop.ctx.options = SchedulerOptions(idle_sleep_s=30)  # only a wake-up can make this fast
    now = datetime.now(UTC)
    spec = register(database, dag, now=now)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,))
    thread.start()
    try:
        time.sleep(0.2)  # let it go idle
        trigger(database, spec, now - timedelta(minutes=1))
        deadline = time.monotonic() + 10
        while run_state(database, "wake") != ["success"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        stop.set()
        loop.waker.wake()
        thread.join(10)
    assert not thread.is_alive()


def test_depends_on_past_sees_the_earlier_run_moved_in_the_same_pass(  # type: ignore[no-untyped-def]
    database: Database, replica
) -> None:
    """Runs are applied set-based per pass, except a DAG with depends_on_past tasks: its next
    run, examined in the same pass, must see what the pass did to the run before it."""
    loop, _ = replica
    with DAG("past", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        EmptyOperator(task_id="e", depends_on_past=True)
    now = datetime.now(UTC)
    spec = register(database, dag, now=now)
    first = trigger(database, spec, now - timedelta(minutes=2))
    second = trigger(database, spec, now - timedelta(minutes=1))
    loop.creator.run_once()  # starts both runs and creates their task instances
    with database.engine.begin() as conn:  # the earlier run is claimed first
        for pk, ago in ((first, 2), (second, 1)):
            conn.execute(
                sa.text(
                    "UPDATE dag_run SET examine_after = now() - make_interval(secs => :s)"
                    " WHERE id = :pk"
                ),
                {"s": ago, "pk": pk},
            )
    report = loop.examiner.run_once()
    assert report.runs == 2
    with database.engine.connect() as conn:
        got = conn.execute(
            sa.text(
                "SELECT r.id, t.state FROM task_instance t JOIN dag_run r ON r.id = t.run_pk"
                " WHERE t.dag_id = 'past'"
            )
        ).all()
    assert dict(got) == {first: "success", second: "success"}


def test_a_worker_registering_wakes_an_idle_replica_and_drops_its_slot_view(
    database: Database,
) -> None:
    """Tasks wait while no worker serves their queue; a worker registering (on any replica)
    wakes this one through NOTIFY and its cached view of free slots is dropped at once."""

    class NoWorkerYet(LocalDispatcher):
        def __init__(self, reports: ReportHandler) -> None:
            super().__init__(reports, slots=4)
            self.registered = threading.Event()
            self.view: dict[str, int] | None = {}  # "no live worker serves any queue"

        def queue_open(self) -> dict[str, int] | None:
            return self.view

        def capacity_changed(self) -> None:
            if self.registered.is_set():
                self.view = None  # read again: the new worker's slots

    database.transaction(
        lambda c: members.register_member(
            c, member_id="r1", name="r1", hostname="h", pid=1, version="t"
        )
    )
    ctx = SchedulerContext(db=database, member_id="r1", options=SchedulerOptions(idle_sleep_s=30))
    reports = ReportHandler(ctx)
    dispatcher = NoWorkerYet(reports)
    loop = SchedulerLoop(ctx, dispatcher)
    reports.on_change = loop.waker.wake
    with DAG("waits", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        BashOperator(task_id="t", bash_command="true")
    now = datetime.now(UTC)
    spec = register(database, dag, now=now)
    trigger(database, spec, now - timedelta(minutes=1))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while states(database, "waits").get("t") != "scheduled":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # it starves: no worker serves the queue
        assert states(database, "waits") == {"t": "scheduled"}
        dispatcher.registered.set()
        database.transaction(
            lambda c: workers.register_worker(
                c, worker_id="w1", name="w1", hostname="h", grpc_address="127.0.0.1:1",
                queues=["default"], slots=4, version=None, registered_via="r2",
            )
        )  # fmt: skip
        deadline = time.monotonic() + 5  # well under the 30 s idle sleep
        while run_state(database, "waits") != ["success"]:
            assert time.monotonic() < deadline, states(database, "waits")
            time.sleep(0.02)
    finally:
        stop.set()
        loop.waker.wake()
        thread.join(10)
        dispatcher.close()
        loop.close()
    assert not thread.is_alive()
