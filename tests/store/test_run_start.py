"""Starting queued runs and recording where a DAG's schedule stands: the run creation step's
statements, against a real PostgreSQL."""

from __future__ import annotations

import functools
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.factories import T0, insert_dag, insert_run
from tradewind import DAG, BashOperator
from tradewind.serialization import dag_to_spec
from tradewind.spec import DagSpec
from tradewind.states import DagRunState
from tradewind_cluster.store.database import Database, DatabaseOptions
from tradewind_cluster.store.runs import active_run_counts, record_schedule, start_queued_runs
from tradewind_cluster.store.schema import dag, dag_run, task_instance

pytestmark = pytest.mark.store


def _spec(dag_id: str) -> DagSpec:
    with DAG(dag_id, schedule=None, start_date=T0, max_active_runs=16) as d:
        BashOperator(task_id="a", bash_command="true") >> BashOperator(
            task_id="b", bash_command="true"
        )
    return dag_to_spec(d)


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
def test_queued_runs_start_oldest_first_skipping_those_another_replica_holds(
    database: Database, db_url: str, prepared: bool, request: pytest.FixtureRequest
) -> None:
    spec = _spec("starts")
    database.transaction(lambda c: insert_dag(c, "starts"))
    pks = [
        database.transaction(
            functools.partial(insert_run, dag_id="starts", day=day, state="queued")
        )
        for day in (3, 0, 2, 1)
    ]
    database.transaction(
        lambda c: c.execute(
            sa.update(dag_run).where(dag_run.c.id == pks[0]).values(trace_context="00-tp")
        )
    )
    held, release = threading.Event(), threading.Event()

    def other_replica() -> None:  # holds the oldest queued run (day 0), as a replica starting it
        with database.engine.begin() as conn:
            conn.execute(sa.text("SELECT 1 FROM dag_run WHERE id = :id FOR UPDATE"), {"id": pks[1]})
            held.set()
            release.wait(10)

    starter = Database(db_url, DatabaseOptions(prepared_statements=prepared))
    request.addfinalizer(starter.dispose)
    thread = threading.Thread(target=other_replica)
    thread.start()
    assert held.wait(10)
    now = T0 + timedelta(hours=1)
    try:
        started = starter.transaction(lambda c: start_queued_runs(c, spec, slots=2, now=now))
    finally:
        release.set()
        thread.join(10)
    # day 0 is held: the next two oldest start, day 3 waits for a slot
    assert [r.logical_date for r in started] == [T0 + timedelta(days=1), T0 + timedelta(days=2)]
    assert all(r.state is DagRunState.RUNNING and r.start_date == now for r in started)
    assert all(r.conf == {} for r in started)
    tis = database.read(
        lambda c: c.execute(
            sa.select(task_instance.c.run_pk, task_instance.c.task_id).order_by(
                task_instance.c.run_pk, task_instance.c.task_id
            )
        ).all()
    )
    assert sorted(tis) == sorted((r.id, t) for r in started for t in ("a", "b"))
    rest = starter.transaction(lambda c: start_queued_runs(c, spec, slots=5, now=now))
    assert [(r.logical_date, r.trace_context) for r in rest] == [
        (T0, None),
        (T0 + timedelta(days=3), "00-tp"),  # a run's stored trace context comes back with it
    ]
    assert starter.transaction(lambda c: start_queued_runs(c, spec, slots=0, now=now)) == []


def test_active_run_counts_are_per_dag_and_state(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        for dag_id in ("x", "y", "z"):
            insert_dag(conn, dag_id)
        for day, state in enumerate(("queued", "queued", "running", "success", "failed")):
            insert_run(conn, "x", day=day, state=state)
        insert_run(conn, "y", day=0, state="running")

    database.transaction(setup)
    counts = database.read(lambda c: active_run_counts(c, ["x", "y", "z"]))
    assert counts == {"x": (2, 1), "y": (0, 1), "z": (0, 0)}
    assert database.read(lambda c: active_run_counts(c, [])) == {}


def test_the_schedule_record_keeps_the_last_interval_unless_given(database: Database) -> None:
    database.transaction(lambda c: insert_dag(c, "sched", check_runs=True))
    first = (T0, T0 + timedelta(days=1))
    nxt = (T0 + timedelta(days=1), T0 + timedelta(days=2))

    def record(
        last: tuple[datetime, datetime] | None, create_after: datetime | None
    ) -> sa.RowMapping:
        database.transaction(
            lambda c: record_schedule(
                c,
                "sched",
                last_interval=last,
                next_logical=nxt[0],
                next_interval=nxt,
                next_create_after=create_after,
                check_runs=False,
            )
        )
        return database.read(
            lambda c: c.execute(sa.select(dag).where(dag.c.dag_id == "sched")).mappings().one()
        )

    row = record(first, nxt[1])
    assert (row["last_automated_interval_start"], row["last_automated_interval_end"]) == first
    assert (row["next_dagrun"], row["next_dagrun_interval_start"]) == (nxt[0], nxt[0])
    assert (row["next_dagrun_interval_end"], row["next_dagrun_create_after"]) == (nxt[1], nxt[1])
    assert row["check_runs"] is False
    row = record(None, None)  # held back: no new run, nothing due until a run finishes
    assert (row["last_automated_interval_start"], row["last_automated_interval_end"]) == first
    assert row["next_dagrun_create_after"] is None
