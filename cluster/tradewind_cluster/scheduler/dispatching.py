"""Step 6 of the loop: hand queued attempts to workers through the Dispatcher port. The
attempt and its fencing token were committed by the critical section before anything is sent;
an attempt no worker accepts goes back to scheduled and is queued again under a new token."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tradewind.spec import DagSpec, TaskSpec
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.specs import CachedDag
from tradewind_cluster.store import attempts as store_attempts
from tradewind_cluster.store import runs as store_runs
from tradewind_cluster.store import workers as store_workers
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.queueing import QueuedAttempt, RunFacts
from tradewind_cluster.store.snapshots import RunRow

__all__ = [
    "DispatchRequest",
    "DispatchResult",
    "DispatchStep",
    "Dispatcher",
    "dispatch_request",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRequest:
    """Everything a worker needs to run one attempt without asking the store."""

    attempt: QueuedAttempt
    task: TaskSpec
    dag: DagSpec
    file_hash: str
    run_context: Mapping[str, Any]  # run_id, logical date, data interval, conf, params
    task_json: str | None = None  # the task's canonical JSON, where the spec cache has it


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchResult:
    """A worker's answer for one attempt; `worker_id` is None when nobody accepted it."""

    ti_id: int
    token: int
    worker_id: str | None
    error: str | None = None
    trace_context: str | None = None  # traceparent of the dispatch span, stored with the attempt


class Dispatcher(Protocol):
    """The port to whatever runs attempts: gRPC workers, or an in-process fake in tests."""

    def dispatch(self, requests: Sequence[DispatchRequest]) -> list[DispatchResult]:
        """Send each attempt to a worker serving its queue; never raises for one bad attempt."""
        ...

    def queue_open(self) -> Mapping[str, int] | None:
        """Free worker slots per queue, or None when unknown (no limit on queueing)."""
        ...

    def capacity_changed(self) -> None:
        """An attempt ended here: a slot may be free, so queue_open must not answer from an
        older view (a stale "no free slot" would hold ready tasks until the view expires)."""
        ...


def _run_context(run: RunRow | RunFacts, q: QueuedAttempt, dag: DagSpec) -> dict[str, Any]:
    start, end = run.data_interval_start, run.data_interval_end
    return {
        "run_id": q.run_id,
        "run_type": run.run_type,
        "logical_date": q.logical_date.isoformat(),
        "data_interval_start": start.isoformat() if start else None,
        "data_interval_end": end.isoformat() if end else None,
        "conf": dict(run.conf),
        "params": dict(dag.params),
    }


def dispatch_request(
    q: QueuedAttempt, cached: CachedDag, run: RunRow | RunFacts
) -> DispatchRequest:
    """The request of one attempt from its DAG's cached version (which has the task) and its
    run."""
    return DispatchRequest(
        attempt=q,
        task=cached.spec.tasks[q.task_id],
        dag=cached.spec,
        file_hash=cached.file_hash or "",
        run_context=_run_context(run, q, cached.spec),
        task_json=cached.task_json(q.task_id),
    )


class DispatchStep:
    """Builds requests for attempts this replica queued and applies the workers' answers."""

    def __init__(self, ctx: SchedulerContext, dispatcher: Dispatcher) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        # Attempts this replica queued whose dispatch pass failed before its answers were
        # stored (the store went away): tried again next pass, not left queued until
        # scheduler.queued_timeout_s. Execute is idempotent per (ti_id, token).
        self._pending: dict[tuple[int, int], QueuedAttempt] = {}

    def has_pending(self) -> bool:
        """An earlier pass failed part-way: run_once must be called even with nothing new."""
        return bool(self._pending)

    def run_once(
        self, queued: Sequence[QueuedAttempt], now: datetime | None = None
    ) -> list[DispatchResult]:
        """Dispatch the given attempts (and those of a pass that failed); failures are
        requeued."""
        retried = list(self._pending.values())
        todo = {**self._pending, **{(q.ti_id, q.token): q for q in queued}}
        if not todo:
            return []
        self._pending = todo  # until this pass has stored the workers' answers
        now = now or self.ctx.clock()
        queued = list(todo.values())
        requests = [] if retried else self._requests_from_queueing(queued)
        if not requests:  # something the queueing statement did not give: read the store
            requests = self.ctx.db.read(lambda c: self._requests(c, queued, recheck=retried))
        results = self.dispatcher.dispatch(requests) if requests else []
        accepted_at = self.ctx.clock()
        if all(r.worker_id is not None for r in results):
            # The usual pass: every attempt accepted, the marks are one autocommit statement.
            self.ctx.db.statement(lambda c: self._apply(c, results, now))
        else:
            self.ctx.db.transaction(lambda c: self._apply(c, results, now))
        self._pending = {}
        for q in queued:
            self.ctx.metrics.incr("scheduler.tasks.dispatched", queue=q.queue)
        self._emit_latency(queued, results, accepted_at)
        return results

    def _emit_latency(
        self, queued: Sequence[QueuedAttempt], results: Sequence[DispatchResult], at: datetime
    ) -> None:
        """scheduler.dispatch.latency: from queued to accepted by a worker."""
        by_ref = {(q.ti_id, q.token): q for q in queued}
        for r in results:
            q = by_ref.get((r.ti_id, r.token))
            if r.worker_id is not None and q is not None and q.queued_at is not None:
                latency = max(0.0, (at - q.queued_at).total_seconds())
                self.ctx.metrics.timing("scheduler.dispatch.latency", latency, queue=q.queue)

    def _requests_from_queueing(self, queued: Sequence[QueuedAttempt]) -> list[DispatchRequest]:
        """The requests of attempts the critical section just queued, built from what its
        statement returned (run and spec version) and the spec cache, with no statement of
        their own; [] when something is missing (the caller reads the store instead)."""
        facts: list[tuple[QueuedAttempt, RunFacts, str]] = []
        for q in queued:
            if q.run is None or q.run.spec_hash is None:
                return []
            facts.append((q, q.run, q.run.spec_hash))
        dags = self.ctx.specs.cached({q.dag_id: spec_hash for q, _, spec_hash in facts})
        if dags is None:
            return []
        out: list[DispatchRequest] = []
        for q, run, _ in facts:
            cached = dags[q.dag_id]
            if q.task_id not in cached.spec.tasks:
                return []  # a version without the task: the read path skips it and says so
            out.append(dispatch_request(q, cached, run))
        return out

    def _requests(
        self,
        conn: Connection,
        queued: Sequence[QueuedAttempt],
        recheck: Sequence[QueuedAttempt] = (),
    ) -> list[DispatchRequest]:
        if recheck:  # retried: only those still queued under that token and not yet accepted
            wanted = {(q.ti_id, q.token) for q in recheck}
            still = store_workers.undispatched(conn, sorted(wanted))
            queued = [q for q in queued if (q.ti_id, q.token) not in wanted - still]
        # One version of each DAG for spec, file hash and task JSON alike: another thread may
        # refresh the cache meanwhile, and a request must not mix two versions.
        dags = self.ctx.specs.entries(conn, [q.dag_id for q in queued])
        runs = store_runs.runs_by_key(conn, [(q.dag_id, q.run_id) for q in queued])
        out: list[DispatchRequest] = []
        for q in queued:
            cached, run = dags.get(q.dag_id), runs.get((q.dag_id, q.run_id))
            if cached is None or run is None or q.task_id not in cached.spec.tasks:
                continue
            out.append(dispatch_request(q, cached, run))
        return out

    def _apply(self, conn: Connection, results: Sequence[DispatchResult], now: datetime) -> None:
        accepted = [
            store_attempts.Dispatched(
                ti_id=r.ti_id, token=r.token, worker_id=r.worker_id, trace_context=r.trace_context
            )
            for r in results
            if r.worker_id is not None
        ]
        store_attempts.mark_dispatched_many(conn, accepted, now=now)
        for r in results:
            if r.worker_id is not None:
                continue
            reason = f"dispatch failed: {r.error or 'no worker accepted it'}"
            store_attempts.requeue_attempt(conn, r.ti_id, r.token, reason=reason, now=now)
            self.ctx.metrics.incr("scheduler.tasks.requeued", reason="dispatch_failed")
            log.warning(
                "attempt %s/%s requeued: %s",
                r.ti_id,
                r.token,
                reason,
                extra={"event": "dispatch_failed"},
            )
