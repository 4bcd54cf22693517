"""The executor with a recording fork server and a hand-moved clock: admission rules, reports in
order, the SIGTERM-then-SIGKILL protocol, execution timeouts and unwanted attempts."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tradewind.spec import TaskKind
from tradewind_cluster.observability import Metrics, RecordingSink
from tradewind_cluster.worker.executor import (
    UNWANTED_REASON,
    AttemptOrder,
    Executor,
    KillKind,
)
from tradewind_cluster.worker.launch import Launch
from tradewind_cluster.worker.options import WorkerOptions
from tradewind_cluster.worker.outcomes import PendingReport
from tradewind_proto.v1 import scheduler_pb2

pytestmark = pytest.mark.cluster


class Spawner:
    def __init__(self) -> None:
        self.spawned: list[str] = []
        self.signals: list[tuple[str, int]] = []

    def spawn(self, launch: Launch) -> None:
        self.spawned.append(launch.key)

    def signal(self, key: str, signum: int) -> None:
        self.signals.append((key, signum))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def order(ti_id: int, token: int = 1, queue: str = "default", timeout: float | None = None):
    return AttemptOrder(
        ti_id=ti_id, token=token, dag_id="d", run_id="r", task_id=f"t{ti_id}", try_number=1,
        logical_date="2024-01-02T00:00:00+00:00", fileloc="", file_hash="", task_json="{}",
        context_json="{}", queue=queue, kind=TaskKind.BASH, execution_timeout_s=timeout,
    )  # fmt: skip


def launch_of(o: AttemptOrder) -> Launch:
    return Launch(
        ti_id=o.ti_id, token=o.token, dag_id="d", run_id="r", task_id=o.task_id, try_number=1,
        logical_date="", fileloc="", file_hash="", task_json="", context_json="",
        queue=o.queue, log_path="", dags_folder="",
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Executor, Spawner, Clock, list[PendingReport], RecordingSink]:
    spawner, clock, reports, sink = Spawner(), Clock(), [], RecordingSink()
    options = WorkerOptions(
        name="w", schedulers=("s:1",), queues=("default", "spark"), slots=2, home=tmp_path,
        kill_grace_s=2.0,
    )  # fmt: skip
    executor = Executor(
        options, spawner, submit_report=reports.append, on_finished=lambda a: None,
        metrics=Metrics([sink], strict=True), clock=clock,
    )  # fmt: skip
    return executor, spawner, clock, reports, sink


def start(executor: Executor, o: AttemptOrder) -> None:
    admission = executor.admit(o)
    assert admission.accepted
    assert admission.attempt is not None
    executor.launch(admission.attempt, launch_of(o))


def test_admission_rules(setup) -> None:
    executor, spawner, _, _, sink = setup
    start(executor, order(1))
    again = executor.admit(order(1))
    assert again.accepted
    assert again.attempt is None
    assert "already running" in again.reason
    other_token = executor.admit(order(1, token=2))
    assert not other_token.accepted
    assert "still runs on this worker" in other_token.reason
    wrong = executor.admit(order(2, queue="gpu"))
    assert not wrong.accepted
    assert wrong.reason == "queue 'gpu' is not served by this worker (it serves: default, spark)"
    start(executor, order(3, queue="spark"))
    full = executor.admit(order(4))
    assert not full.accepted
    assert full.reason == "no free slot (2 of 2 in use)"
    refused = executor.admit(order(5), refusal="worker is draining (shutting down)")
    assert not refused.accepted
    assert refused.reason.startswith("worker is draining")
    assert spawner.spawned == ["1.1", "3.1"]
    assert sink.last("worker.open_slots") == 0
    assert sink.last("worker.running_tasks") == 2
    executor.handle({"ev": "exited", "key": "1.1", "status": 0})
    assert executor.free_slots() == 1
    done = executor.admit(order(1))
    assert done.accepted
    assert done.attempt is None
    assert "already ran" in done.reason


def test_reports_follow_the_task_process(setup) -> None:
    executor, _, _, reports, _ = setup
    start(executor, order(1))
    executor.handle({"ev": "spawned", "key": "1.1", "pid": 123})
    executor.handle({"ev": "child", "key": "1.1", "event": {"kind": "started", "at": 5.0}})
    result = {"kind": "result", "outcome": "success", "error": None, "followed": ["x"]}
    executor.handle({"ev": "child", "key": "1.1", "event": result})
    executor.handle({"ev": "exited", "key": "1.1", "status": 0})
    assert [r.event for r in reports] == [
        scheduler_pb2.ATTEMPT_EVENT_STARTED,
        scheduler_pb2.ATTEMPT_EVENT_SUCCESS,
    ]
    assert reports[0].at_unix == 5.0
    assert reports[1].followed == ("x",)
    assert reports[1].has_followed


def test_kill_sends_sigterm_then_sigkill_after_the_grace(setup, tmp_path: Path) -> None:
    executor, spawner, clock, reports, sink = setup
    o = order(1)
    start(executor, o)
    assert executor.kill(1, 1, KillKind.CANCELLED, "killed: cancelled", grace_s=2.0)
    assert not executor.kill(9, 9, KillKind.CANCELLED, "x", grace_s=2.0)
    assert spawner.signals == [("1.1", signal.SIGTERM)]
    clock.now += 1.9
    executor.tick()
    assert spawner.signals == [("1.1", signal.SIGTERM)]
    clock.now += 0.2
    executor.tick()
    executor.tick()
    assert spawner.signals == [("1.1", signal.SIGTERM), ("1.1", signal.SIGKILL)]
    executor.handle({"ev": "exited", "key": "1.1", "status": -9})
    assert reports[-1].error.startswith("killed: cancelled")
    assert sink.total("worker.tasks.killed", reason="cancelled") == 1
    log = executor.find(1, 1).log_path.read_text()  # type: ignore[union-attr]
    assert "killed: cancelled" in log


def test_a_shorter_grace_wins_but_the_first_reason_stands(setup) -> None:
    executor, spawner, clock, reports, _ = setup
    start(executor, order(1))
    executor.kill(1, 1, KillKind.SHUTDOWN, "killed: shutting down", grace_s=30)
    executor.kill_all(KillKind.LEASE, "worker lease expired", grace_s=0.5)
    clock.now += 0.6
    executor.tick()
    assert spawner.signals == [("1.1", signal.SIGTERM), ("1.1", signal.SIGKILL)]
    executor.handle({"ev": "exited", "key": "1.1", "status": -9})
    assert reports[-1].error.startswith("killed: shutting down")


def test_execution_timeout_counts_from_user_code_start(setup) -> None:
    executor, spawner, clock, reports, _ = setup
    start(executor, order(1, timeout=5))
    clock.now += 10
    executor.tick()
    assert spawner.signals == []  # not started yet: no user code to time
    executor.handle({"ev": "child", "key": "1.1", "event": {"kind": "started", "at": 1.0}})
    clock.now += 4.9
    executor.tick()
    assert spawner.signals == []
    clock.now += 0.2
    executor.tick()
    assert spawner.signals == [("1.1", signal.SIGTERM)]
    executor.handle({"ev": "exited", "key": "1.1", "status": -15})
    assert "execution_timeout of 5s exceeded" in reports[-1].error


def test_unwanted_attempts_end_without_a_final_report(setup) -> None:
    executor, _, _, reports, _ = setup
    start(executor, order(1))
    executor.kill(1, 1, KillKind.UNWANTED, UNWANTED_REASON, grace_s=1)
    executor.handle({"ev": "exited", "key": "1.1", "status": -15})
    assert reports == []
    assert UNWANTED_REASON in executor.find(1, 1).log_path.read_text()  # type: ignore[union-attr]


def test_spawn_failures_and_malformed_results_end_the_attempt(setup) -> None:
    executor, _, _, reports, _ = setup
    start(executor, order(1))
    executor.handle({"ev": "spawn_failed", "key": "1.1", "error": "fork failed: EAGAIN"})
    assert reports[-1].error == "fork failed: EAGAIN"
    start(executor, order(2))
    executor.handle({"ev": "child", "key": "2.1", "event": {"kind": "result", "outcome": "?"}})
    executor.handle({"ev": "exited", "key": "2.1", "status": 1})
    assert reports[-1].error == "the task process exited with code 1 without reporting an outcome"
    assert json.loads(json.dumps(reports[-1].error))  # plain text, safe to ship


@pytest.mark.parametrize(
    ("outcome", "willing", "offered"),
    [("success", True, True), ("failed", True, False), ("skipped", True, False),
     ("success", False, False)],
)  # fmt: skip
def test_a_success_offers_its_slot_when_the_agent_is_willing(
    tmp_path: Path, outcome: str, willing: bool, offered: bool
) -> None:
    """Eager dispatch: the final report of a success offers the slot, naming the try's task, so
    the scheduler may hand the next task back; not a failure or skip, nor while the agent says
    no (draining, no lease)."""
    reports: list[PendingReport] = []
    executor = Executor(
        WorkerOptions(name="w", schedulers=("s:1",), queues=("default",), slots=2, home=tmp_path),
        Spawner(), submit_report=reports.append, on_finished=lambda a: None,
        metrics=Metrics([RecordingSink()], strict=True), clock=Clock(), offers=lambda: willing,
    )  # fmt: skip
    start(executor, order(1))
    result = {"kind": "result", "outcome": outcome, "error": None}
    executor.handle({"ev": "child", "key": "1.1", "event": result})
    executor.handle({"ev": "exited", "key": "1.1", "status": 0})
    [final] = [r for r in reports if r.final]
    assert final.offers_slot is offered
    assert (final.dag_id, final.task_id) == (("d", "t1") if offered else ("", ""))
    assert final.to_proto("w1").offers_slot is offered
    assert executor.free_slots() == 2  # an offer reserves nothing: a handed attempt may be declined
