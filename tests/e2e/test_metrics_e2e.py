"""Metrics from real processes: a scheduler and a worker agent run a scheduled DAG (one task
succeeds, one fails, a cleanup runs after both) while StatsD lines go to a UDP socket this test
binds. The lines carry Airflow's names with sensible values, and /metrics on the scheduler and on
the worker carries the same story as labelled Prometheus series."""

from __future__ import annotations

import shutil
import socket
import tempfile
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Proc, env_for, start_scheduler, start_worker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = "tw"
DAG_ID = "measured"
DEFAULT_POOL_SLOTS = 128
DAG_FILE = f"""
import time
from datetime import datetime
from tradewind import DAG, PythonOperator

def _boom():
    raise ValueError("boom")

with DAG("{DAG_ID}", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False) as dag:
    # PythonOperator, not @task: Airflow names these metrics after the operator, and "@task"
    # is not a valid StatsD name (Airflow drops it, and so do we; Prometheus keeps the label)
    ok = PythonOperator(task_id="ok", python_callable=lambda: time.sleep(0.5))
    boom = PythonOperator(task_id="boom", python_callable=_boom)
    cleanup = PythonOperator(task_id="cleanup", python_callable=lambda: None, trigger_rule="all_done")
    [ok, boom] >> cleanup
"""


@dataclass
class StatsdServer:
    """Collects StatsD lines sent to 127.0.0.1:port: (name without prefix, value, type)."""

    sock: socket.socket
    lines: list[tuple[str, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                packet = self.sock.recv(65535)
            except OSError:  # closed at teardown
                return
            for line in packet.decode().splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                with self.lock:
                    self.lines.append((name.removeprefix(f"{PREFIX}."), float(value), kind))

    def values(self, name: str, kind: str) -> list[float]:
        with self.lock:
            return [v for n, v, k in self.lines if n == name and k == kind]

    def names(self) -> set[str]:
        with self.lock:
            return {n for n, _, _ in self.lines}


@pytest.fixture
def statsd() -> Iterator[StatsdServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    server = StatsdServer(sock)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    sock.close()
    thread.join(5)


@dataclass
class Cluster:
    db_url: str
    scheduler: Proc
    worker: Proc

    def one(self, query: str) -> object:
        engine = sa.create_engine(self.db_url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                return conn.execute(sa.text(query)).scalar()
        finally:
            engine.dispose()


@pytest.fixture
def cluster(db_url: str, statsd: StatsdServer) -> Iterator[Cluster]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-metrics-"))
    (path / "dags").mkdir()
    (path / "dags" / f"{DAG_ID}.py").write_text(textwrap.dedent(DAG_FILE))
    env = env_for(
        db_url,
        path,
        path / "dags",
        TRADEWIND__SCHEDULER__EXECUTOR="workers",
        TRADEWIND__SCHEDULER__PARSE_INTERVAL_S="2",
        TRADEWIND__WORKER__HEARTBEAT_INTERVAL_S="0.5",
        TRADEWIND__WORKER__SLOTS="4",
        TRADEWIND__METRICS__STATSD_ON="true",
        TRADEWIND__METRICS__STATSD_HOST="127.0.0.1",
        TRADEWIND__METRICS__STATSD_PORT=str(statsd.port),
        TRADEWIND__METRICS__STATSD_PREFIX=PREFIX,
        TRADEWIND__METRICS__BIND_HOST="127.0.0.1",
        TRADEWIND__HEALTH__BIND_HOST="127.0.0.1",
    )
    procs: list[Proc] = []
    try:
        procs.append(start_scheduler(env, path, "s1"))
        addr = f"127.0.0.1:{procs[0].ports['grpc']}"
        procs.append(start_worker(env, path, "w1", addr))
        yield Cluster(db_url=db_url, scheduler=procs[0], worker=procs[1])
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(path, ignore_errors=True)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(proc: Proc) -> Samples:
    """Every sample of /metrics (served with /health by default), by name and labels."""
    url = f"http://127.0.0.1:{proc.ports['health']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, (
        f"{name}{labels} not exported; have {sorted(n for n, _ in samples if n.startswith(name))}"
    )
    return samples[key]


def run_finished(c: Cluster) -> object:
    return c.one(f"SELECT state FROM dag_run WHERE dag_id = '{DAG_ID}' AND end_date IS NOT NULL")


def test_statsd_and_prometheus_tell_the_story_of_a_real_run(
    cluster: Cluster, statsd: StatsdServer
) -> None:
    assert wait_until(lambda: run_finished(cluster), 90, "the run to finish") == "success"
    per_task = f"dag.{DAG_ID}"
    wanted = {
        "scheduler_heartbeat",
        "scheduler.scheduler_loop_duration",
        "ti_successes",
        "ti_failures",
        f"dagrun.duration.success.{DAG_ID}",
        "pool.open_slots.default_pool",
        "task.queued_duration",
        f"{per_task}.ok.queued_duration",
        "task.scheduled_duration",
        f"{per_task}.ok.duration",
        "scheduler.dispatch.latency",
        f"dagrun.{DAG_ID}.first_task_scheduling_delay",
        f"dagrun.schedule_delay.{DAG_ID}",
        f"ti.finish.{DAG_ID}.boom.failed",
        "operator_failures_PythonOperator",
        "operator_successes_PythonOperator",
        "task_instance_created_PythonOperator",
        "executor.open_slots",
        "queue.queued_tasks.default",
        "worker_heartbeat",
        "worker.open_slots",
        "dagbag_size",
        f"dag_processing.last_duration.{DAG_ID}",
    }
    wait_until(lambda: wanted <= statsd.names(), 30, f"StatsD lines {wanted - statsd.names()}")

    # Counters arrive as 1|c; timers in milliseconds, positive and of the right size.
    assert statsd.values("ti_successes", "c") == [1.0, 1.0]  # ok and cleanup
    assert statsd.values("ti_failures", "c") == [1.0]  # boom, no retries
    assert set(statsd.values("scheduler_heartbeat", "c")) == {1.0}
    [duration] = statsd.values(f"dagrun.duration.success.{DAG_ID}", "ms")
    assert 500 < duration < 90_000  # ok sleeps 500 ms, then cleanup runs
    # From the start report to the final one as the scheduler received them (the try's
    # start_date to end_date), so a little under the sleep is possible, never far from it.
    [ok_ran] = statsd.values(f"{per_task}.ok.duration", "ms")
    assert 300 < ok_ran < duration
    for name in ("task.queued_duration", "scheduler.dispatch.latency", "task.scheduled_duration"):
        values = statsd.values(name, "ms")
        assert len(values) == 3, (name, values)
        assert all(0 < v < 60_000 for v in values), (name, values)
    assert all(v > 0 for v in statsd.values("scheduler.scheduler_loop_duration", "ms"))
    # The run was due at the end of yesterday's interval; it started only now (hours later).
    [delay] = statsd.values(f"dagrun.{DAG_ID}.first_task_scheduling_delay", "ms")
    [schedule_delay] = statsd.values(f"dagrun.schedule_delay.{DAG_ID}", "ms")
    assert 0 < schedule_delay < delay
    assert statsd.values("task_instance_created_PythonOperator", "c") == [3.0]
    assert all(
        0 <= v <= DEFAULT_POOL_SLOTS for v in statsd.values("pool.open_slots.default_pool", "g")
    )
    # Counted when the folder is listed, before that pass parses: 0 first, then the DAG.
    wait_until(lambda: statsd.values("dagbag_size", "g")[-1] == 1.0, 15, "dagbag_size 1")
    # Once the run is over and the next pool sweep has reported, every slot is open again.
    wait_until(
        lambda: statsd.values("pool.open_slots.default_pool", "g")[-1] == DEFAULT_POOL_SLOTS,
        15,
        "pool.open_slots.default_pool back to every slot",
    )

    s = scrape(cluster.scheduler)
    dag = {"dag_id": DAG_ID}
    assert sample(s, "tradewind_ti_successes_total", **dag, task_id="ok") == 1
    assert sample(s, "tradewind_ti_successes_total", **dag, task_id="cleanup") == 1
    assert sample(s, "tradewind_ti_failures_total", **dag, task_id="boom") == 1
    assert (
        sample(
            s, "tradewind_operator_failures_total", **dag, task_id="boom", operator="PythonOperator"
        )
        == 1
    )
    assert sample(s, "tradewind_ti_finish_total", **dag, task_id="boom", state="failed") == 1
    assert sample(s, "tradewind_scheduler_heartbeat_total") > 0
    assert sample(s, "tradewind_scheduler_dagruns_created_total", **dag) == 1
    assert sample(s, "tradewind_dagrun_duration_count", **dag, state="success") == 1
    assert sample(s, "tradewind_dagrun_duration_bucket", **dag, state="success", le="+Inf") == 1
    assert sample(s, "tradewind_dagrun_duration_bucket", **dag, state="success", le="0.1") == 0
    assert sample(s, "tradewind_task_queued_duration_count", **dag, task_id="ok") == 1
    assert sample(s, "tradewind_task_duration_sum", **dag, task_id="ok") > 0.3
    assert sample(s, "tradewind_scheduler_dispatch_latency_count", queue="default") == 3
    assert sample(s, "tradewind_pool_open_slots", pool="default_pool") == DEFAULT_POOL_SLOTS
    assert sample(s, "tradewind_pool_running_slots", pool="default_pool") == 0
    assert sample(s, "tradewind_scheduler_scheduler_loop_duration_count") > 0
    assert sample(s, "tradewind_dagbag_size") == 1
    assert sample(s, "tradewind_scheduler_members_alive") == 1
    assert sample(s, "tradewind_scheduler_workers_alive") == 1

    w = scrape(cluster.worker)
    assert sample(w, "tradewind_worker_heartbeat_total") > 0
    assert sample(w, "tradewind_worker_running_tasks") == 0
    assert sample(w, "tradewind_worker_open_slots") == 4
    assert not any(name.startswith("tradewind_ti_") for name, _ in w)  # the scheduler sends those
