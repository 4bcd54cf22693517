"""The gRPC dispatcher against small fake Worker servicers on real gRPC servers and a real
PostgreSQL: queue routing, least loaded first, slots never exceeded, retries then another
worker, all failing → worker_id None, idempotent resends, and queue_open with its cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import admit
from tradewind.spec import DagSpec, ScheduleKind, ScheduleSpec, TaskKind, TaskSpec
from tradewind_cluster.config import TracingSettings
from tradewind_cluster.observability.metrics import Metrics, RecordingSink
from tradewind_cluster.observability.tracing import configure_tracing, shutdown_tracing
from tradewind_cluster.rpc.security import RpcSecurity
from tradewind_cluster.rpc.server import RpcOptions, RpcServer
from tradewind_cluster.scheduler.dispatching import DispatchRequest, DispatchResult
from tradewind_cluster.scheduler.execute_requests import task_to_json
from tradewind_cluster.scheduler.grpc_dispatch import GrpcDispatcher, GrpcDispatchOptions
from tradewind_cluster.store import workers as store_workers
from tradewind_cluster.store.attempts import mark_dispatched
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.worker.runtime import decode_task
from tradewind_proto.v1 import worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.cluster
NOW = datetime(2026, 3, 1, tzinfo=UTC)
TOKEN = "dispatch-token"
SECURITY = RpcSecurity(token=TOKEN)


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Accepts attempts (idempotently per token) unless told to fail or refuse; `batch=False`
    is a worker of a version without ExecuteBatch (UNIMPLEMENTED)."""

    def __init__(
        self,
        *,
        failures: int = 0,
        refuse: str | None = None,
        batch: bool = True,
        refuse_tasks: tuple[str, ...] = (),
    ) -> None:
        self.failures = failures  # UNAVAILABLE answers before it works (-1: always)
        self.refuse = refuse
        self.batch = batch
        self.refuse_tasks = refuse_tasks  # refused by task id, the others accepted
        self.calls: list[worker_pb2.ExecuteRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.batches: list[list[str]] = []  # task ids of each ExecuteBatch answered
        self.batch_calls = 0  # ExecuteBatch calls received, answered or not
        self.running: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def Execute(
        self, request: worker_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ExecuteReply:
        with self._lock:
            self.calls.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            self._fail(context)
            return self._one(request)

    def ExecuteBatch(
        self, request: worker_pb2.ExecuteBatchRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ExecuteBatchReply:
        self.batch_calls += 1
        if not self.batch:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        with self._lock:
            self.calls.extend(request.attempts)
            self.metadata.extend(dict(context.invocation_metadata()) for _ in request.attempts)
            self._fail(context)
            self.batches.append([a.task_id for a in request.attempts])
            return worker_pb2.ExecuteBatchReply(replies=[self._one(a) for a in request.attempts])

    def _fail(self, context: grpc.ServicerContext) -> None:
        if self.failures:
            self.failures -= 1 if self.failures > 0 else 0
            context.abort(grpc.StatusCode.UNAVAILABLE, "worker restarting")

    def _one(self, request: worker_pb2.ExecuteRequest) -> worker_pb2.ExecuteReply:
        if self.refuse is not None:
            return worker_pb2.ExecuteReply(accepted=False, reason=self.refuse)
        if request.task_id in self.refuse_tasks:
            return worker_pb2.ExecuteReply(accepted=False, reason="not this one")
        self.running.add((request.attempt.ti_id, request.attempt.token))
        return worker_pb2.ExecuteReply(accepted=True)


class Fleet:
    """Fake workers on real servers, registered in the store."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.servers: list[RpcServer] = []
        self.fakes: dict[str, FakeWorker] = {}

    def add(
        self,
        worker_id: str,
        *,
        queues: tuple[str, ...] = ("default",),
        slots: int = 4,
        fake: FakeWorker | None = None,
    ) -> FakeWorker:
        fake = fake or FakeWorker()
        server = RpcServer(
            RpcOptions(port=0, security=SECURITY),
            [lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(fake, s)],
        )
        self.servers.append(server)
        self.fakes[worker_id] = fake
        self.db.transaction(
            lambda c: store_workers.register_worker(
                c,
                worker_id=worker_id,
                name=worker_id,
                hostname="host",
                grpc_address=f"127.0.0.1:{server.port}",
                queues=queues,
                slots=slots,
                version="t",
                registered_via="r1",
            )
        )
        return fake

    def stop(self) -> None:
        for server in self.servers:
            server.stop(0)


@pytest.fixture
def fleet(database: Database) -> Iterator[Fleet]:
    f = Fleet(database)
    yield f
    f.stop()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def dispatcher(database: Database, sink: RecordingSink) -> Iterator[GrpcDispatcher]:
    options = GrpcDispatchOptions(
        rpc=RpcOptions(security=SECURITY, call_timeout_s=5),
        retry_attempts=3,
        retry_multiplier_s=0.001,
        retry_max_wait_s=0.002,
        board_reuse_s=0.0,  # every dispatch reads the board: these tests free slots in between
    )
    d = GrpcDispatcher(
        database, options, metrics=Metrics([sink], strict=True), sleep=lambda s: None
    )
    yield d
    d.close()


SPEC = DagSpec(
    dag_id="d",
    fileloc="/dags/d.py",
    schedule=ScheduleSpec(kind=ScheduleKind.NONE, label="None"),
    tasks={
        f"t{i}": TaskSpec(
            task_id=f"t{i}",
            operator="BashOperator",
            kind=TaskKind.BASH,
            execution_timeout=timedelta(minutes=2) if i == 0 else None,
            fields={"bash_command": f"echo {i}"},
        )
        for i in range(8)
    },
)


def queue_tasks(
    db: Database, n: int, *, queue: str = "default", first: int = 0
) -> list[DispatchRequest]:
    """n new task instances queued (with tokens) in one run, as dispatch requests."""

    def setup(conn: sa.Connection) -> None:
        if first == 0:
            insert_dag(conn, "d")
            insert_run(conn, "d", run_id="r")
        run = conn.execute(sa.text("SELECT id FROM dag_run WHERE run_id = 'r'")).scalar_one()
        for i in range(first, first + n):
            insert_ti(conn, run, f"t{i}", state="scheduled", queue=queue)

    db.transaction(setup)
    outcome = db.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="r1", decide=admit, now=NOW)
    )
    assert outcome is not None
    return [request(q) for q in sorted(outcome.queued, key=lambda q: q.task_id)]


def request(q: QueuedAttempt) -> DispatchRequest:
    return DispatchRequest(
        attempt=q,
        task=SPEC.tasks[q.task_id],
        dag=SPEC,
        file_hash="abc123",
        run_context={"run_id": q.run_id, "conf": {"x": 1}},
    )


def apply(db: Database, results: list[DispatchResult]) -> None:
    """What the dispatch step does with the answers: record the accepting worker."""
    for r in results:
        if r.worker_id is not None:
            db.transaction(
                lambda c, r=r: mark_dispatched(c, r.ti_id, r.token, worker_id=r.worker_id, now=NOW)
            )


def test_the_execute_request_carries_everything_the_worker_needs(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fake = fleet.add("w1")
    [req] = queue_tasks(fleet.db, 1)
    exporter = InMemorySpanExporter()
    configure_tracing(TracingSettings(), exporter=exporter)
    try:
        [result] = dispatcher.dispatch([req])
    finally:
        shutdown_tracing()
    assert (result.worker_id, result.error) == ("w1", None)
    [sent] = fake.calls
    a = req.attempt
    assert (sent.attempt.ti_id, sent.attempt.token, sent.try_number) == (a.ti_id, a.token, 1)
    assert (sent.dag_id, sent.run_id, sent.task_id, sent.queue) == ("d", "r", "t0", "default")
    assert sent.logical_date == a.logical_date.isoformat()
    assert (sent.fileloc, sent.file_hash, sent.execution_timeout_s) == (
        "/dags/d.py",
        "abc123",
        120.0,
    )
    assert decode_task(sent.task_json, "t0") == SPEC.tasks["t0"]
    assert json.loads(sent.context_json) == {"run_id": "r", "conf": {"x": 1}}
    assert fake.metadata[0]["authorization"] == f"Bearer {TOKEN}"
    [span] = exporter.get_finished_spans()
    assert span.context is not None
    assert fake.metadata[0]["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


def test_task_json_round_trips_every_field() -> None:
    task = TaskSpec(
        task_id="x",
        operator="PythonOperator",
        kind=TaskKind.CALLABLE,
        upstream_task_ids=("a",),
        retries=2,
        retry_delay=timedelta(seconds=7),
        template_fields=("op_args",),
        fields={"op_args": [1, "two"]},
    )
    assert decode_task(task_to_json(task), task.task_id) == task
    assert task_to_json(task) == task_to_json(decode_task(task_to_json(task), task.task_id))


def test_attempts_go_to_workers_serving_their_queue(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fleet.add("plain", queues=("default",))
    fleet.add("spark", queues=("spark",))
    default = queue_tasks(fleet.db, 2)
    spark = queue_tasks(fleet.db, 2, queue="spark", first=2)
    gpu = queue_tasks(fleet.db, 1, queue="gpu", first=4)
    results = dispatcher.dispatch(default + spark + gpu)
    assert [r.worker_id for r in results] == ["plain", "plain", "spark", "spark", None]
    assert results[4].error == "no live worker serves queue 'gpu' with a free slot"


def test_the_least_loaded_worker_is_chosen_first(fleet: Fleet, dispatcher: GrpcDispatcher) -> None:
    fleet.add("small", slots=2)
    fleet.add("big", slots=8)
    busy = queue_tasks(fleet.db, 2)
    apply(
        fleet.db,
        [
            DispatchResult(ti_id=r.attempt.ti_id, token=r.attempt.token, worker_id=w)
            for r, w in zip(busy, ("small", "big"), strict=True)
        ],
    )
    # small is 1/2 used and big 1/8: big takes all four (at 4/8 it still has more free slots).
    results = dispatcher.dispatch(queue_tasks(fleet.db, 4, first=2))
    assert [r.worker_id for r in results] == ["big"] * 4
    assert fleet.fakes["small"].calls == []


def test_slots_are_never_exceeded_across_dispatches(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fake = fleet.add("w1", slots=2)
    first = dispatcher.dispatch(queue_tasks(fleet.db, 3))
    assert [r.worker_id for r in first] == ["w1", "w1", None]
    # Not yet recorded by the dispatch step: the local in-flight count still holds the slots.
    assert dispatcher.dispatch(queue_tasks(fleet.db, 1, first=3))[0].worker_id is None
    apply(fleet.db, first)
    assert dispatcher.dispatch(queue_tasks(fleet.db, 1, first=4))[0].worker_id is None
    assert dispatcher.queue_open() == {"default": 0}
    with fleet.db.engine.begin() as conn:  # one attempt finishes
        conn.execute(sa.text("UPDATE task_instance SET state = 'success' WHERE task_id = 't0'"))
    assert dispatcher.dispatch(queue_tasks(fleet.db, 1, first=5))[0].worker_id == "w1"
    assert sorted(r.task_id for r in fake.calls) == ["t0", "t1", "t5"]


def test_parallel_dispatch_of_a_batch_respects_slots(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fleet.add("a", slots=2)
    fleet.add("b", slots=3)
    results = dispatcher.dispatch(queue_tasks(fleet.db, 8))
    taken = [r.worker_id for r in results]
    assert (taken.count("a"), taken.count("b"), taken.count(None)) == (2, 3, 3)


def test_a_failing_rpc_is_retried_on_the_same_worker(
    fleet: Fleet, dispatcher: GrpcDispatcher, sink: RecordingSink
) -> None:
    fake = fleet.add("w1", fake=FakeWorker(failures=2))
    [result] = dispatcher.dispatch(queue_tasks(fleet.db, 1))
    assert result.worker_id == "w1"
    assert len(fake.calls) == 3
    assert sink.total("rpc.errors") == 0


def test_a_worker_that_keeps_failing_is_marked_suspect_and_the_attempt_queued_again(
    fleet: Fleet, dispatcher: GrpcDispatcher, sink: RecordingSink
) -> None:
    """The failed call may have reached the worker (here it did: the fake answered
    UNAVAILABLE after receiving it), so the attempt is not sent to another worker under the
    same token: it comes back unassigned, to be queued again under a new one."""
    broken = fleet.add("a-broken", slots=8, fake=FakeWorker(failures=-1))
    fine = fleet.add("b-fine", slots=1)
    [result] = dispatcher.dispatch(queue_tasks(fleet.db, 1))
    assert result.worker_id is None
    assert result.error is not None
    assert "worker a-broken: UNAVAILABLE" in result.error
    assert "queued again" in result.error
    assert len(broken.calls) == 3
    assert fine.calls == []
    with fleet.db.engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT id, state FROM worker")).all())
    assert states == {"a-broken": "suspect", "b-fine": "alive"}
    assert sink.total("rpc.errors", method="/tradewind.v1.Worker/Execute", code="UNAVAILABLE") == 1
    assert sink.total("scheduler.dispatch.failures", reason="rpc_error") == 1
    # The suspect worker is no longer offered work or counted as open (the other's slot is
    # counted for the attempt still queued until the dispatch step requeues it); the next
    # attempt goes to the other.
    assert dispatcher.queue_open() == {"default": 0}
    [again] = queue_tasks(fleet.db, 1, first=1)
    assert dispatcher.dispatch([again])[0].worker_id == "b-fine"


def test_refusals_move_on_to_other_workers_until_one_fails_or_none_is_left(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fleet.add("a", fake=FakeWorker(refuse="file hash differs"))
    fleet.add("b", fake=FakeWorker(failures=-1))
    [result] = dispatcher.dispatch(queue_tasks(fleet.db, 1))
    assert result.worker_id is None
    assert result.error is not None
    assert "worker a: refused: file hash differs" in result.error
    assert "worker b: UNAVAILABLE: worker restarting" in result.error
    with fleet.db.engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT id, state FROM worker")).all())
    assert states == {"a": "alive", "b": "suspect"}  # a refusal is an answer, not a fault


def test_resending_the_same_token_goes_to_the_same_worker_and_takes_no_new_slot(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fleet.add("w1", slots=1)
    fleet.add("w2", slots=1)
    [req] = queue_tasks(fleet.db, 1)
    first = dispatcher.dispatch([req])[0].worker_id
    assert first is not None
    again = dispatcher.dispatch([req])
    assert again[0].worker_id == first
    apply(fleet.db, again)
    assert dispatcher.dispatch([req])[0].worker_id == first  # recorded in the store now
    sent_to = fleet.fakes[first]
    assert len(sent_to.calls) == 3
    assert len(sent_to.running) == 1
    other = "w2" if first == "w1" else "w1"
    assert dispatcher.dispatch(queue_tasks(fleet.db, 1, first=1))[0].worker_id == other


def test_queue_open_sums_free_slots_per_queue_and_is_cached(
    database: Database, fleet: Fleet, sink: RecordingSink
) -> None:
    clock = [100.0]
    d = GrpcDispatcher(
        database,
        GrpcDispatchOptions(rpc=RpcOptions(security=SECURITY), queue_open_ttl_s=0.5),
        metrics=Metrics([sink], strict=True),
        monotonic=lambda: clock[0],
    )
    try:
        assert d.queue_open() == {}
        clock[0] += 1
        fleet.add("a", queues=("default", "spark"), slots=2)
        fleet.add("b", queues=("default",), slots=3)
        queue_tasks(database, 1, queue="spark")  # queued, not yet accepted by any worker
        assert d.queue_open() == {"default": 5, "spark": 1}
        fleet.add("c", queues=("gpu",), slots=1)
        clock[0] += 0.2
        assert d.queue_open() == {"default": 5, "spark": 1}  # cached
        clock[0] += 0.4
        assert d.queue_open() == {"default": 5, "spark": 1, "gpu": 1}
        assert sink.last("executor.open_slots") == 6
        assert sink.last("queue.open_slots", queue="gpu") == 1
    finally:
        d.close()


def test_a_worker_silent_past_its_lease_gets_nothing(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fleet.add("quiet")
    with fleet.db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE worker SET heartbeat_at = clock_timestamp() - interval '10 seconds'")
        )
    [result] = dispatcher.dispatch(queue_tasks(fleet.db, 1))
    assert result.worker_id is None
    assert fleet.fakes["quiet"].calls == []


def test_a_pass_goes_to_each_worker_in_one_batch_with_each_attempts_trace(
    fleet: Fleet, dispatcher: GrpcDispatcher, sink: RecordingSink
) -> None:
    a = fleet.add("a", slots=4)
    b = fleet.add("b", slots=4)
    exporter = InMemorySpanExporter()
    configure_tracing(TracingSettings(), exporter=exporter)
    try:
        results = dispatcher.dispatch(queue_tasks(fleet.db, 6))
    finally:
        shutdown_tracing()
    taken = [r.worker_id for r in results]
    assert (taken.count("a"), taken.count("b")) == (3, 3)
    assert len(a.batches) == 1
    assert len(b.batches) == 1
    sent = {m.task_id: m for m in a.calls + b.calls}
    assert len(sent) == 6
    spans = {
        s.attributes["tradewind.task_id"]: s
        for s in exporter.get_finished_spans()
        if s.name == "task.dispatch"
    }
    for r in results:  # each attempt's own task.dispatch span is its parent on the worker
        task_id = next(m.task_id for m in sent.values() if m.attempt.ti_id == r.ti_id)
        span = spans[task_id]
        assert sent[task_id].traceparent == r.trace_context
        assert f"{span.context.span_id:016x}" in sent[task_id].traceparent
    assert sink.total("rpc.errors") == 0


def test_an_attempt_refused_in_a_batch_goes_to_another_worker(
    fleet: Fleet, dispatcher: GrpcDispatcher
) -> None:
    fussy = fleet.add("a", slots=4, fake=FakeWorker(refuse_tasks=("t0", "t2")))
    fleet.add("b", slots=4)
    results = dispatcher.dispatch(queue_tasks(fleet.db, 4))
    by_task = {m.task_id: m for m in fussy.calls}
    owner = {r.ti_id: r.worker_id for r in results}
    assert all(w is not None for w in owner.values())
    assert {"t0", "t2"} <= set(by_task)  # a (least loaded first) was offered both
    for task_id in ("t0", "t2"):  # refused there, taken by b
        assert owner[by_task[task_id].attempt.ti_id] == "b"
    assert len(fussy.running) == len([w for w in owner.values() if w == "a"])


def test_a_worker_without_execute_batch_gets_one_execute_per_attempt(
    fleet: Fleet, dispatcher: GrpcDispatcher, sink: RecordingSink
) -> None:
    old = fleet.add("old", slots=8, fake=FakeWorker(batch=False))
    results = dispatcher.dispatch(queue_tasks(fleet.db, 3))
    assert [r.worker_id for r in results] == ["old"] * 3
    assert old.batches == []
    assert sorted(m.task_id for m in old.calls) == ["t0", "t1", "t2"]
    assert len(old.running) == 3
    assert sink.total("rpc.errors") == 0
    with fleet.db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT state FROM worker")).scalar_one() == "alive"
    # remembered: the next pass does not ask it for ExecuteBatch again
    more = dispatcher.dispatch(queue_tasks(fleet.db, 2, first=3))
    assert [r.worker_id for r in more] == ["old"] * 2
    assert old.batch_calls == 1


def test_a_batch_that_keeps_failing_comes_back_unassigned_for_new_tokens(
    fleet: Fleet, dispatcher: GrpcDispatcher, sink: RecordingSink
) -> None:
    """The failed call may have started some of its attempts there: sending them to another
    worker under the same token could run them twice, so they come back unassigned (the
    dispatch step queues them again under new tokens) and the worker is marked suspect."""
    broken = fleet.add("a-broken", slots=4, fake=FakeWorker(failures=-1))
    fine = fleet.add("b-fine", slots=4)
    results = dispatcher.dispatch(queue_tasks(fleet.db, 4))
    sent_to_broken = {m.attempt.ti_id for m in broken.calls}
    assert sent_to_broken  # least loaded first: a-broken got its share
    for r in results:
        if r.ti_id in sent_to_broken:
            assert r.worker_id is None
            assert r.error is not None
            assert "UNAVAILABLE" in r.error
        else:
            assert r.worker_id == "b-fine"
    assert not sent_to_broken & {ti for ti, _ in fine.running}
    with fleet.db.engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT id, state FROM worker")).all())
    assert states == {"a-broken": "suspect", "b-fine": "alive"}
    assert (
        sink.total("rpc.errors", method="/tradewind.v1.Worker/ExecuteBatch", code="UNAVAILABLE")
        == 1
    )


def test_a_batch_stays_under_half_the_message_limit(
    fleet: Fleet, database: Database, sink: RecordingSink
) -> None:
    fake = fleet.add("w1", slots=8)
    options = GrpcDispatchOptions(
        rpc=RpcOptions(security=SECURITY, call_timeout_s=5, max_message_bytes=2400),
        board_reuse_s=0.0,
    )
    d = GrpcDispatcher(database, options, metrics=Metrics([sink], strict=True))
    try:
        results = d.dispatch(queue_tasks(fleet.db, 6))
    finally:
        d.close()
    assert [r.worker_id for r in results] == ["w1"] * 6
    assert len(fake.batches) > 1
    assert sorted(t for b in fake.batches for t in b) == [f"t{i}" for i in range(6)]
    sizes = [sum(m.ByteSize() for m in fake.calls if m.task_id in b) for b in fake.batches]
    assert max(sizes) <= 1200


def test_a_board_read_moments_ago_serves_the_next_dispatch(
    fleet: Fleet, database: Database, sink: RecordingSink
) -> None:
    """Within board_reuse_s (the queue step's read, in a loop pass) dispatch does not read
    the workers again: a worker registered meanwhile is seen once the board is older."""
    now = [100.0]
    options = GrpcDispatchOptions(rpc=RpcOptions(security=SECURITY, call_timeout_s=5))
    d = GrpcDispatcher(
        database, options, metrics=Metrics([sink], strict=True), monotonic=lambda: now[0]
    )
    try:
        fleet.add("w1", slots=1)
        assert d.dispatch(queue_tasks(fleet.db, 1))[0].worker_id == "w1"
        fleet.add("w2", slots=1)
        [late] = queue_tasks(fleet.db, 1, first=1)
        now[0] += options.board_reuse_s / 2
        assert d.dispatch([late])[0].worker_id is None  # w1 is full, w2 not on the board yet
        now[0] += options.board_reuse_s
        assert d.dispatch([late])[0].worker_id == "w2"
    finally:
        d.close()
