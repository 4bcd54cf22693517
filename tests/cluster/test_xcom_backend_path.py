"""A custom XCom backend, loaded by dotted path as `core.xcom_backend` names it, is what the
scheduler service uses when workers push and pull: the store keeps the backend's reference,
the worker gets the value back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import pytest
import sqlalchemy as sa

from tests.cluster.test_scheduler_service import META, queue_tasks, ref, report
from tradewind_cluster.observability.metrics import Metrics, RecordingSink
from tradewind_cluster.rpc.scheduler_service import SchedulerService, SchedulerServiceOptions
from tradewind_cluster.rpc.security import RpcSecurity
from tradewind_cluster.rpc.server import RpcOptions, RpcServer, open_channel
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store.database import Database
from tradewind_cluster.xcom import BaseXComBackend, XComLike, load_xcom_backend
from tradewind_proto.v1 import scheduler_pb2, scheduler_pb2_grpc

pytestmark = pytest.mark.cluster
pb = scheduler_pb2


class ObjectStoreBackend(BaseXComBackend):
    """Keeps values in a side store (a dict standing in for S3) and only a key in the database."""

    objects: ClassVar[dict[str, Any]] = {}

    def serialize_value(
        self, value: Any, *, key: str, dag_id: str, run_id: str, task_id: str
    ) -> str:
        ref = f"obj://{dag_id}/{run_id}/{task_id}/{key}"
        ObjectStoreBackend.objects[ref] = value
        return ref

    def deserialize_value(self, xcom: XComLike) -> Any:
        return ObjectStoreBackend.objects[xcom.value]


@pytest.fixture
def stub(database: Database) -> Iterator[scheduler_pb2_grpc.SchedulerStub]:
    backend = load_xcom_backend(f"{__name__}.ObjectStoreBackend")
    ctx = SchedulerContext(db=database, member_id="r1", metrics=Metrics([RecordingSink()]))
    service = SchedulerService(
        ReportHandler(ctx), SchedulerServiceOptions(max_xcom_bytes=4096), backend
    )
    server = RpcServer(
        RpcOptions(port=0, security=RpcSecurity(token="s3cret-token")), [service.add_to]
    )
    channel = open_channel(f"127.0.0.1:{server.port}", RpcOptions())
    yield scheduler_pb2_grpc.SchedulerStub(channel)
    channel.close()
    server.stop(0)


def test_pushes_and_pulls_go_through_the_configured_backend(
    stub: scheduler_pb2_grpc.SchedulerStub, database: Database
) -> None:
    tis = queue_tasks(database, "a", "b")
    report(stub, tis["a"], pb.ATTEMPT_EVENT_STARTED, worker="wa")
    value = {"rows": [1, 2, 3]}
    pushed = stub.PushXCom(
        pb.XComPushRequest(attempt=ref(tis["a"]), key="return_value", value=json.dumps(value)),
        metadata=META,
        timeout=10,
    )
    assert pushed.accepted, pushed.reason
    with database.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT value FROM xcom WHERE task_id = 'a'")).scalar_one()
    assert stored.startswith("obj://")  # the database holds the backend's reference only
    report(stub, tis["a"], pb.ATTEMPT_EVENT_SUCCESS, worker="wa")
    report(stub, tis["b"], pb.ATTEMPT_EVENT_STARTED, worker="wb")
    pulled = stub.PullXCom(
        pb.XComPullRequest(attempt=ref(tis["b"]), task_ids=["a"], key="return_value"),
        metadata=META,
        timeout=10,
    )
    assert [json.loads(v.value) for v in pulled.values] == [value]


def test_a_push_that_is_not_json_is_refused_clearly(
    stub: scheduler_pb2_grpc.SchedulerStub, database: Database
) -> None:
    tis = queue_tasks(database, "a")
    report(stub, tis["a"], pb.ATTEMPT_EVENT_STARTED, worker="wa")
    with pytest.raises(grpc.RpcError) as info:
        stub.PushXCom(
            pb.XComPushRequest(attempt=ref(tis["a"]), key="k", value="not json"),
            metadata=META,
            timeout=10,
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "XCom 'k' is not JSON" in str(info.value.details())
