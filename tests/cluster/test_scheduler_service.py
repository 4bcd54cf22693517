"""The Scheduler gRPC service on a real RpcServer with token auth and a real PostgreSQL: workers
register and heartbeat, reports apply only under the current token, XComs travel between two
workers, and oversized, malformed, unknown or unauthenticated calls get clear refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.store.test_eager import CHAIN, succeed
from tests.store.test_eager import setup as eager_setup
from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import admit
from tradewind.spec_codec import spec_to_json
from tradewind_cluster.config import TracingSettings
from tradewind_cluster.observability.metrics import Metrics, RecordingSink
from tradewind_cluster.observability.tracing import (
    configure_tracing,
    inject_context,
    shutdown_tracing,
    tracer,
)
from tradewind_cluster.rpc.scheduler_service import SchedulerService, SchedulerServiceOptions
from tradewind_cluster.rpc.security import RpcSecurity, call_metadata
from tradewind_cluster.rpc.server import RpcOptions, RpcServer, open_channel
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store.attempts import requeue_attempt
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.eager import eager_plan
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.store.schema import serialized_dag
from tradewind_proto.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

pytestmark = pytest.mark.cluster
NOW = datetime(2026, 3, 1, tzinfo=UTC)
TOKEN = "s3cret-token"
MAX_XCOM = 64
pb = scheduler_pb2


@dataclass
class Cluster:
    db: Database
    sink: RecordingSink
    port: int
    refused: list[str]
    channels: list[grpc.Channel]

    def stub(self) -> scheduler_pb2_grpc.SchedulerStub:
        """A worker's client; calls carry the token in their metadata (META)."""
        options = RpcOptions(max_message_bytes=8 * 1024 * 1024)
        channel = open_channel(f"127.0.0.1:{self.port}", options)
        self.channels.append(channel)
        return scheduler_pb2_grpc.SchedulerStub(channel)


META = call_metadata(RpcSecurity(token=TOKEN))


@pytest.fixture
def cluster(database: Database) -> Iterator[Cluster]:
    sink = RecordingSink()
    ctx = SchedulerContext(db=database, member_id="r1", metrics=Metrics([sink], strict=True))
    service = SchedulerService(
        ReportHandler(ctx),
        SchedulerServiceOptions(heartbeat_interval_s=1.5, lease_s=6.0, max_xcom_bytes=MAX_XCOM),
    )
    refused: list[str] = []
    server = RpcServer(
        RpcOptions(port=0, security=RpcSecurity(token=TOKEN), max_message_bytes=64 * 1024),
        [service.add_to],
        on_refused=refused.append,
    )
    c = Cluster(db=database, sink=sink, port=server.port, refused=refused, channels=[])
    yield c
    for channel in c.channels:
        channel.close()
    server.stop(0)


def queue_tasks(db: Database, *task_ids: str) -> dict[str, QueuedAttempt]:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d", run_id="r")
        for task_id in task_ids:
            insert_ti(conn, run, task_id, state="scheduled")

    db.transaction(setup)
    outcome = db.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="r1", decide=admit, now=NOW)
    )
    assert outcome is not None
    return {q.task_id: q for q in outcome.queued}


def supersede(db: Database, q: QueuedAttempt) -> QueuedAttempt:
    """Requeue the attempt and queue the task again: a new token replaces q's."""
    assert db.transaction(lambda c: requeue_attempt(c, q.ti_id, q.token, reason="test", now=NOW))
    outcome = db.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="r1", decide=admit, now=NOW)
    )
    assert outcome is not None
    [new] = [n for n in outcome.queued if n.ti_id == q.ti_id]
    return new


def ref(q: QueuedAttempt, token: int | None = None) -> common_pb2.AttemptRef:
    return common_pb2.AttemptRef(ti_id=q.ti_id, token=q.token if token is None else token)


def report(
    stub: scheduler_pb2_grpc.SchedulerStub,
    q: QueuedAttempt,
    event: int,
    *,
    worker: str = "w1",
    token: int | None = None,
    **fields: object,
) -> scheduler_pb2.AttemptReportReply:
    message = pb.AttemptReport(attempt=ref(q, token), worker_id=worker, event=event, **fields)  # type: ignore[arg-type]
    return stub.ReportAttempt(message, metadata=META, timeout=10)


def register(
    stub: scheduler_pb2_grpc.SchedulerStub, worker: str, *running: common_pb2.AttemptRef
) -> scheduler_pb2.RegisterWorkerReply:
    return stub.RegisterWorker(
        pb.RegisterWorkerRequest(
            worker_id=worker,
            name=worker,
            hostname="host",
            address=f"127.0.0.1:{5000 + len(worker)}",
            queues=["default", "spark"],
            slots=4,
            version="t",
            running=list(running),
        ),
        metadata=META,
        timeout=10,
    )


def ti_state(db: Database, q: QueuedAttempt) -> str:
    with db.engine.connect() as conn:
        return str(
            conn.execute(
                sa.text("SELECT state FROM task_instance WHERE id = :i"), {"i": q.ti_id}
            ).scalar_one()
        )


def test_register_records_the_worker_and_names_superseded_attempts(cluster: Cluster) -> None:
    old = queue_tasks(cluster.db, "a")["a"]
    new = supersede(cluster.db, old)
    reply = register(cluster.stub(), "w1", ref(old), ref(new))
    assert (reply.scheduler_id, reply.heartbeat_interval_s, reply.lease_s) == ("r1", 1.5, 6.0)
    assert [(r.ti_id, r.token) for r in reply.unwanted] == [(old.ti_id, old.token)]
    with cluster.db.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT queues, slots, state, registered_via, running FROM worker")
        ).one()
    assert tuple(row) == (["default", "spark"], 4, "alive", "r1", 2)


def test_heartbeat_returns_unwanted_attempts_and_unknown_workers_must_register(
    cluster: Cluster,
) -> None:
    stub = cluster.stub()
    unknown = stub.Heartbeat(pb.WorkerHeartbeatRequest(worker_id="w1"), metadata=META, timeout=10)
    assert not unknown.known
    register(stub, "w1")
    old = queue_tasks(cluster.db, "a")["a"]
    new = supersede(cluster.db, old)
    beat = stub.Heartbeat(
        pb.WorkerHeartbeatRequest(worker_id="w1", running=[ref(old), ref(new)], free_slots=2),
        metadata=META,
        timeout=10,
    )
    assert beat.known
    assert [(r.ti_id, r.token) for r in beat.unwanted] == [(old.ti_id, old.token)]


def test_an_attempt_starts_and_succeeds_and_resent_reports_are_idempotent(cluster: Cluster) -> None:
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    started = report(stub, a, pb.ATTEMPT_EVENT_STARTED)
    assert (started.accepted, started.reason) == (True, "")
    again = report(stub, a, pb.ATTEMPT_EVENT_STARTED)  # the reply was lost; the worker resends
    assert (again.accepted, again.reason) == (True, "duplicate: already started")
    other = report(stub, a, pb.ATTEMPT_EVENT_STARTED, worker="w2")
    assert (other.accepted, other.reason) == (False, "task instance is running")
    done = report(stub, a, pb.ATTEMPT_EVENT_SUCCESS, exit_code=0)
    assert done.accepted
    assert report(stub, a, pb.ATTEMPT_EVENT_SUCCESS).reason == "duplicate: already recorded"
    assert ti_state(cluster.db, a) == "success"


def test_a_declined_handed_attempt_goes_back_to_scheduled(cluster: Cluster) -> None:
    """Eager dispatch: a worker that cannot start an attempt a reply handed it says DECLINED;
    the attempt is scheduled again. Only the worker it was handed to may decline it."""
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    cluster.db.statement(  # as the report's statement hands it to w1
        lambda c: c.execute(
            sa.text("UPDATE task_instance SET worker = 'w1' WHERE id = :i"), {"i": a.ti_id}
        )
    )
    other = report(stub, a, pb.ATTEMPT_EVENT_DECLINED, worker="w2")
    assert (other.accepted, other.reason) == (False, "not an attempt handed to this worker")
    assert ti_state(cluster.db, a) == "queued"
    declined = report(stub, a, pb.ATTEMPT_EVENT_DECLINED, worker="w1", error="no free slot")
    assert (declined.accepted, declined.reason) == (True, "declined")
    assert ti_state(cluster.db, a) == "scheduled"
    again = report(stub, a, pb.ATTEMPT_EVENT_DECLINED, worker="w1")  # sent twice: nothing to undo
    assert not again.accepted  # requeued: the worker is cleared, the attempt is no longer its
    assert ti_state(cluster.db, a) == "scheduled"


def test_a_success_sent_again_carries_what_it_handed_once_more(cluster: Cluster) -> None:
    """Eager dispatch: the success of `a` was applied and handed `b` to w1, but the reply was
    lost. The same report sent again (or a late copy of the first, whose reply goes nowhere)
    is answered with `b`'s request once more, under the same token, and `b` stays queued for
    w1. Nothing is queued twice."""
    q = eager_setup(cluster.db)
    cluster.db.statement(
        lambda c: c.execute(sa.update(serialized_dag).values(data=json.loads(spec_to_json(CHAIN))))
    )
    handed = succeed(cluster.db, q, eager_plan(CHAIN, "h1", "a")).handed
    assert handed is not None
    assert handed.task_id == "b"
    stub = cluster.stub()
    offer = {"offers_slot": True, "dag_id": "d", "task_id": "a", "exit_code": 0}
    for _ in range(2):
        reply = report(stub, q, pb.ATTEMPT_EVENT_SUCCESS, **offer)
        assert (reply.accepted, reply.reason) == (True, "duplicate: already recorded")
        assert [(n.attempt.ti_id, n.attempt.token, n.task_id) for n in reply.next] == [
            (handed.ti_id, handed.token, "b")
        ]
        assert reply.next[0].try_number == 1
    assert ti_state(cluster.db, handed) == "queued"
    assert cluster.sink.total("scheduler.tasks.requeued") == 0
    assert cluster.sink.total("scheduler.tasks.eager_sent_again") == 2
    # not sent again without the offer, nor to another worker
    assert list(report(stub, q, pb.ATTEMPT_EVENT_SUCCESS, exit_code=0).next) == []
    other = report(stub, q, pb.ATTEMPT_EVENT_SUCCESS, worker="w2", **offer)
    assert not other.accepted
    assert list(other.next) == []
    # once b has started on w1, the worker has it: nothing to send again
    assert report(stub, handed, pb.ATTEMPT_EVENT_STARTED).accepted
    assert list(report(stub, q, pb.ATTEMPT_EVENT_SUCCESS, **offer).next) == []


def test_a_failure_with_a_branch_choice_is_recorded(cluster: Cluster) -> None:
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    report(stub, a, pb.ATTEMPT_EVENT_STARTED)
    reply = report(stub, a, pb.ATTEMPT_EVENT_SKIPPED, followed=["x"], has_followed=True)
    assert reply.accepted
    with cluster.db.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT state, followed FROM task_instance")).one()
    assert tuple(row) == ("skipped", ["x"])


def test_a_stale_report_is_refused_counted_and_not_applied(cluster: Cluster) -> None:
    stub = cluster.stub()
    old = queue_tasks(cluster.db, "a")["a"]
    new = supersede(cluster.db, old)
    reply = report(stub, old, pb.ATTEMPT_EVENT_STARTED)
    assert not reply.accepted
    assert reply.reason == f"stale token {old.token}: the current attempt has token {new.token}"
    assert cluster.sink.total("scheduler.reports.stale") == 1
    assert ti_state(cluster.db, old) == "queued"
    report(stub, new, pb.ATTEMPT_EVENT_STARTED)
    late = report(stub, old, pb.ATTEMPT_EVENT_FAILED, exit_code=1, error="boom")
    assert late.reason.startswith("stale token")
    assert cluster.sink.total("scheduler.reports.stale") == 2
    assert ti_state(cluster.db, new) == "running"


def test_unknown_attempts_and_malformed_reports_get_clear_answers(cluster: Cluster) -> None:
    stub = cluster.stub()
    ghost = QueuedAttempt(
        attempt_id=0, ti_id=424242, token=1, try_number=1, dag_id="d", run_id="r",
        task_id="t", queue="default", pool="default_pool", logical_date=NOW,
    )  # fmt: skip
    reply = report(stub, ghost, pb.ATTEMPT_EVENT_SUCCESS)
    assert (reply.accepted, reply.reason) == (False, "unknown task instance 424242")
    odd = report(stub, ghost, pb.ATTEMPT_EVENT_UNSPECIFIED)
    assert (odd.accepted, odd.reason) == (False, "unknown attempt event ATTEMPT_EVENT_UNSPECIFIED")
    with pytest.raises(grpc.RpcError) as missing:
        stub.ReportAttempt(pb.AttemptReport(worker_id="w1"), metadata=META, timeout=10)
    assert missing.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "attempt (ti_id, token) is required" in str(missing.value.details())
    with pytest.raises(grpc.RpcError) as pull:
        stub.PullXCom(pb.XComPullRequest(attempt=ref(ghost), key="k"), metadata=META, timeout=10)
    assert pull.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        stub.RegisterWorker(
            pb.RegisterWorkerRequest(worker_id="w1", address="h:1"), metadata=META, timeout=10
        )
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one queue" in str(bad.value.details())
    assert cluster.sink.total("rpc.errors", code="INVALID_ARGUMENT") == 2
    assert cluster.sink.total("rpc.errors", code="NOT_FOUND") == 1


def test_xcoms_travel_between_two_workers(cluster: Cluster) -> None:
    worker_a, worker_b = cluster.stub(), cluster.stub()
    tis = queue_tasks(cluster.db, "a", "b")
    report(worker_a, tis["a"], pb.ATTEMPT_EVENT_STARTED, worker="wa")
    pushed = worker_a.PushXCom(
        pb.XComPushRequest(attempt=ref(tis["a"]), key="return_value", value='{"rows": 3}'),
        metadata=META,
        timeout=10,
    )
    assert (pushed.accepted, pushed.reason) == (True, "")
    report(worker_a, tis["a"], pb.ATTEMPT_EVENT_SUCCESS, worker="wa")
    report(worker_b, tis["b"], pb.ATTEMPT_EVENT_STARTED, worker="wb")

    def pull(task_ids: list[str], key: str = "return_value") -> list[tuple[str, bool, str]]:
        reply = worker_b.PullXCom(
            pb.XComPullRequest(attempt=ref(tis["b"]), task_ids=task_ids, key=key),
            metadata=META,
            timeout=10,
        )
        return [(v.task_id, v.found, v.value) for v in reply.values]

    assert pull(["a"]) == [("a", True, '{"rows": 3}')]
    assert pull(["missing", "a"]) == [("missing", False, ""), ("a", True, '{"rows": 3}')]
    assert pull([]) == [("a", True, '{"rows": 3}')]  # no task ids: the newest match
    assert pull(["a"], key="other") == [("a", False, "")]


def test_an_oversized_xcom_is_refused_with_the_limit_named(cluster: Cluster) -> None:
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    report(stub, a, pb.ATTEMPT_EVENT_STARTED)
    reply = stub.PushXCom(
        pb.XComPushRequest(attempt=ref(a), key="big", value="x" * (MAX_XCOM + 1)),
        metadata=META,
        timeout=10,
    )
    assert not reply.accepted
    assert f"over core.max_xcom_bytes ({MAX_XCOM})" in reply.reason
    # Past the server's message limit the call never reaches the service.
    with pytest.raises(grpc.RpcError) as huge:
        stub.PushXCom(
            pb.XComPushRequest(attempt=ref(a), key="huge", value="x" * 100_000),
            metadata=META,
            timeout=10,
        )
    assert huge.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    with cluster.db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM xcom")).scalar_one() == 0


def xcom_rows(db: Database) -> list[tuple[str, str, str]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT task_id, key, value FROM xcom ORDER BY task_id, key"))
        return [(r[0], r[1], r[2]) for r in rows]


def test_returned_values_are_stored_with_the_success_that_carries_them(cluster: Cluster) -> None:
    stub = cluster.stub()
    tis = queue_tasks(cluster.db, "a", "b")
    for name in ("a", "b"):
        report(stub, tis[name], pb.ATTEMPT_EVENT_STARTED)
    returned = [
        pb.XComEntry(key="rows", value="3"),
        pb.XComEntry(key="return_value", value='{"rows": 3}'),
    ]
    assert report(stub, tis["a"], pb.ATTEMPT_EVENT_SUCCESS, xcoms=returned).accepted
    # values with any other outcome are not kept
    assert report(stub, tis["b"], pb.ATTEMPT_EVENT_SKIPPED, xcoms=returned).accepted
    assert xcom_rows(cluster.db) == [("a", "return_value", '{"rows": 3}'), ("a", "rows", "3")]
    assert (ti_state(cluster.db, tis["a"]), ti_state(cluster.db, tis["b"])) == (
        "success",
        "skipped",
    )
    # a resent success (lost reply) is idempotent: same rows
    assert report(stub, tis["a"], pb.ATTEMPT_EVENT_SUCCESS, xcoms=returned).accepted
    assert len(xcom_rows(cluster.db)) == 2


def test_one_report_starts_and_ends_a_short_try(cluster: Cluster) -> None:
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    with cluster.db.engine.begin() as conn:  # left by an earlier try: cleared as STARTED would
        conn.execute(
            sa.text(
                "INSERT INTO xcom (dag_id, run_id, task_id, key, value, created_at) "
                "SELECT dag_id, run_id, task_id, 'old', '1', now() FROM task_instance "
                "WHERE id = :i"
            ),
            {"i": a.ti_id},
        )
    returned = [pb.XComEntry(key="return_value", value='"v"')]
    reply = report(
        stub, a, pb.ATTEMPT_EVENT_SUCCESS, worker="w9", xcoms=returned,
        at_unix=1000.25, started_at_unix=1000.0,
    )  # fmt: skip
    assert (reply.accepted, reply.reason) == (True, "")
    with cluster.db.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT t.state, t.try_number, t.worker, t.end_date - t.start_date AS ran, "
                "a.state AS attempt, a.worker AS attempt_worker, a.start_date IS NOT NULL AS s "
                "FROM task_instance t JOIN task_attempt a ON a.ti_id = t.id AND a.token = t.token "
                "WHERE t.id = :i"
            ),
            {"i": a.ti_id},
        ).one()
    assert (row.state, row.try_number, row.worker) == ("success", 1, "w9")
    assert row.ran.total_seconds() == pytest.approx(0.25, abs=0.01)  # by the worker's clock
    assert (row.attempt, row.attempt_worker, row.s) == ("success", "w9", True)
    assert xcom_rows(cluster.db) == [("a", "return_value", '"v"')]
    # resent after a lost reply: recognised, nothing applied twice
    again = report(
        stub, a, pb.ATTEMPT_EVENT_SUCCESS, worker="w9", xcoms=returned,
        at_unix=1000.25, started_at_unix=1000.0,
    )  # fmt: skip
    assert again.accepted
    assert ti_state(cluster.db, a) == "success"


def test_a_returned_value_the_store_cannot_keep_fails_the_try_with_the_reason(
    cluster: Cluster,
) -> None:
    stub = cluster.stub()
    tis = queue_tasks(cluster.db, "big", "bad")
    for name in ("big", "bad"):
        report(stub, tis[name], pb.ATTEMPT_EVENT_STARTED)
    big = [pb.XComEntry(key="return_value", value='"' + "x" * MAX_XCOM + '"')]
    assert report(stub, tis["big"], pb.ATTEMPT_EVENT_SUCCESS, xcoms=big).accepted
    bad = [pb.XComEntry(key="return_value", value="{not json")]
    assert report(stub, tis["bad"], pb.ATTEMPT_EVENT_SUCCESS, xcoms=bad).accepted
    assert ti_state(cluster.db, tis["big"]) == "failed"
    assert ti_state(cluster.db, tis["bad"]) == "failed"
    assert xcom_rows(cluster.db) == []
    with cluster.db.engine.connect() as conn:
        errors = dict(
            conn.execute(
                sa.text(
                    "SELECT t.task_id, a.error FROM task_attempt a "
                    "JOIN task_instance t ON t.id = a.ti_id"
                )
            ).all()
        )
    assert f"over core.max_xcom_bytes ({MAX_XCOM})" in errors["big"]
    assert errors["bad"] == "XCom 'return_value' is not JSON"


def test_pushes_need_the_current_token_of_a_running_attempt(cluster: Cluster) -> None:
    stub = cluster.stub()
    old = queue_tasks(cluster.db, "a")["a"]
    queued_only = stub.PushXCom(
        pb.XComPushRequest(attempt=ref(old), key="k", value="1"), metadata=META
    )
    assert queued_only.reason == "task instance is queued, not running"
    new = supersede(cluster.db, old)
    report(stub, new, pb.ATTEMPT_EVENT_STARTED)
    stale = stub.PushXCom(pb.XComPushRequest(attempt=ref(old), key="k", value="1"), metadata=META)
    assert stale.reason.startswith(f"stale token {old.token}")
    assert cluster.sink.total("scheduler.reports.stale") == 1
    with pytest.raises(grpc.RpcError) as pull:
        stub.PullXCom(
            pb.XComPullRequest(attempt=ref(old), task_ids=["a"]), metadata=META, timeout=10
        )
    assert pull.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert str(pull.value.details()).startswith("stale token")


def test_a_new_try_starts_with_its_xcoms_cleared(cluster: Cluster) -> None:
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    insert = sa.text(
        "INSERT INTO xcom (dag_id, run_id, task_id, key, value) VALUES ('d', 'r', :t, :k, '1')"
    )
    with cluster.db.engine.begin() as conn:  # left by the previous try, and by another task
        conn.execute(insert, {"t": "a", "k": "return_value"})
        conn.execute(insert, {"t": "other", "k": "k"})
    report(stub, a, pb.ATTEMPT_EVENT_STARTED)
    with cluster.db.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT task_id FROM xcom")).scalars().all()
    assert left == ["other"]


def test_variables_and_logs_for_a_live_attempt(cluster: Cluster) -> None:
    stub = cluster.stub()
    a = queue_tasks(cluster.db, "a")["a"]
    with cluster.db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO variable (key, val) VALUES ('region', 'eu')"))
    got = stub.GetVariable(
        pb.VariableRequest(attempt=ref(a), key="region"), metadata=META, timeout=10
    )
    assert (got.found, got.value) == (True, "eu")
    missing = stub.GetVariable(
        pb.VariableRequest(attempt=ref(a), key="nope"), metadata=META, timeout=10
    )
    assert not missing.found
    chunks = [
        pb.LogChunk(attempt=ref(a), try_number=1, seq=i, data=f"line {i}\n") for i in range(3)
    ]
    stored = stub.ShipLogs(pb.LogChunksRequest(chunks=chunks), metadata=META, timeout=10)
    assert stored.stored == 3
    resent = stub.ShipLogs(pb.LogChunksRequest(chunks=chunks[1:]), metadata=META, timeout=10)
    assert resent.stored == 2
    with cluster.db.engine.connect() as conn:
        text = conn.execute(
            sa.text("SELECT string_agg(data, '' ORDER BY seq) FROM task_log")
        ).scalar_one()
    assert text == "line 0\nline 1\nline 2\n"


def test_an_unauthenticated_call_is_refused_logged_and_counted(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    request = pb.WorkerHeartbeatRequest(worker_id="w1")
    stub = cluster.stub()
    with pytest.raises(grpc.RpcError) as none:
        stub.Heartbeat(request, timeout=10)
    assert none.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "missing token" in str(none.value.details())
    guess = call_metadata(RpcSecurity(token="guess-" + TOKEN))
    with pytest.raises(grpc.RpcError) as wrong:
        stub.Heartbeat(request, metadata=guess, timeout=10)
    assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "invalid token" in str(wrong.value.details())
    assert cluster.refused == ["/tradewind.v1.Scheduler/Heartbeat"] * 2
    refusals = [r.getMessage() for r in caplog.records if "unauthenticated" in r.getMessage()]
    assert len(refusals) == 2
    assert not any(TOKEN in message for message in refusals)
    assert stub.Heartbeat(request, metadata=META, timeout=10).known is False  # with the token


def test_a_report_continues_the_trace_sent_in_its_metadata(cluster: Cluster) -> None:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingSettings(), exporter=exporter)
    try:
        a = queue_tasks(cluster.db, "a")["a"]
        with tracer("test").start_as_current_span("dispatched"):
            headers = tuple(inject_context().items())
        message = pb.AttemptReport(attempt=ref(a), worker_id="w1", event=pb.ATTEMPT_EVENT_STARTED)
        assert cluster.stub().ReportAttempt(message, metadata=META + headers, timeout=10).accepted
    finally:
        shutdown_tracing()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    started, parent = spans["attempt started"], spans["dispatched"]
    assert started.parent is not None
    assert parent.context is not None
    assert started.parent.span_id == parent.context.span_id
    assert dict(started.attributes or {})["tradewind.ti_id"] == a.ti_id
