"""The Worker gRPC service schedulers call: Execute (validated, idempotent per token, traced),
Cancel, Status and Tail. Bad requests get a clear refusal, never an exception."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace

from tradewind.errors import BadInputError
from tradewind.spec import TaskKind
from tradewind_cluster.observability.tracing import extract_context, inject_env, tracer
from tradewind_cluster.worker.executor import Attempt, AttemptOrder, KillKind
from tradewind_cluster.worker.logs import CHUNK_BYTES, read_chunks, utf8_complete
from tradewind_cluster.worker.outcomes import declined_report
from tradewind_cluster.worker.runtime import task_header
from tradewind_proto.v1 import common_pb2, worker_pb2, worker_pb2_grpc

if TYPE_CHECKING:
    from tradewind_cluster.worker.agent import WorkerAgent

__all__ = ["WorkerService", "order_from_request"]

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
_FOLLOW_POLL_S = 0.1


def order_from_request(req: worker_pb2.ExecuteRequest) -> AttemptOrder:
    """An Execute request checked field by field; BadInputError says what is wrong."""
    ref = req.attempt
    if ref.ti_id <= 0 or ref.token <= 0:
        raise BadInputError("attempt.ti_id and attempt.token must be positive")
    for name in ("dag_id", "run_id", "task_id"):
        if not getattr(req, name):
            raise BadInputError(f"{name} is empty")
    if req.try_number < 0:
        raise BadInputError(f"try_number must not be negative, got {req.try_number}")
    timeout = req.execution_timeout_s
    if not math.isfinite(timeout) or timeout < 0:
        raise BadInputError(f"execution_timeout_s must be a finite number >= 0, got {timeout}")
    kind, queue = task_header(req.task_json, req.task_id)
    if kind is TaskKind.EMPTY:
        raise BadInputError(f"task {req.task_id!r} is an EmptyOperator: it needs no worker")
    if kind is TaskKind.CALLABLE and not req.fileloc:
        raise BadInputError(f"task {req.task_id!r} runs Python code but fileloc is empty")
    return AttemptOrder(
        ti_id=ref.ti_id,
        token=ref.token,
        dag_id=req.dag_id,
        run_id=req.run_id,
        task_id=req.task_id,
        try_number=req.try_number,
        logical_date=req.logical_date,
        fileloc=req.fileloc,
        file_hash=req.file_hash,
        task_json=req.task_json,
        context_json=req.context_json,
        queue=req.queue or queue,
        kind=kind,
        execution_timeout_s=timeout or None,
    )


class WorkerService(worker_pb2_grpc.WorkerServicer):
    """Serves one agent's attempts."""

    def __init__(self, agent: WorkerAgent) -> None:
        self.agent = agent

    def add_to(self, server: grpc.Server) -> None:
        """Register on a gRPC server."""
        worker_pb2_grpc.add_WorkerServicer_to_server(self, server)

    def Execute(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.ExecuteRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ExecuteReply:
        """Accept (and start) or refuse one attempt."""
        return self._execute(request, dict(context.invocation_metadata() or ()))

    def ExecuteBatch(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.ExecuteBatchRequest, context: grpc.ServicerContext
    ) -> worker_pb2.ExecuteBatchReply:
        """Each attempt as Execute would take it; the replies in the order of the requests."""
        carrier = dict(context.invocation_metadata() or ())
        return worker_pb2.ExecuteBatchReply(
            replies=[self._execute_safely(attempt, carrier) for attempt in request.attempts]
        )

    def _execute_safely(
        self, request: worker_pb2.ExecuteRequest, carrier: dict[str, Any]
    ) -> worker_pb2.ExecuteReply:
        """One attempt of a batch: an unexpected error refuses that attempt only. Failing the
        whole call would leave the scheduler unsure which attempts had started here."""
        try:
            return self._execute(request, carrier)
        except Exception as exc:
            log.exception(
                "could not take attempt %s/%s", request.attempt.ti_id, request.attempt.token
            )
            return worker_pb2.ExecuteReply(accepted=False, reason=f"worker error: {exc}")

    def execute_handed(self, request: worker_pb2.ExecuteRequest) -> None:
        """An attempt a report's reply handed this worker (eager dispatch), run as Execute
        would; one it does not start (its slot was taken meanwhile, the worker began to drain)
        is declined, so the scheduler queues it again."""
        try:
            reply = self._execute(request, {})
        except Exception as exc:
            log.exception("could not take handed attempt %s", request.attempt.ti_id)
            reply = worker_pb2.ExecuteReply(accepted=False, reason=f"worker error: {exc}")
        if not reply.accepted:
            ref = request.attempt
            self.agent.reporter.submit(declined_report(ref.ti_id, ref.token, reply.reason))

    def _execute(
        self, request: worker_pb2.ExecuteRequest, carrier: dict[str, Any]
    ) -> worker_pb2.ExecuteReply:
        try:
            order = order_from_request(request)
        except BadInputError as exc:
            log.warning("refused a malformed Execute: %s", exc, extra={"event": "bad_execute"})
            return worker_pb2.ExecuteReply(accepted=False, reason=f"bad request: {exc}")
        admission = self.agent.executor.admit(order, refusal=self.agent.refusal())
        attempt = admission.attempt
        if attempt is None:
            if not admission.accepted:
                log.info(
                    "refused attempt %s: %s",
                    order.key,
                    admission.reason,
                    extra={"event": "execute_refused", "attempt": order.key},
                )
            return worker_pb2.ExecuteReply(accepted=admission.accepted, reason=admission.reason)
        try:
            # The attempt's own trace context first (a batch carries one per attempt).
            if request.traceparent:
                carrier = {**carrier, "traceparent": request.traceparent}
            self._start(attempt, carrier)
        except Exception as exc:  # the RPC edge: free the slot, tell the caller, carry on
            log.exception("could not start attempt %s", order.key)
            self.agent.executor.discard(attempt)
            return worker_pb2.ExecuteReply(accepted=False, reason=f"worker error: {exc}")
        return worker_pb2.ExecuteReply(accepted=True)

    def _start(self, attempt: Attempt, carrier: dict[str, Any]) -> None:
        order = attempt.order
        parent = extract_context(carrier)
        attempt.span = _tracer.start_span(
            "task.execute",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "dag_id": order.dag_id,
                "task_id": order.task_id,
                "run_id": order.run_id,
                "try_number": order.try_number,
                "ti_id": order.ti_id,
            },
        )
        trace_env = inject_env(trace.set_span_in_context(attempt.span))
        launch = self.agent.launch_for(attempt, trace_env)
        self.agent.track_logs(attempt)
        log.info(
            "running attempt %s: %s.%s %s try %s",
            order.key,
            order.dag_id,
            order.task_id,
            order.run_id,
            order.try_number,
            extra={"event": "execute_accepted", "attempt": order.key, "dag_id": order.dag_id},
        )
        self.agent.executor.launch(attempt, launch)

    def Cancel(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.CancelRequest, context: grpc.ServicerContext
    ) -> worker_pb2.CancelReply:
        """Kill an attempt the scheduler no longer wants run."""
        why = request.reason or "no reason given"
        found = self.agent.executor.kill(
            request.attempt.ti_id,
            request.attempt.token,
            KillKind.CANCELLED,
            f"killed: cancelled by the scheduler ({why})",
            grace_s=self.agent.options.kill_grace_s,
        )
        return worker_pb2.CancelReply(found=found)

    def Status(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> worker_pb2.WorkerStatus:
        """This worker's identity, slots and running attempts."""
        executor = self.agent.executor
        return worker_pb2.WorkerStatus(
            worker_id=self.agent.worker_id,
            slots=self.agent.options.slots,
            free_slots=executor.free_slots(),
            running=[
                common_pb2.AttemptRef(ti_id=ti_id, token=token)
                for ti_id, token in executor.running_refs()
            ],
            draining=self.agent.draining,
        )

    def Tail(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.TailRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.TailChunk]:
        """Stream an attempt's log; with follow, until the attempt ends."""
        attempt = self.agent.executor.find(request.attempt.ti_id, request.attempt.token)
        if attempt is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"attempt {request.attempt.ti_id}/{request.attempt.token} is not on this worker",
            )
            return
        offset = attempt.log_start
        while True:
            finished = attempt.done.is_set()  # read before the file, so no tail end is missed
            data, _ = read_chunks(attempt.log_path, offset, CHUNK_BYTES)
            # Hold back a character cut in half, unless nothing else will come.
            data = data if finished else data[: utf8_complete(data)]
            if data:
                offset += len(data)
                yield worker_pb2.TailChunk(data=data.decode("utf-8", errors="replace"))
                continue
            if not request.follow or finished or not context.is_active():
                return
            attempt.done.wait(_FOLLOW_POLL_S)
