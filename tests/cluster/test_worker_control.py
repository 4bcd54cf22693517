"""The real worker under the scheduler's control and against bad callers: execution timeouts,
undead attempts killed on the heartbeat's word, refused reports, slots and queues, idempotent
Execute, Cancel, authentication and malformed or oversized requests."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from tests.support.fake_scheduler import (
    FakeScheduler,
    WorkerClient,
    execute_request,
    start_worker,
    task_entry,
    wait_registered,
)
from tests.support.processes import Proc
from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind_cluster.worker.executor import UNWANTED_REASON
from tradewind_proto.v1 import common_pb2, scheduler_pb2, worker_pb2

pytestmark = pytest.mark.cluster

FAILED = scheduler_pb2.ATTEMPT_EVENT_FAILED
SUCCESS = scheduler_pb2.ATTEMPT_EVENT_SUCCESS
DECLINED = scheduler_pb2.ATTEMPT_EVENT_DECLINED
MAX_MESSAGE = 256 * 1024


@dataclass
class Cluster:
    fake: FakeScheduler
    worker: Proc
    client: WorkerClient
    home: Path
    next_ti: int = 1000

    def ti(self) -> int:
        self.next_ti += 1
        return self.next_ti

    def execute(
        self, command: str, *, ti: int | None = None, token: int = 1, **kwargs: object
    ) -> tuple[int, worker_pb2.ExecuteReply]:
        ti = self.ti() if ti is None else ti
        timeout = kwargs.pop("execution_timeout", None)
        if isinstance(timeout, timedelta):
            kwargs["timeout_s"] = timeout.total_seconds()  # as the scheduler sends it
        with DAG("ctl", schedule=None) as dag:
            BashOperator(task_id=f"t{ti}", bash_command=command, execution_timeout=timeout)  # type: ignore[arg-type]
        request = execute_request(
            ti_id=ti, token=token, dag_id="ctl", task_id=f"t{ti}",
            task_json=task_entry(dag, f"t{ti}"), **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        return ti, self.client.execute(request)

    def request(self, command: str, ti: int, queue: str = "default") -> worker_pb2.ExecuteRequest:
        with DAG("ctl", schedule=None) as dag:
            BashOperator(task_id=f"t{ti}", bash_command=command)
        return execute_request(
            ti_id=ti, dag_id="ctl", task_id=f"t{ti}", task_json=task_entry(dag, f"t{ti}"),
            queue=queue,
        )  # fmt: skip

    def running(self) -> set[int]:
        return {ref.ti_id for ref in self.client.status().running}

    def log(self, ti: int) -> str:
        path = self.home / "logs" / "dag_id=ctl"
        return "".join(p.read_text() for p in path.rglob(f"task_id=t{ti}/*.log"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("worker-control")
    fake = FakeScheduler()
    port = fake.start()
    worker = start_worker(
        tmp,
        f"127.0.0.1:{port}",
        "--slots",
        "2",
        "--queues",
        "default,spark",
        env={
            "TRADEWIND__RPC__MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
            "TRADEWIND__CORE__MAX_XCOM_BYTES": str(MAX_MESSAGE // 4),  # returned values fit
        },
    )
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(fake)
        yield Cluster(fake, worker, client, tmp / "home")
    finally:
        client.close()
        assert worker.stop() == 0, worker.log()
        fake.stop()


def wait_idle(cluster: Cluster) -> None:
    cluster.fake.wait(lambda: not cluster.running(), 15, "the worker to be idle")


def test_execution_timeout_kills_the_attempt(cluster: Cluster) -> None:
    start = time.monotonic()
    ti, reply = cluster.execute("sleep 30", execution_timeout=timedelta(seconds=1))
    assert reply.accepted
    report = cluster.fake.final_report(ti)
    assert time.monotonic() - start < 5
    assert report.event == FAILED
    assert report.error.startswith("Task timed out: execution_timeout of 1s exceeded")
    assert ti not in cluster.running()
    assert "Task timed out" in cluster.log(ti)


def test_a_bash_attempt_gets_the_sigterm_that_ends_it_and_can_trap_it(cluster: Cluster) -> None:
    # bash started straight from the fork server must not inherit an ignored SIGTERM
    command = "trap 'echo got-term; exit 7' TERM; sleep 30 & wait"
    ti, reply = cluster.execute(command, execution_timeout=timedelta(seconds=1))
    assert reply.accepted
    report = cluster.fake.final_report(ti)
    assert report.event == FAILED
    assert report.exit_code == 7  # its trap ran: SIGTERM arrived before the SIGKILL
    assert "got-term" in cluster.log(ti)


def test_unwanted_attempts_are_killed_and_not_reported(cluster: Cluster) -> None:
    ti, reply = cluster.execute("sleep 30")
    assert reply.accepted
    cluster.fake.wait(lambda: cluster.fake.reports_for(ti), 10, "the attempt to start")
    with cluster.fake.lock:
        cluster.fake.unwanted.add((ti, 1))
    cluster.fake.wait(lambda: ti not in cluster.running(), 10, "the undead attempt to die")
    assert UNWANTED_REASON in cluster.log(ti)
    shipped = cluster.fake.wait(
        lambda: UNWANTED_REASON in cluster.fake.log_text(ti), 10, "the kill line to be shipped"
    )
    assert shipped
    events = [r.event for r in cluster.fake.reports_for(ti)]
    assert events == [scheduler_pb2.ATTEMPT_EVENT_STARTED]


def test_a_refused_report_kills_the_attempt(cluster: Cluster) -> None:
    ti = cluster.ti()
    with cluster.fake.lock:
        cluster.fake.refuse[(ti, 1)] = "stale token: superseded by token 2"
    _, reply = cluster.execute("sleep 30", ti=ti)
    assert reply.accepted
    cluster.fake.wait(lambda: ti not in cluster.running(), 10, "the refused attempt to die")
    assert "killed: the scheduler refused this attempt's report (stale token" in cluster.log(ti)


def test_slots_are_never_exceeded_and_queues_are_respected(
    cluster: Cluster, tmp_path: Path
) -> None:
    wait_idle(cluster)
    marks = tmp_path / "marks"
    command = (
        f'echo "$(date +%s.%N) start" >> {marks}; sleep 0.4; echo "$(date +%s.%N) end" >> {marks}'
    )
    replies: list[worker_pb2.ExecuteReply] = []
    lock = threading.Lock()

    def send() -> None:
        _, reply = cluster.execute(command)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in replies if r.accepted]
    assert len(accepted) == 2
    assert {r.reason for r in replies if not r.accepted} == {"no free slot (2 of 2 in use)"}
    _, wrong = cluster.execute("true", queue="gpu")
    assert not wrong.accepted
    assert "queue 'gpu' is not served" in wrong.reason
    wait_idle(cluster)
    ti, spark = cluster.execute("true", queue="spark")
    assert spark.accepted
    assert cluster.fake.final_report(ti).event == SUCCESS
    depth, peak = 0, 0
    for line in sorted(marks.read_text().split("\n")[:-1]):
        depth += 1 if line.endswith("start") else -1
        peak = max(peak, depth)
    assert peak <= 2


def test_execute_is_idempotent_for_the_same_token(cluster: Cluster, tmp_path: Path) -> None:
    wait_idle(cluster)
    marks = tmp_path / "ran"
    ti = cluster.ti()
    first = cluster.execute(f"echo ran >> {marks}; sleep 0.3", ti=ti)[1]
    second = cluster.execute(f"echo ran >> {marks}; sleep 0.3", ti=ti)[1]
    assert first.accepted
    assert second.accepted
    assert second.reason == "already running on this worker"
    assert cluster.fake.final_report(ti).event == SUCCESS
    third = cluster.execute(f"echo ran >> {marks}", ti=ti)[1]
    assert third.accepted
    assert third.reason == "already ran on this worker"
    other = cluster.execute("true", ti=ti, token=2)[1]
    assert other.accepted  # a new token of a finished attempt is a new attempt
    assert cluster.fake.final_report(ti).event == SUCCESS
    wait_idle(cluster)
    assert marks.read_text() == "ran\n"
    started = [r for r in cluster.fake.reports_for(ti) if r.attempt.token == 1 and r.event == 1]
    assert len(started) == 1


def test_cancel_kills_a_running_attempt(cluster: Cluster) -> None:
    wait_idle(cluster)
    ti, reply = cluster.execute("sleep 30")
    assert reply.accepted
    cluster.fake.wait(lambda: cluster.fake.reports_for(ti), 10, "the attempt to start")
    ref = common_pb2.AttemptRef(ti_id=ti, token=1)
    found = cluster.client.stub.Cancel(
        worker_pb2.CancelRequest(attempt=ref, reason="marked failed"),
        timeout=5,
        metadata=cluster.client.metadata,
    )
    assert found.found
    report = cluster.fake.final_report(ti)
    assert report.error.startswith("killed: cancelled by the scheduler (marked failed)")


def test_status_reports_identity_and_slots(cluster: Cluster) -> None:
    wait_idle(cluster)
    status = cluster.client.status()
    assert status.worker_id.startswith("w1-")
    assert status.slots == 2
    assert status.free_slots == 2
    assert not status.draining


def test_a_task_whose_spec_does_not_decode_fails_with_the_decoders_error(
    cluster: Cluster,
) -> None:
    """The agent takes an attempt on the task's kind and queue alone; a spec that does not
    decode is refused nowhere earlier than the task process, which says why it failed."""
    for extra, error in (
        ({"trigger_rule": "sometimes"}, "task_json is not a serialized task"),
        ({}, "bash_command must be a string, got NoneType"),
    ):
        ti = cluster.ti()
        broken = {"task_id": f"t{ti}", "operator": "BashOperator", "kind": "bash", **extra}
        request = execute_request(
            ti_id=ti, dag_id="ctl", task_id=f"t{ti}", task_json=json.dumps(broken)
        )
        assert cluster.client.execute(request).accepted
        report = cluster.fake.final_report(ti)
        assert report.event == FAILED
        assert error in report.error


def test_unauthenticated_calls_are_refused(cluster: Cluster) -> None:
    for token in (None, "wrong-token"):
        anonymous = WorkerClient(cluster.worker.ports["grpc"], token=token)
        try:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.status()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            anonymous.close()
    assert "refused unauthenticated call to /tradewind.v1.Worker/Status" in cluster.worker.log()


def test_oversized_and_malformed_requests_are_refused_cleanly(cluster: Cluster) -> None:
    big = execute_request(
        ti_id=cluster.ti(), dag_id="ctl", task_id="t", task_json="x" * (MAX_MESSAGE + 10)
    )
    with pytest.raises(grpc.RpcError) as err:
        cluster.client.execute(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad_json = execute_request(ti_id=cluster.ti(), dag_id="ctl", task_id="t", task_json="{")
    reply = cluster.client.execute(bad_json)
    assert not reply.accepted
    assert reply.reason.startswith("bad request: task_json is not valid")
    entry = json.dumps({"task_id": "t", "operator": "BashOperator", "kind": "bash"})
    no_id = execute_request(ti_id=0, dag_id="ctl", task_id="t", task_json=entry)
    reply = cluster.client.execute(no_id)
    assert reply.reason == "bad request: attempt.ti_id and attempt.token must be positive"
    empty = json.dumps({"task_id": "t", "operator": "EmptyOperator", "kind": "empty"})
    reply = cluster.client.execute(
        execute_request(ti_id=cluster.ti(), dag_id="ctl", task_id="t", task_json=empty)
    )
    assert "needs no worker" in reply.reason
    assert cluster.client.status().slots == 2  # still serving
    assert cluster.worker.popen.poll() is None
    assert os.path.exists(cluster.home)


def test_an_attempt_handed_in_a_reply_runs_or_is_declined(cluster: Cluster) -> None:
    """Eager dispatch against the real worker: its SUCCESS offers the slot and names the task;
    an attempt the reply hands it runs as an Execute would; one it cannot take (a queue it does
    not serve) is reported DECLINED."""
    wait_idle(cluster)
    first, handed, refused = cluster.ti(), cluster.ti(), cluster.ti()
    with cluster.fake.lock:
        cluster.fake.hand[(first, 1)] = [cluster.request("true", handed)]
        cluster.fake.hand[(handed, 1)] = [cluster.request("true", refused, queue="gpu")]
    assert cluster.execute("true", ti=first)[1].accepted
    report = cluster.fake.final_report(first)
    assert (report.event, report.offers_slot) == (SUCCESS, True)
    assert (report.dag_id, report.task_id) == ("ctl", f"t{first}")
    assert cluster.fake.final_report(handed).event == SUCCESS  # ran without an Execute call
    declined = cluster.fake.wait(
        lambda: [r for r in cluster.fake.reports_for(refused) if r.event == DECLINED],
        15,
        "the refused attempt to be declined",
    )
    assert "queue 'gpu' is not served" in declined[0].error
    wait_idle(cluster)
    # The same request once more, as the reply to a success sent twice carries it: the worker
    # knows the attempt (it ran it) and neither runs it again nor declines it.
    later = cluster.ti()
    with cluster.fake.lock:
        cluster.fake.hand[(later, 1)] = [cluster.request("true", handed)]
    assert cluster.execute("true", ti=later)[1].accepted
    assert cluster.fake.final_report(later).offers_slot
    # A second run of `true` would report within milliseconds, as would a DECLINED: watch for
    # two seconds that neither comes.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        events = [r.event for r in cluster.fake.reports_for(handed)]
        assert events.count(SUCCESS) == 1
        assert DECLINED not in events
        time.sleep(0.05)
    wait_idle(cluster)
