"""The worker process's life: the lease that kills attempts when no scheduler answers (within
lease + margin), health, registering again when a scheduler forgets it, failing over between
schedulers, draining on SIGTERM, and holding no database code at all."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.fake_scheduler import (
    FakeScheduler,
    WorkerClient,
    execute_request,
    start_worker,
    task_entry,
    wait_registered,
)
from tests.support.processes import http_json
from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind_cluster.parsing.runner import parse_file
from tradewind_proto.v1 import scheduler_pb2

pytestmark = pytest.mark.cluster

LEASE_S, MARGIN_S = 1.5, 1.0  # as start_worker configures the worker
FAILED = scheduler_pb2.ATTEMPT_EVENT_FAILED
SUCCESS = scheduler_pb2.ATTEMPT_EVENT_SUCCESS

TICKER = """
import time
from tradewind import DAG, PythonOperator

def tick(path):
    while True:
        with open(path, "a") as f:
            f.write(repr(time.time()) + "\\n")
        time.sleep(0.01)

with DAG("lease", schedule=None) as dag:
    PythonOperator(task_id="tick", python_callable=tick, op_args=["{{ params.path }}"])
"""


def bash_request(ti: int, command: str, **kwargs: object):  # type: ignore[no-untyped-def]
    with DAG("life", schedule=None) as dag:
        BashOperator(task_id=f"t{ti}", bash_command=command)
    return execute_request(
        ti_id=ti,
        dag_id="life",
        task_id=f"t{ti}",
        task_json=task_entry(dag, f"t{ti}"),
        **kwargs,  # type: ignore[arg-type]
    )


def test_lease_expiry_kills_attempts_within_lease_and_margin(tmp_path: Path) -> None:
    fake = FakeScheduler()
    port = fake.start()
    worker = start_worker(tmp_path, f"127.0.0.1:{port}")
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(fake)
        assert http_json(worker.ports["health"])[0] == 200
        fake.wait(client.serving, 5, "grpc.health.v1 to say SERVING")
        dag_file = tmp_path / "home" / "dags" / "lease.py"
        dag_file.write_text(TICKER)
        parsed = parse_file(str(dag_file))
        entry = json.dumps(parsed.dags[0]["dag"]["tasks"][0])
        ticks = tmp_path / "ticks"
        request = execute_request(
            ti_id=1, dag_id="lease", task_id="tick", task_json=entry, fileloc=str(dag_file),
            file_hash=parsed.file_hash, conf={"path": str(ticks)},
        )  # fmt: skip
        assert client.execute(request).accepted
        fake.wait(lambda: ticks.exists(), 10, "the task to start ticking")
        with fake.lock:
            fake.silent = True
        fake.wait(lambda: not client.status().running, 10, "the lease to kill the attempt")
        with fake.lock:
            last_answer = max(fake.answered_at)
        time.sleep(0.1)  # anything still alive would tick again within 10 ms
        last_tick = float(ticks.read_text().split()[-1])
        assert last_tick < last_answer + LEASE_S + MARGIN_S
        assert last_tick > last_answer + LEASE_S - 0.5  # not killed before the lease ran out
        status, body = http_json(worker.ports["health"])
        assert status == 503
        assert "lease failed: expired: no heartbeat answered for 1.5s" in body["reasons"]
        fake.wait(lambda: not client.serving(), 5, "grpc.health.v1 to say NOT_SERVING")
        refused = client.execute(bash_request(2, "true"))
        assert not refused.accepted
        assert "holds no lease" in refused.reason
        with fake.lock:
            fake.silent = False
        report = fake.final_report(1)
        assert report.event == FAILED
        assert report.error.startswith("worker lease expired")
        fake.wait(lambda: http_json(worker.ports["health"])[0] == 200, 10, "health to recover")
        assert client.execute(bash_request(3, "true")).accepted
        assert fake.final_report(3).event == SUCCESS
    finally:
        client.close()
        assert worker.stop() == 0, worker.log()
        fake.stop()


def test_a_forgetful_scheduler_gets_a_fresh_registration(tmp_path: Path) -> None:
    fake = FakeScheduler()
    port = fake.start()
    quick = {"TRADEWIND__WORKER__SHUTDOWN_GRACE_S": "0.2"}
    worker = start_worker(tmp_path, f"127.0.0.1:{port}", env=quick)
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(fake)
        assert client.execute(bash_request(7, "sleep 30")).accepted
        fake.wait(lambda: fake.reports_for(7), 10, "the attempt to start")
        with fake.lock:
            fake.forget_worker = True
        again = fake.wait(lambda: len(fake.registrations) >= 2, 10, "a second registration")
        assert again
        with fake.lock:
            second = fake.registrations[1]
        assert second.worker_id == fake.registrations[0].worker_id
        assert [(r.ti_id, r.token) for r in second.running] == [(7, 1)]
        assert list(second.queues) == ["default"]
        assert second.slots == 8
    finally:
        client.close()
        assert worker.stop() == 0, worker.log()
        fake.stop()


def test_failover_between_schedulers(tmp_path: Path) -> None:
    first, second = FakeScheduler(), FakeScheduler()
    first_port, second_port = first.start(), second.start()
    dead = FakeScheduler()
    dead_port = dead.start()
    dead.stop()  # a scheduler that is down from the start
    addresses = f"127.0.0.1:{dead_port},127.0.0.1:{first_port},127.0.0.1:{second_port}"
    worker = start_worker(tmp_path, addresses)
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(first)
        first.stop()
        second.wait(lambda: second.heartbeats, 10, "heartbeats to reach the next scheduler")
        assert client.execute(bash_request(9, "echo ok")).accepted
        assert second.final_report(9).event == SUCCESS
    finally:
        client.close()
        assert worker.stop() == 0, worker.log()
        second.stop()


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    fake = FakeScheduler()
    port = fake.start()
    worker = start_worker(
        tmp_path, f"127.0.0.1:{port}", env={"TRADEWIND__WORKER__SHUTDOWN_GRACE_S": "2"}
    )
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(fake)
        assert client.execute(bash_request(1, "sleep 0.8; echo done")).accepted
        assert client.execute(bash_request(2, "sleep 60")).accepted
        fake.wait(lambda: len(fake.reports) >= 2, 10, "both attempts to start")
        stopped_at = time.monotonic()
        worker.signal(signal.SIGTERM)
        fake.wait(lambda: any(h.draining for h in fake.heartbeats), 10, "a draining heartbeat")
        late = client.execute(bash_request(3, "true"))
        assert not late.accepted
        assert late.reason == "worker is draining (shutting down)"
        assert worker.popen.wait(15) == 0, worker.log()
        assert time.monotonic() - stopped_at < 2 + 1 + 3  # grace, kill grace, slack
        assert fake.final_report(1).event == SUCCESS
        killed = fake.final_report(2)
        assert killed.event == FAILED
        assert killed.error.startswith("killed: the worker is shutting down")
    finally:
        client.close()
        worker.stop()
        fake.stop()


def test_a_dead_fork_server_fails_its_attempts_and_is_replaced(tmp_path: Path) -> None:
    fake = FakeScheduler()
    port = fake.start()
    worker = start_worker(tmp_path, f"127.0.0.1:{port}")
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(fake)
        marker = tmp_path / "alive"
        assert client.execute(
            bash_request(1, f"while true; do touch {marker}; sleep 0.05; done")
        ).accepted
        fake.wait(lambda: marker.exists(), 10, "the task to run")
        (server,) = [
            p
            for p in psutil.Process(worker.pid).children()
            if "forkserver" in " ".join(p.cmdline())
        ]
        server.kill()
        report = fake.final_report(1)
        assert report.event == FAILED
        assert report.error == "the worker's fork server died"
        marker.unlink()
        time.sleep(0.2)  # a surviving task would touch the marker again within 50 ms
        assert not marker.exists()
        fake.wait(lambda: client.execute(bash_request(2, "true")).accepted, 15, "a new fork server")
        assert fake.final_report(2).event == SUCCESS
    finally:
        client.close()
        assert worker.stop() == 0, worker.log()
        fake.stop()


def test_the_worker_never_loads_database_code() -> None:
    code = (
        "import sys\n"
        "import tradewind_cluster.cli.worker_cmd, tradewind_cluster.worker.agent\n"
        "import tradewind_cluster.worker.forkserver, tradewind_cluster.worker.runtime\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'psycopg2',"
        " 'alembic') or m.startswith('tradewind_cluster.store'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
