"""Schedulers and worker agents as real processes: queue routing and XCom across two workers,
a worker killed with SIGKILL (zombie, retried elsewhere), a worker cut off from the schedulers
(its lease kills the attempt before the retry starts), and a running task cleared (undead)."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.processes import Proc, env_for, start_scheduler, start_worker, wait_until
from tests.support.proxy import CuttableProxy
from tradewind.schedules import RunType, run_id_for
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.runs import NewRun, trigger_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = {
    "TRADEWIND__SCHEDULER__EXECUTOR": "workers",
    "TRADEWIND__WORKER__HEARTBEAT_INTERVAL_S": "0.5",
    "TRADEWIND__WORKER__LEASE_S": "2",
    "TRADEWIND__WORKER__LEASE_MARGIN_S": "1",
    "TRADEWIND__WORKER__KILL_GRACE_S": "0.5",
    "TRADEWIND__SCHEDULER__ZOMBIE_THRESHOLD_S": "4",
    "TRADEWIND__SCHEDULER__ZOMBIE_CHECK_INTERVAL_S": "0.5",
    "TRADEWIND__SCHEDULER__ORPHAN_CHECK_INTERVAL_S": "0.5",
    "TRADEWIND__SCHEDULER__PARSE_INTERVAL_S": "2",
}


@dataclass
class Cluster:
    db_url: str
    dir: Path
    env: dict[str, str]
    procs: list[Proc]

    def sql(self, query: str, **params: object) -> list[tuple[object, ...]]:
        engine = sa.create_engine(self.db_url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                return [tuple(r) for r in conn.execute(sa.text(query), params).all()]
        finally:
            engine.dispose()

    def one(self, query: str, **params: object) -> object:
        rows = self.sql(query, **params)
        return rows[0][0] if rows else None

    def trigger(self, dag_id: str) -> str:
        wait_until(
            lambda: self.one("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=dag_id),
            30,
            f"{dag_id} parsed",
        )
        now = datetime.now(UTC)
        run = NewRun(
            run_id=run_id_for(RunType.MANUAL, now),
            logical_date=now,
            data_interval_start=now,
            data_interval_end=now,
            run_type="manual",
        )
        db = Database(self.db_url)
        try:
            db.transaction(lambda c: trigger_run(c, dag_id, run, created_by="test"))
        finally:
            db.dispose()
        return run.run_id

    def run_state(self, dag_id: str) -> object:
        return self.one("SELECT state FROM dag_run WHERE dag_id = :d", d=dag_id)


@pytest.fixture
def cluster(db_url: str) -> Iterator[Cluster]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-workers-"))
    (path / "dags").mkdir()
    env = env_for(db_url, path, path / "dags", **FAST)
    c = Cluster(db_url=db_url, dir=path, env=env, procs=[])
    yield c
    for p in reversed(c.procs):
        p.stop()
    shutil.rmtree(path, ignore_errors=True)


def add_dag(c: Cluster, name: str, source: str) -> None:
    (c.dir / "dags" / f"{name}.py").write_text(textwrap.dedent(source))


def ledger_entries(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


LEDGER_TASK = """
    import json, os, time
    from datetime import datetime, timedelta
    from tradewind import DAG, task

    LEDGER = {ledger!r}

    with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        @task(retries=1, retry_delay=timedelta(seconds=0))
        def slow(ti=None):
            entry = {{"try": ti.try_number, "pid": os.getpid(), "start": time.time()}}
            with open(LEDGER, "a") as f:
                f.write(json.dumps(entry) + "\\n")
            time.sleep({seconds})
            entry["end"] = time.time()
            with open(LEDGER, "a") as f:
                f.write(json.dumps(entry) + "\\n")
        slow()
"""


def assert_no_overlap(entries: list[dict[str, object]]) -> None:
    """From the tasks' own point of view: no try started before an earlier try had ended
    (a try that never wrote an end was killed; its end is bounded by the next start)."""
    starts = sorted((e for e in entries if "end" not in e), key=lambda e: float(e["start"]))  # type: ignore[arg-type]
    ends = {(e["try"], e["pid"]): float(e["end"]) for e in entries if "end" in e}  # type: ignore[arg-type]
    for earlier, later in itertools.pairwise(starts):
        end = ends.get((earlier["try"], earlier["pid"]))
        if end is not None:
            assert end <= float(later["start"]), (
                f"try {earlier['try']} overlapped try {later['try']}"
            )  # type: ignore[arg-type]


def test_queue_routing_and_xcom_across_two_workers(cluster: Cluster) -> None:
    add_dag(
        cluster,
        "xcom_two",
        """
        from datetime import datetime
        from tradewind import DAG, task

        with DAG("xcom_two", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
            @task(queue="alpha")
            def produce():
                return {"n": 21}

            @task(queue="beta")
            def double(value):
                return value["n"] * 2

            @task(queue="alpha")
            def check(total):
                assert total == 42, total

            check(double(produce()))
    """,
    )
    s = start_scheduler(cluster.env, cluster.dir, "s1")
    cluster.procs.append(s)
    addr = f"127.0.0.1:{s.ports['grpc']}"
    cluster.procs.append(start_worker(cluster.env, cluster.dir, "wa", addr, "--queues", "alpha"))
    cluster.procs.append(start_worker(cluster.env, cluster.dir, "wb", addr, "--queues", "beta"))
    cluster.trigger("xcom_two")
    wait_until(
        lambda: cluster.run_state("xcom_two") in ("success", "failed"), 60, "the run to finish"
    )
    assert cluster.run_state("xcom_two") == "success", cluster.sql(
        "SELECT task_id, state, reason FROM task_instance"
    )
    placed = dict(
        cluster.sql(
            "SELECT a.task_id, w.name FROM task_attempt a JOIN worker w ON w.id = a.worker WHERE a.state = 'success'"
        )
    )
    assert placed == {"produce": "wa", "double": "wb", "check": "wa"}
    assert (
        cluster.one("SELECT value FROM xcom WHERE task_id = 'double' AND key = 'return_value'")
        == "42"
    )


def test_a_chain_hops_by_eager_dispatch(cluster: Cluster) -> None:
    """With scheduler.eager_dispatch on, each success report hands its worker the next task of
    the chain: every task after the first is queued and dispatched by a report, in one statement
    (so at the same instant), and the run ends as the usual path would end it."""
    add_dag(
        cluster,
        "eager_chain",
        """
        from datetime import datetime
        from tradewind import DAG
        from tradewind.operators import BashOperator

        with DAG("eager_chain", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
            ops = [BashOperator(task_id=f"t{i}", bash_command="true") for i in range(5)]
            for up, down in zip(ops, ops[1:]):
                up >> down
    """,
    )
    env = {**cluster.env, "TRADEWIND__SCHEDULER__EAGER_DISPATCH": "true"}
    s = start_scheduler(env, cluster.dir, "s1")
    cluster.procs.append(s)
    cluster.procs.append(start_worker(env, cluster.dir, "w1", f"127.0.0.1:{s.ports['grpc']}"))
    cluster.trigger("eager_chain")
    wait_until(
        lambda: cluster.run_state("eager_chain") in ("success", "failed"), 60, "the run to finish"
    )
    rows = cluster.sql(
        "SELECT task_id, state, queued_at = dispatched_at FROM task_attempt ORDER BY task_id"
    )
    assert cluster.run_state("eager_chain") == "success", rows
    assert [(t, state) for t, state, _ in rows] == [(f"t{i}", "success") for i in range(5)]
    assert [t for t, _, eager in rows if eager] == ["t1", "t2", "t3", "t4"], rows


def test_worker_killed_mid_attempt_is_retried_on_another_worker(cluster: Cluster) -> None:
    ledger = cluster.dir / "ledger.jsonl"
    add_dag(cluster, "victim", LEDGER_TASK.format(ledger=str(ledger), dag_id="victim", seconds=30))
    s = start_scheduler(cluster.env, cluster.dir, "s1")
    cluster.procs.append(s)
    addr = f"127.0.0.1:{s.ports['grpc']}"
    w1 = start_worker(cluster.env, cluster.dir, "w1", addr)
    cluster.procs.append(w1)
    cluster.trigger("victim")
    wait_until(lambda: ledger_entries(ledger), 60, "the first try to start on w1")
    w2 = start_worker(cluster.env, cluster.dir, "w2", addr)
    cluster.procs.append(w2)
    w1.signal(signal.SIGKILL)
    w1.popen.wait(10)
    wait_until(lambda: len(ledger_entries(ledger)) >= 2, 60, "the retry to start elsewhere")
    attempts = cluster.sql(
        "SELECT a.try_number, a.state, w.name FROM task_attempt a LEFT JOIN worker w ON w.id = a.worker "
        "ORDER BY a.id"
    )
    assert attempts[0][1:] == ("zombie", "w1"), attempts
    assert attempts[-1][0] == 2
    assert attempts[-1][2] == "w2", attempts
    assert_no_overlap(ledger_entries(ledger))


def test_worker_cut_off_kills_its_attempt_before_the_retry_starts(cluster: Cluster) -> None:
    ledger = cluster.dir / "ledger.jsonl"
    add_dag(cluster, "cutoff", LEDGER_TASK.format(ledger=str(ledger), dag_id="cutoff", seconds=30))
    s = start_scheduler(cluster.env, cluster.dir, "s1")
    cluster.procs.append(s)
    proxy = CuttableProxy(s.ports["grpc"])
    try:
        w1 = start_worker(cluster.env, cluster.dir, "w1", f"127.0.0.1:{proxy.port}")
        cluster.procs.append(w1)
        cluster.trigger("cutoff")
        first = wait_until(lambda: ledger_entries(ledger), 60, "the first try to start")
        cluster.procs.append(
            start_worker(cluster.env, cluster.dir, "w2", f"127.0.0.1:{s.ports['grpc']}")
        )
        proxy.cut()  # w1 keeps running but can no longer reach the scheduler
        wait_until(lambda: len(ledger_entries(ledger)) >= 2, 60, "the retry to start on w2")
        pid = int(first[0]["pid"])  # type: ignore[arg-type]
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
        assert w1.popen.poll() is None  # the agent itself stays up
    finally:
        proxy.close()
    entries = ledger_entries(ledger)
    retry = next(e for e in entries if e["try"] == 2)
    # The lease killed try 1: its process is gone before try 2 started (checked from the log
    # the worker wrote when it killed it, and the ledger has no end for try 1).
    assert not any(e["try"] == 1 and "end" in e for e in entries)
    assert retry is not None
    assert "lease" in w1.log()


def test_clearing_a_running_task_kills_it_on_the_worker(cluster: Cluster) -> None:
    ledger = cluster.dir / "ledger.jsonl"
    add_dag(
        cluster, "cleared", LEDGER_TASK.format(ledger=str(ledger), dag_id="cleared", seconds=30)
    )
    s = start_scheduler(cluster.env, cluster.dir, "s1")
    cluster.procs.append(s)
    w = start_worker(cluster.env, cluster.dir, "w1", f"127.0.0.1:{s.ports['grpc']}")
    cluster.procs.append(w)
    cluster.trigger("cleared")
    first = wait_until(lambda: ledger_entries(ledger), 60, "the task to start")
    pid = int(first[0]["pid"])  # type: ignore[arg-type]
    from tradewind_cluster.store.clearing import clear_task_instances, find_clear_targets

    db = Database(cluster.db_url)
    try:

        def clear(conn: sa.Connection) -> object:
            targets = find_clear_targets(conn, "cleared", task_ids=["slow"])
            return clear_task_instances(
                conn,
                targets,
                retries={"slow": 1},
                now=datetime.now(UTC),
                restart_after=timedelta(seconds=3),
            )

        db.transaction(clear)
    finally:
        db.dispose()
    wait_until(
        lambda: not Path(f"/proc/{pid}").exists(), 15, "the worker to kill the cleared attempt"
    )
    # the heartbeat reply names it unwanted, or (a try whose STARTED was still held) the
    # scheduler refuses its STARTED report: either way the worker logs why it killed it
    wait_until(
        lambda: any(s in w.log() for s in ("no longer wanted", "unwanted", "refused the report")),
        5,
        "the kill to be logged",
    )


def test_database_outage_keeps_running_tasks_and_loses_nothing(
    cluster: Cluster, pg_admin_url: str
) -> None:
    """DESIGN §5: during an outage longer than the worker lease and the zombie threshold, running
    tasks keep running, and their reports land when the store is back."""
    ledger = cluster.dir / "ledger.jsonl"
    add_dag(cluster, "outage", LEDGER_TASK.format(ledger=str(ledger), dag_id="outage", seconds=10))
    s = start_scheduler(cluster.env, cluster.dir, "s1")
    cluster.procs.append(s)
    cluster.procs.append(
        start_worker(cluster.env, cluster.dir, "w1", f"127.0.0.1:{s.ports['grpc']}")
    )
    cluster.trigger("outage")
    wait_until(lambda: ledger_entries(ledger), 60, "the task to start")
    name = sa.engine.make_url(cluster.db_url).database
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                )
            )
        import time

        time.sleep(
            6
        )  # the outage itself: longer than the lease (2 s) and the zombie threshold (4 s)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    wait_until(
        lambda: cluster.run_state("outage") in ("success", "failed"), 60, "the run to finish"
    )
    assert cluster.run_state("outage") == "success", cluster.sql(
        "SELECT state, error FROM task_attempt"
    )
    entries = ledger_entries(ledger)
    assert [e["try"] for e in entries] == [1, 1], (
        entries
    )  # one try, started and ended: never killed
    assert cluster.sql("SELECT try_number, state FROM task_attempt") == [(1, "success")]
