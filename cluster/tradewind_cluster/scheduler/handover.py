"""Eager dispatch, the scheduler's side once the store handed an attempt over (store/eager.py):
the attempt's spans (task.schedule when the report scheduled it, task.queue, task.dispatch, as
the loop's steps record them, so the run stays one trace), the metric the critical section sends
and the ExecuteRequest the report's reply carries."""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind

from tradewind_cluster.observability.tracing import (
    context_from,
    keyed_context,
    record_span,
    spans_recorded,
    traceparent,
    tracer,
)
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.dispatching import dispatch_request
from tradewind_cluster.scheduler.examiner import schedule_span_key
from tradewind_cluster.scheduler.execute_requests import build_execute_request
from tradewind_cluster.scheduler.specs import CachedDag
from tradewind_cluster.store import attempts as store_attempts
from tradewind_cluster.store.queueing import QueuedAttempt
from tradewind_proto.v1 import worker_pb2

__all__ = ["handed_request", "request_again"]

_tracer = tracer(__name__)


def handed_request(ctx: SchedulerContext, q: QueuedAttempt) -> worker_pb2.ExecuteRequest | None:
    """The request for an attempt a report handed its worker; None when its DAG's version is
    gone from the store (the caller puts the attempt back to scheduled)."""
    cached = _cached_dag(ctx, q)
    if cached is None:
        return None
    waited = q.scheduled_for
    if q.first_try and waited is not None:
        ctx.metrics.timing(
            "task.scheduled_duration", max(0.0, waited), dag_id=q.dag_id, task_id=q.task_id
        )
    return _request(q, cached, _trace(ctx, q))


def request_again(
    ctx: SchedulerContext, q: QueuedAttempt, dispatched: str | None
) -> worker_pb2.ExecuteRequest | None:
    """The request of an attempt handed before, for the reply to the same report sent again:
    as `handed_request` builds it, under its task.dispatch span's traceparent when stored
    (`dispatched`), without recording its spans and metric a second time."""
    cached = _cached_dag(ctx, q)
    return None if cached is None else _request(q, cached, dispatched)


def _request(q: QueuedAttempt, cached: CachedDag, parent: str | None) -> worker_pb2.ExecuteRequest:
    """The ExecuteRequest under `parent`'s trace context, else the run's."""
    assert q.run is not None
    return build_execute_request(
        dispatch_request(q, cached, q.run), traceparent=parent or q.run_trace_context
    )


def _cached_dag(ctx: SchedulerContext, q: QueuedAttempt) -> CachedDag | None:
    """The DAG version the attempt's run names, when it still has the attempt's task."""
    assert q.run is not None
    spec_hash = q.run.spec_hash
    if spec_hash is None:
        return None
    hashes = {q.dag_id: spec_hash}
    dags = ctx.specs.cached(hashes)
    if dags is None:  # a task instance of a DAG this replica has not decoded yet
        dags = ctx.db.read(lambda c: ctx.specs.for_hashes(c, hashes))
    cached = dags.get(q.dag_id)
    if cached is None or q.task_id not in cached.spec.tasks:
        return None
    return cached


def _trace(ctx: SchedulerContext, q: QueuedAttempt) -> str | None:
    """The spans the loop's steps would have recorded for this attempt; returns the traceparent
    of its task.dispatch span (stored with the attempt when spans are exported)."""
    run = q.run_trace_context
    if run is None:
        return None
    started = time.time_ns()
    attributes: dict[str, str | int | bool] = {
        "tradewind.dag_id": q.dag_id,
        "tradewind.run_id": q.run_id,
        "tradewind.task_id": q.task_id,
        "tradewind.ti_id": q.ti_id,
    }
    scheduled_here = q.scheduled_at is not None and q.scheduled_at == q.queued_at
    if scheduled_here and q.scheduled_at is not None:
        record_span(
            "task.schedule",
            context_from(run),
            key=schedule_span_key(q.ti_id, q.scheduled_at),
            attributes={**attributes, "tradewind.try_number": q.try_number},
            start_time=started,
        )
    queue_parent = (
        keyed_context(run, schedule_span_key(q.ti_id, q.scheduled_at))
        if q.scheduled_at is not None
        else context_from(run)
    )
    queued = record_span(
        "task.queue",
        queue_parent,
        attributes={
            **attributes,
            "tradewind.token": q.token,
            "tradewind.pool": q.pool,
            "tradewind.queue": q.queue,
        },
        start_time=started,
    )
    span = _tracer.start_span(
        "task.dispatch",
        context=context_from(queued),
        kind=SpanKind.CLIENT,
        attributes={**attributes, "tradewind.token": q.token, "tradewind.eager": True},
    )
    span.end()
    dispatched = traceparent(span)
    if dispatched is not None and spans_recorded():
        ctx.db.statement(
            lambda c: store_attempts.update_attempt(c, q.ti_id, q.token, trace_context=dispatched)
        )
    return dispatched
