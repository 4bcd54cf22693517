"""The gRPC Dispatcher: hands queued attempts to live workers serving their queue, least loaded
first, never past a worker's free slots, a pass's attempts for one worker in one ExecuteBatch.
A failed RPC is retried with jittered, capped backoff; a refused attempt is offered to another
worker; one whose call kept failing (it may have started there) or that nobody accepts comes
back with worker_id=None and the reason, and the dispatch step requeues it under a new token.
Execute is idempotent per token on the worker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.trace import Span, SpanKind
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from tradewind_cluster.config import Settings
from tradewind_cluster.observability.metrics import Metrics
from tradewind_cluster.observability.tracing import (
    context_from,
    inject_context,
    traceparent,
    tracer,
)
from tradewind_cluster.rpc.security import call_metadata
from tradewind_cluster.rpc.server import RpcOptions, open_channel
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.dispatching import DispatchRequest, DispatchResult
from tradewind_cluster.scheduler.execute_requests import build_execute_request
from tradewind_cluster.scheduler.worker_board import WorkerBoard
from tradewind_cluster.store import workers as store_workers
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import QueuedAttempt
from tradewind_cluster.store.workers import WorkerRow
from tradewind_proto.v1 import worker_pb2, worker_pb2_grpc

__all__ = ["GrpcDispatchOptions", "GrpcDispatcher"]

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
_EXECUTE = "/tradewind.v1.Worker/Execute"
_EXECUTE_BATCH = "/tradewind.v1.Worker/ExecuteBatch"
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcDispatchOptions:
    """Retries, liveness and accounting of the dispatcher."""

    rpc: RpcOptions = field(default_factory=RpcOptions)
    retry_attempts: int = 3  # RPC attempts per worker before trying another
    retry_multiplier_s: float = 0.05
    retry_max_wait_s: float = 1.0
    workers_per_attempt: int = 3  # distinct workers tried while they refuse (not on RPC failure)
    worker_max_age_s: float = 4.0  # a worker silent for its lease cannot run anything
    queue_open_ttl_s: float = 0.5
    # A board read this recently (by the same pass's queue step) serves a dispatch as it is:
    # slots taken since are held by in-flight entries, slots freed since are seen next pass.
    board_reuse_s: float = 0.05
    suspect_cooldown_s: float = 5.0  # this replica skips a suspect worker for that long
    inflight_ttl_s: float = 60.0
    parallel_rpcs: int = 8
    max_workers: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings, rpc: RpcOptions) -> GrpcDispatchOptions:
        """Take the values from a validated settings tree; `rpc` carries the credentials."""
        return cls(
            rpc=rpc,
            retry_attempts=settings.scheduler.dispatch_retry_attempts,
            worker_max_age_s=settings.worker.lease_s,
        )


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in _TRANSIENT


@dataclass(slots=True)
class _Send:
    accepted: bool
    reason: str = ""
    broken: bool = False  # the RPC itself failed (after retries): the worker is suspect


@dataclass(slots=True)
class _Batch:
    """One worker's share of a dispatch pass: (index, request, span, message) each."""

    worker: WorkerRow
    items: list[tuple[int, DispatchRequest, Span, worker_pb2.ExecuteRequest]] = field(
        default_factory=list
    )
    size: int = 0  # bytes of the messages


@dataclass(slots=True)
class _BatchSent:
    replies: list[worker_pb2.ExecuteReply] = field(default_factory=list)
    reason: str = ""
    broken: bool = False  # the call failed after its retries: the worker is suspect
    unimplemented: bool = False  # a worker without ExecuteBatch: one Execute per attempt


def _span_attributes(a: QueuedAttempt) -> dict[str, Any]:
    return {
        "tradewind.dag_id": a.dag_id,
        "tradewind.task_id": a.task_id,
        "tradewind.ti_id": a.ti_id,
        "tradewind.token": a.token,
        "tradewind.queue": a.queue,
    }


class GrpcDispatcher:
    """Implements the Dispatcher port over gRPC; one per replica, safe to share between threads."""

    def __init__(
        self,
        db: Database,
        options: GrpcDispatchOptions | None = None,
        *,
        metrics: Metrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.options = options or GrpcDispatchOptions()
        self.metrics = metrics or Metrics()
        self._sleep = sleep
        self.board = WorkerBoard(db, self.options, self.metrics, monotonic)
        self._lock = threading.Lock()  # guards the sets and maps below
        self._dispatching = threading.Lock()  # one dispatch() at a time
        self._no_batch: set[str] = set()  # workers that answered ExecuteBatch UNIMPLEMENTED
        self._stubs: dict[str, tuple[grpc.Channel, worker_pb2_grpc.WorkerStub]] = {}
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_replica(
        cls, ctx: SchedulerContext, settings: Settings, rpc: RpcOptions
    ) -> GrpcDispatcher:
        """The dispatcher a scheduler replica uses, sharing its store and metrics."""
        return cls(ctx.db, GrpcDispatchOptions.from_settings(settings, rpc), metrics=ctx.metrics)

    # -- the Dispatcher port -------------------------------------------------------------
    def dispatch(self, requests: Sequence[DispatchRequest]) -> list[DispatchResult]:
        """Send each attempt to a worker; one bad attempt or worker never fails the others."""
        if not requests:
            return []
        with self._dispatching:
            self.board.refresh_if_old()
            if len(requests) == 1:
                results = [self._dispatch_safely(requests[0])]
            else:
                results = self._dispatch_batched(requests)
            self.board.capacity_changed()  # the slots just taken
        return results

    def queue_open(self) -> Mapping[str, int] | None:
        """Free slots per queue over live workers, less attempts queued but not yet accepted by
        any worker; cached for queue_open_ttl_s (see WorkerBoard.queue_open)."""
        return self.board.queue_open()

    def capacity_changed(self) -> None:
        """Drop the cached free-slot view: the next queue_open reads the store again."""
        self.board.capacity_changed()

    def close(self) -> None:
        """Stop the RPC threads and close every channel."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            stubs, self._stubs = self._stubs, {}
        for channel, _ in stubs.values():
            channel.close()

    # -- a pass's attempts: one call per worker --------------------------------------------
    def _dispatch_batched(self, requests: Sequence[DispatchRequest]) -> list[DispatchResult]:
        """Each attempt's first try in one ExecuteBatch per worker (the calls in parallel, a
        batch split under half the message limit). An attempt the worker refused goes the
        one-at-a-time way, past that worker. One whose fate is unknown (the call failed after
        its retries, or no reply came for it) may be running there: it comes back unassigned,
        so the dispatch step queues it again under a new token, which fences that copy. A
        worker without ExecuteBatch (an older version) gets one Execute per attempt."""
        results: dict[int, DispatchResult] = {}
        later: dict[int, tuple[set[str], list[str]]] = {}
        batches = self._batches(requests, results, later)
        for batch, sent in zip(batches, self._send_all(batches), strict=True):
            w = batch.worker
            for k, (i, req, span, _) in enumerate(batch.items):
                a = req.attempt
                reply = sent.replies[k] if k < len(sent.replies) else None
                span.end()
                if reply is not None and reply.accepted:
                    results[i] = DispatchResult(
                        ti_id=a.ti_id,
                        token=a.token,
                        worker_id=w.id,
                        trace_context=traceparent(span),
                    )
                elif sent.unimplemented:  # still reserved there: _pick sends it to w again
                    later[i] = (set(), [])
                elif reply is not None:
                    self.board.release((a.ti_id, a.token), w.id)
                    self.metrics.incr(
                        "scheduler.dispatch.failures", queue=a.queue, reason="refused"
                    )
                    why = f"worker {w.id}: refused: {reply.reason or 'no reason given'}"
                    later[i] = ({w.id}, [why])
                else:
                    self.board.release((a.ti_id, a.token), w.id)
                    why = sent.reason or "no reply for this attempt"
                    results[i] = DispatchResult(
                        ti_id=a.ti_id,
                        token=a.token,
                        worker_id=None,
                        error=f"worker {w.id}: {why} (it may have started: queued again)",
                    )
            if sent.broken:
                self._suspect(w, sent.reason)
        for i, (tried, errors) in sorted(later.items()):
            results[i] = self._dispatch_safely(requests[i], tried, errors)
        return [results[i] for i in range(len(requests))]

    def _batches(
        self,
        requests: Sequence[DispatchRequest],
        results: dict[int, DispatchResult],
        later: dict[int, tuple[set[str], list[str]]],
    ) -> list[_Batch]:
        """Pick a worker for each attempt and group the messages per worker, each batch under
        half the message limit; what cannot be batched goes to `later` (or `results`)."""
        limit = self.options.rpc.max_message_bytes // 2
        batches: list[_Batch] = []
        open_: dict[str, _Batch] = {}
        for i, req in enumerate(requests):
            a = req.attempt
            ref = (a.ti_id, a.token)
            worker = self.board.pick(a.queue, ref, set())
            if worker is None or worker.id in self._no_batch:
                later[i] = (set(), [])  # _dispatch_one picks again (the holder, if reserved)
                continue
            span = _tracer.start_span(
                "task.dispatch",
                context=context_from(a.trace_context),
                kind=SpanKind.CLIENT,
                attributes={**_span_attributes(a), "tradewind.worker": worker.id},
            )
            try:
                message = build_execute_request(req, traceparent=traceparent(span))
                size = message.ByteSize()
            except Exception as exc:  # this attempt only: the pass goes on
                span.end()
                self.board.release(ref, worker.id)
                log.exception("cannot build the request of attempt %s/%s", a.ti_id, a.token)
                results[i] = DispatchResult(
                    ti_id=a.ti_id,
                    token=a.token,
                    worker_id=None,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            batch = open_.get(worker.id)
            if batch is None or (batch.items and batch.size + size > limit):
                batch = open_[worker.id] = _Batch(worker)
                batches.append(batch)
            batch.items.append((i, req, span, message))
            batch.size += size
        return batches

    def _send_all(self, batches: list[_Batch]) -> list[_BatchSent]:
        """Each batch's call; calls to different workers in parallel."""
        if len(batches) <= 1 or self.options.parallel_rpcs <= 1:
            return [self._send_batch(b) for b in batches]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.options.parallel_rpcs, thread_name_prefix="dispatch"
            )
        return list(self._pool.map(self._send_batch, batches))

    def _send_batch(self, batch: _Batch) -> _BatchSent:
        stub = self._stub(batch.worker.grpc_address)
        opts = self.options
        queue = batch.items[0][1].attempt.queue
        request = worker_pb2.ExecuteBatchRequest(attempts=[m for *_, m in batch.items])
        try:
            with self.metrics.timer("scheduler.dispatch.duration", queue=queue):
                reply = self._retrying()(
                    stub.ExecuteBatch,
                    request,
                    timeout=opts.rpc.call_timeout_s,
                    metadata=call_metadata(opts.rpc.security),
                )
        except grpc.RpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED:
                with self._lock:
                    self._no_batch.add(batch.worker.id)
                return _BatchSent(unimplemented=True)
            self.metrics.incr("rpc.errors", method=_EXECUTE_BATCH, code=code.name)
            self.metrics.incr("scheduler.dispatch.failures", queue=queue, reason="rpc_error")
            return _BatchSent(reason=f"{code.name}: {exc.details()}", broken=True)
        except Exception as exc:
            log.exception("ExecuteBatch to worker %s failed", batch.worker.id)
            self.metrics.incr("scheduler.dispatch.failures", queue=queue, reason="rpc_error")
            return _BatchSent(reason=f"{type(exc).__name__}: {exc}", broken=True)
        return _BatchSent(replies=list(reply.replies))

    # -- one attempt ----------------------------------------------------------------------
    def _dispatch_safely(
        self, req: DispatchRequest, tried: set[str] | None = None, errors: list[str] | None = None
    ) -> DispatchResult:
        a = req.attempt
        try:
            return self._dispatch_one(req, tried=tried or set(), errors=errors or [])
        except Exception as exc:
            log.exception(
                "dispatching attempt %s/%s failed",
                a.ti_id,
                a.token,
                extra={"event": "dispatch_error", "attempt": f"{a.ti_id}/{a.token}"},
            )
            return DispatchResult(
                ti_id=a.ti_id, token=a.token, worker_id=None, error=f"{type(exc).__name__}: {exc}"
            )

    def _dispatch_one(
        self, req: DispatchRequest, *, tried: set[str], errors: list[str]
    ) -> DispatchResult:
        a = req.attempt
        ref = (a.ti_id, a.token)
        # A child of the attempt's task.queue span; the worker's task.execute is its child.
        with _tracer.start_as_current_span(
            "task.dispatch",
            context=context_from(a.trace_context),
            kind=SpanKind.CLIENT,
            attributes=_span_attributes(a),
        ) as span:
            message = build_execute_request(req)
            while len(tried) < self.options.workers_per_attempt:
                worker = self.board.pick(a.queue, ref, tried)
                if worker is None:
                    break
                tried.add(worker.id)
                sent = self._send(worker, message, a.queue)
                if sent.accepted:
                    span.set_attribute("tradewind.worker", worker.id)
                    return DispatchResult(
                        ti_id=a.ti_id,
                        token=a.token,
                        worker_id=worker.id,
                        trace_context=traceparent(span),
                    )
                self.board.release(ref, worker.id)
                errors.append(f"worker {worker.id}: {sent.reason}")
                if sent.broken:
                    # The call failed after its retries, but the worker may have started the
                    # attempt: another worker under the same token could run it twice. It goes
                    # back unassigned; the dispatch step queues it again under a new token.
                    self._suspect(worker, sent.reason)
                    errors[-1] += " (it may have started: queued again)"
                    break
        if not errors:
            self.metrics.incr("scheduler.dispatch.failures", queue=a.queue, reason="no_worker")
            errors.append(f"no live worker serves queue {a.queue!r} with a free slot")
        return DispatchResult(ti_id=a.ti_id, token=a.token, worker_id=None, error="; ".join(errors))

    def _retrying(self) -> Retrying:
        """Transient RPC failures retried on the same worker, with jittered, capped backoff."""
        opts = self.options
        return Retrying(
            stop=stop_after_attempt(opts.retry_attempts),
            wait=wait_random_exponential(
                multiplier=opts.retry_multiplier_s, max=opts.retry_max_wait_s
            ),
            retry=retry_if_exception(_transient),
            sleep=self._sleep,
            reraise=True,
        )

    def _send(self, worker: WorkerRow, message: worker_pb2.ExecuteRequest, queue: str) -> _Send:
        stub = self._stub(worker.grpc_address)
        opts = self.options
        metadata = (*call_metadata(opts.rpc.security), *inject_context().items())
        try:
            with self.metrics.timer("scheduler.dispatch.duration", queue=queue):
                reply = self._retrying()(
                    stub.Execute, message, timeout=opts.rpc.call_timeout_s, metadata=metadata
                )
        except grpc.RpcError as exc:
            code = exc.code()
            self.metrics.incr("rpc.errors", method=_EXECUTE, code=code.name)
            self.metrics.incr("scheduler.dispatch.failures", queue=queue, reason="rpc_error")
            return _Send(accepted=False, reason=f"{code.name}: {exc.details()}", broken=True)
        if not reply.accepted:
            self.metrics.incr("scheduler.dispatch.failures", queue=queue, reason="refused")
            return _Send(accepted=False, reason=f"refused: {reply.reason or 'no reason given'}")
        return _Send(accepted=True)

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        with self._lock:
            entry = self._stubs.get(address)
            if entry is None:
                channel = open_channel(address, self.options.rpc)
                entry = (channel, worker_pb2_grpc.WorkerStub(channel))
                self._stubs[address] = entry
            return entry[1]

    def _suspect(self, worker: WorkerRow, reason: str) -> None:
        """This worker kept failing: skip it here for a while and mark it suspect for all."""
        self.board.cool(worker.id)
        try:
            marked = self.db.transaction(lambda c: store_workers.mark_suspect(c, worker.id))
        except Exception:
            log.warning("could not mark worker %s suspect", worker.id, exc_info=True)
            return
        if marked:
            log.warning(
                "worker %s at %s marked suspect: %s",
                worker.id,
                worker.grpc_address,
                reason,
                extra={"event": "worker_suspect", "worker": worker.id},
            )
