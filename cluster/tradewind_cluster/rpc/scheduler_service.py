"""The Scheduler gRPC service worker agents call: registration and heartbeats, attempt reports
fenced by token, XCom push and pull, variables and log shipping. Any replica serves any worker:
every write is a compare-and-set in the store, so a stale report is refused, never applied.

Authentication happens before a handler runs (RpcServer's token interceptor, or mutual TLS).
A malformed request is refused with INVALID_ARGUMENT, an unreachable store with UNAVAILABLE
(the worker retries), anything unexpected with INTERNAL; the server itself carries on."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from opentelemetry.trace import SpanKind

from tradewind.errors import BadInputError, StoreUnavailableError
from tradewind_cluster.config import Settings
from tradewind_cluster.observability.tracing import extract_context, tracer
from tradewind_cluster.rpc.attempt_reports import AttemptReports, event_name
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store import task_logs, variables, workers
from tradewind_cluster.store import xcom as store_xcom
from tradewind_cluster.store.workers import AttemptScope
from tradewind_cluster.xcom import BaseXComBackend, DatabaseXComBackend, XComRecord
from tradewind_proto.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

__all__ = ["SchedulerService", "SchedulerServiceOptions"]

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
_SERVICE = "/tradewind.v1.Scheduler/"
_pb = scheduler_pb2
_READABLE = ("queued", "running")  # states in which an attempt may read XComs and variables

Req = TypeVar("Req")
Rep = TypeVar("Rep")
Handler = Callable[["SchedulerService", Req, grpc.ServicerContext], Rep]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerServiceOptions:
    """What the service tells workers and the limits it enforces."""

    heartbeat_interval_s: float = 1.0
    lease_s: float = 4.0
    max_xcom_bytes: int = 1024 * 1024
    max_pull_values: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> SchedulerServiceOptions:
        """Take the values from a validated settings tree."""
        return cls(
            heartbeat_interval_s=settings.worker.heartbeat_interval_s,
            lease_s=settings.worker.lease_s,
            max_xcom_bytes=settings.core.max_xcom_bytes,
        )


class _RefusedError(Exception):
    """A request answered with an error status and a clear message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _edge(fn: Handler[Req, Rep]) -> Handler[Req, Rep]:
    """The RPC edge: time the call, turn failures into statuses, count them, carry on."""
    method = _SERVICE + fn.__name__

    @functools.wraps(fn)
    def handle(self: SchedulerService, request: Req, context: grpc.ServicerContext) -> Rep:
        started = time.perf_counter()
        try:
            return fn(self, request, context)
        except _RefusedError as exc:
            code, message = exc.code, exc.message
        except StoreUnavailableError as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except BadInputError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception:
            log.exception("%s failed", method, extra={"event": "rpc_failed", "method": method})
            code, message = grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}"
        finally:
            self.metrics.timing("rpc.duration", time.perf_counter() - started, method=method)
        self.metrics.incr("rpc.errors", method=method, code=code.name)
        context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return handle


def _required(value: str, name: str) -> str:
    if not value.strip():
        raise _RefusedError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is required")
    return value


def _ref(message: common_pb2.AttemptRef, present: bool) -> tuple[int, int]:
    if not present or message.ti_id <= 0:
        raise _RefusedError(grpc.StatusCode.INVALID_ARGUMENT, "attempt (ti_id, token) is required")
    return message.ti_id, message.token


def _pb_refs(refs: Sequence[tuple[int, int]]) -> list[common_pb2.AttemptRef]:
    return [common_pb2.AttemptRef(ti_id=t, token=k) for t, k in refs]


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    """Serves workers on a scheduler replica's RpcServer; `add_to(server)` registers it."""

    def __init__(
        self,
        reports: ReportHandler,
        options: SchedulerServiceOptions | None = None,
        xcom_backend: BaseXComBackend | None = None,
    ) -> None:
        self.reports = reports
        self.ctx = reports.ctx
        self.db = reports.ctx.db
        self.metrics = reports.ctx.metrics
        self.options = options or SchedulerServiceOptions()
        self.xcom_backend = xcom_backend or DatabaseXComBackend()
        self.attempts = AttemptReports(reports, self.xcom_backend, self.options.max_xcom_bytes)

    def add_to(self, server: grpc.Server) -> None:
        """Register on a gRPC server."""
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(self, server)

    # -- workers ------------------------------------------------------------------------
    @_edge
    def RegisterWorker(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.RegisterWorkerRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.RegisterWorkerReply:
        """Insert or refresh the worker's row; name the running attempts it must kill."""
        worker_id = _required(request.worker_id, "worker_id")
        address = _required(request.address, "address")
        queues = [q.strip() for q in request.queues if q.strip()]
        if not queues or request.slots < 1:
            raise _RefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"worker {worker_id!r} must serve at least one queue with at least one slot",
            )
        self.db.transaction(
            lambda c: workers.register_worker(
                c,
                worker_id=worker_id,
                name=request.name or worker_id,
                hostname=request.hostname or "?",
                grpc_address=address,
                queues=queues,
                slots=request.slots,
                version=request.version or None,
                registered_via=self.ctx.member_id,
                running=len(request.running),
            )
        )
        refs = [(r.ti_id, r.token) for r in request.running]
        unwanted = self.reports.heartbeat(refs) if refs else []
        log.info(
            "worker %s registered at %s: queues %s, %d slots, %d running (%d unwanted)",
            worker_id,
            address,
            ",".join(queues),
            request.slots,
            len(refs),
            len(unwanted),
            extra={"event": "worker_registered", "worker": worker_id},
        )
        return scheduler_pb2.RegisterWorkerReply(
            scheduler_id=self.ctx.member_id,
            heartbeat_interval_s=self.options.heartbeat_interval_s,
            lease_s=self.options.lease_s,
            unwanted=_pb_refs(unwanted),
        )

    @_edge
    def Heartbeat(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.WorkerHeartbeatRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.WorkerHeartbeatReply:
        """Refresh the worker and its attempts; unknown (or lost) workers must register."""
        worker_id = _required(request.worker_id, "worker_id")
        try:
            known = self.db.transaction(
                lambda c: workers.heartbeat_worker(
                    c, worker_id, running=len(request.running), draining=request.draining
                ),
                attempts=2,
            )
            if not known:
                return scheduler_pb2.WorkerHeartbeatReply(known=False)
            refs = [(r.ti_id, r.token) for r in request.running]
            unwanted = self.reports.heartbeat(refs) if refs else []
        except StoreUnavailableError:
            # The store is down: nobody can declare these attempts zombies or unwanted until it
            # is back (and reapers wait a zombie threshold after that), so the worker keeps its
            # lease and its running tasks, as DESIGN §5 asks of a database outage.
            log.warning(
                "store unavailable: renewing worker %s blindly",
                worker_id,
                extra={"event": "heartbeat_store_down"},
            )
            return scheduler_pb2.WorkerHeartbeatReply(known=True)
        return scheduler_pb2.WorkerHeartbeatReply(known=True, unwanted=_pb_refs(unwanted))

    # -- attempt reports ----------------------------------------------------------------
    @_edge
    def ReportAttempt(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.AttemptReport, context: grpc.ServicerContext
    ) -> scheduler_pb2.AttemptReportReply:
        """STARTED moves queued → running (and clears the try's XComs); an outcome ends it."""
        ti_id, token = _ref(request.attempt, request.HasField("attempt"))
        worker_id = _required(request.worker_id, "worker_id")
        event = event_name(request.event)
        parent = extract_context(context.invocation_metadata() or ())
        with _tracer.start_as_current_span(
            f"attempt {event.removeprefix('ATTEMPT_EVENT_').lower()}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "tradewind.ti_id": ti_id,
                "tradewind.token": token,
                "tradewind.worker": worker_id,
            },
        ):
            result, handed = self.attempts.apply(request, ti_id, token, worker_id)
        if not result.accepted and not result.reason.startswith("stale token"):
            log.warning(
                "refused %s report for attempt %s/%s from worker %s: %s",
                event,
                ti_id,
                token,
                worker_id,
                result.reason,
                extra={"event": "report_refused", "attempt": f"{ti_id}/{token}"},
            )
        return scheduler_pb2.AttemptReportReply(
            accepted=result.accepted, reason=result.reason, next=handed
        )

    # -- XCom, variables, logs ---------------------------------------------------------
    @_edge
    def PushXCom(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.XComPushRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.XComPushReply:
        """Store an XCom for the attempt's task instance, only while it runs under its token."""
        ti_id, token = _ref(request.attempt, request.HasField("attempt"))
        stored = self._serialize(ti_id, token, request.key, request.value)
        result = self.db.transaction(
            lambda c: store_xcom.push_xcom(
                c,
                ti_id,
                token,
                key=request.key,
                value=stored,
                max_bytes=self.options.max_xcom_bytes,
            )
        )
        if not result.accepted:
            if result.reason.startswith("stale token"):
                self.metrics.incr("scheduler.reports.stale")
            log.warning(
                "refused XCom %r from attempt %s/%s: %s",
                request.key[:100],
                ti_id,
                token,
                result.reason,
                extra={"event": "xcom_refused", "attempt": f"{ti_id}/{token}"},
            )
        return scheduler_pb2.XComPushReply(accepted=result.accepted, reason=result.reason)

    @_edge
    def PullXCom(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.XComPullRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.XComPullReply:
        """XComs of the attempt's run (or the run named): one entry per value of each task id
        asked for (found=false when it has none), or the newest match when none are named."""
        scope = self._readable_scope(request.attempt, request.HasField("attempt"))
        dag_id = request.dag_id or scope.dag_id
        run_id = request.run_id or scope.run_id
        key = request.key or None  # Airflow: an empty key removes the filter
        task_ids = list(request.task_ids)
        if not task_ids:
            row = self.db.read(
                lambda c: store_xcom.newest_xcom(c, dag_id=dag_id, run_id=run_id, key=key)
            )
            found = (
                []
                if row is None
                else [_pb.XComValue(task_id=row.task_id, found=True, value=self._wire(row))]
            )
            return scheduler_pb2.XComPullReply(values=found)
        rows = self.db.read(
            lambda c: store_xcom.pull_xcoms(
                c,
                dag_id=dag_id,
                run_id=run_id,
                task_ids=task_ids,
                key=key,
                limit=self.options.max_pull_values,
            )
        )
        values: list[scheduler_pb2.XComValue] = []
        for task_id in dict.fromkeys(task_ids):
            mine = [r for r in rows if r.task_id == task_id]
            values.extend(
                _pb.XComValue(task_id=task_id, found=True, value=self._wire(r)) for r in mine
            )
            if not mine:
                values.append(_pb.XComValue(task_id=task_id, found=False))
        return scheduler_pb2.XComPullReply(values=values)

    @_edge
    def GetVariable(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.VariableRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.VariableReply:
        """A variable's stored text, for a live attempt."""
        self._readable_scope(request.attempt, request.HasField("attempt"))
        key = _required(request.key, "key")
        row = self.db.read(lambda c: variables.get_variable(c, key))
        if row is None:
            return scheduler_pb2.VariableReply(found=False)
        return scheduler_pb2.VariableReply(found=True, value=row.val)

    @_edge
    def ShipLogs(  # noqa: N802 - the gRPC method name
        self, request: scheduler_pb2.LogChunksRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.LogChunksReply:
        """Append log chunks idempotently; `stored` counts those now durable."""
        chunks = [
            task_logs.LogChunkIn(
                ti_id=c.attempt.ti_id,
                token=c.attempt.token,
                try_number=c.try_number,
                seq=c.seq,
                data=c.data,
            )
            for c in request.chunks
        ]
        result = self.db.transaction(lambda c: task_logs.append_chunks(c, chunks))
        if result.dropped:
            log.warning(
                "dropped %d log chunk(s): %s",
                len(result.dropped),
                result.dropped[0],
                extra={"event": "log_chunks_dropped"},
            )
        return scheduler_pb2.LogChunksReply(stored=result.stored)

    # -- helpers ------------------------------------------------------------------------
    def _scope(self, ti_id: int, token: int) -> AttemptScope | None:
        return self.attempts.scope(ti_id, token)

    def _serialize(self, ti_id: int, token: int, key: str, wire: str) -> str:
        """The worker sends JSON; the configured backend decides what the store keeps (JSON
        itself, or a reference to where it put the value). A push the store will refuse
        anyway (stale token, not running, too large) is passed through for its refusal."""
        scope = self._scope(ti_id, token)
        if (
            scope is None
            or not scope.is_current
            or scope.ti_state != "running"
            or len(wire.encode()) > self.options.max_xcom_bytes
        ):
            return wire
        try:
            value = json.loads(wire)
        except ValueError:
            raise _RefusedError(
                grpc.StatusCode.INVALID_ARGUMENT, f"XCom {key!r} is not JSON"
            ) from None
        return self.xcom_backend.serialize_value(
            value, key=key, dag_id=scope.dag_id, run_id=scope.run_id, task_id=scope.task_id
        )

    def _wire(self, row: store_xcom.XComRow) -> str:
        """What the worker receives: the backend's value, as JSON."""
        record = XComRecord(
            dag_id=row.dag_id, run_id=row.run_id, task_id=row.task_id, key=row.key, value=row.value
        )
        return json.dumps(self.xcom_backend.deserialize_value(record))

    def _readable_scope(self, ref: common_pb2.AttemptRef, present: bool) -> AttemptScope:
        ti_id, token = _ref(ref, present)
        scope = self._scope(ti_id, token)
        if scope is None:
            raise _RefusedError(grpc.StatusCode.NOT_FOUND, f"unknown task instance {ti_id}")
        if not scope.is_current:
            raise _RefusedError(grpc.StatusCode.FAILED_PRECONDITION, scope.stale_reason())
        if scope.ti_state not in _READABLE:
            raise _RefusedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task instance {ti_id} is {scope.ti_state}: its attempt is no longer live",
            )
        return scope
