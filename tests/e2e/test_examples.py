"""Every shipped example DAG, run end to end on real schedulers and workers, ends as designed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.processes import Proc, env_for, start_scheduler, start_worker, wait_until
from tradewind.schedules import RunType, run_id_for
from tradewind_cluster.example_dags import FOLDER
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.runs import NewRun, trigger_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MANUAL = [
    "example_branching",
    "example_trigger_rules",
    "example_pool_fanout",
    "example_taskflow",
    "example_retries",
]


def sql(db_url: str, query: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(query))
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.fixture
def cluster(db_url: str) -> Iterator[str]:
    home = tempfile.mkdtemp(prefix="tradewind-examples-")
    env = env_for(
        db_url,
        Path(home),
        FOLDER,
        TRADEWIND__SCHEDULER__EXECUTOR="workers",
        TRADEWIND__SCHEDULER__PARSE_INTERVAL_S="5",
    )
    sql(db_url, "INSERT INTO pool (name, slots) VALUES ('example_pool', 2)")
    procs: list[Proc] = [start_scheduler(env, Path(home), "s1")]
    addr = f"127.0.0.1:{procs[0].ports['grpc']}"
    for name in ("w1", "w2"):
        procs.append(start_worker(env, Path(home), name, addr, "--slots", "4"))
    try:
        yield db_url
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(home, ignore_errors=True)


def trigger_all(db_url: str) -> None:
    wait_until(
        lambda: len(sql(db_url, "SELECT dag_id FROM serialized_dag")) >= 7,
        60,
        "every example DAG parsed",
    )
    assert sql(db_url, "SELECT path, error FROM import_error") == []
    db = Database(db_url)
    try:
        for dag_id in MANUAL:
            now = datetime.now(UTC)
            run = NewRun(
                run_id=run_id_for(RunType.MANUAL, now),
                logical_date=now,
                data_interval_start=now,
                data_interval_end=now,
                run_type="manual",
            )
            db.transaction(lambda c, d=dag_id, r=run: trigger_run(c, d, r, created_by="test"))
    finally:
        db.dispose()


def test_every_example_dag_ends_as_designed(cluster: str) -> None:
    db_url = cluster
    trigger_all(db_url)
    finished = "SELECT count(*) FROM dag_run WHERE state IN ('success','failed')"
    total = "SELECT count(*) FROM dag_run"
    wait_until(
        lambda: (
            (n := sql(db_url, total)[0][0]) >= 1 + len(MANUAL) + 12
            and sql(db_url, finished)[0][0] == n
        ),
        150,
        "every example run to finish",
        interval=0.5,
    )
    runs = dict(
        sql(db_url, "SELECT dag_id, array_agg(DISTINCT state) FROM dag_run GROUP BY dag_id")
    )
    assert all(states == ["success"] for states in runs.values()), runs
    assert set(runs) == {"tutorial", "example_catchup", *MANUAL}
    states = {
        (d, t): s
        for d, t, s in sql(
            db_url,
            "SELECT dag_id, task_id, state FROM task_instance WHERE dag_id <> 'example_catchup'",
        )
    }
    branch = {states[("example_branching", "even_day")], states[("example_branching", "odd_day")]}
    assert branch == {"success", "skipped"}
    assert states[("example_branching", "join")] == "success"
    assert states[("example_trigger_rules", "cleanup")] == "success"
    assert states[("example_trigger_rules", "alert")] == "skipped"  # nothing failed
    assert states[("example_trigger_rules", "report")] == "success"
    tries = sql(db_url, "SELECT try_number FROM task_instance WHERE dag_id = 'example_retries'")
    assert tries == [(3,)]
    catchup = sql(db_url, "SELECT count(*) FROM dag_run WHERE dag_id = 'example_catchup'")[0][0]
    assert catchup == 12
    # The pool never held more than its 2 slots: no three pool attempts overlapped in time.
    overlapping = sql(
        db_url,
        "SELECT max(n) FROM (SELECT (SELECT count(*) FROM task_attempt b JOIN task_instance tb ON tb.id = b.ti_id "
        "WHERE tb.pool = 'example_pool' AND b.start_date <= a.start_date AND b.end_date > a.start_date) AS n "
        "FROM task_attempt a JOIN task_instance ta ON ta.id = a.ti_id WHERE ta.pool = 'example_pool') x",
    )[0][0]
    assert overlapping is not None
    assert int(overlapping) <= 2  # type: ignore[call-overload]
    xcom = sql(
        db_url, "SELECT value FROM xcom WHERE dag_id = 'example_taskflow' AND task_id = 'transform'"
    )
    assert xcom == [("6",)]
