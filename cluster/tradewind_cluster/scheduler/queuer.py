"""Step 5 of the loop: the critical section, pool by pool. Pools are visited in an order of
this replica's own shuffling, so replicas spread over pools instead of queueing behind one.
Each attempt queued gets a "task.queue" span, a child of its task.schedule span."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

from tradewind.scheduling.admission import StarvationReason, admit
from tradewind_cluster.observability.tracing import context_from, keyed_context, record_span
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.examiner import schedule_span_key
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.queueing import (
    PoolOutcome,
    QueuedAttempt,
    pools_with_scheduled,
    queue_pool,
)

__all__ = ["QueueReport", "Queuer"]

log = logging.getLogger(__name__)

SKIP_FULL_AT_MOST_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueReport:
    """What one pass queued, and how many pools were busy with another replica."""

    queued: tuple[QueuedAttempt, ...] = ()
    busy_pools: int = 0
    starving: int = 0


class Queuer:
    """Moves scheduled task instances to queued within every limit (see store.queueing)."""

    def __init__(
        self,
        ctx: SchedulerContext,
        queue_open: Callable[[], Mapping[str, int] | None] = lambda: None,
    ) -> None:
        self.ctx = ctx
        self._queue_open = queue_open  # free worker slots per queue (None: unknown, no limit)
        self._last_queue_open: Mapping[str, int] | None = None
        self._explained: dict[tuple[str, str, str], float] = {}
        self._last_full_check = float("-inf")

    def run_once(
        self, now: datetime | None = None, pools: frozenset[str] | None = None
    ) -> QueueReport:
        """One critical section per pool with scheduled work (or the pools given)."""
        now = now or self.ctx.clock()
        queue_open = self._last_queue_open = self._queue_open()
        if self._all_slots_taken(queue_open):
            return QueueReport()
        todo = (
            sorted(pools)
            if pools is not None
            else self.ctx.db.read(lambda c: pools_with_scheduled(c))
        )
        self.ctx.rng.shuffle(todo)
        queued: list[QueuedAttempt] = []
        busy = starving = 0
        with self.ctx.metrics.timer("scheduler.critical_section_duration"):
            for name in todo:
                started_ns = time.time_ns()
                with self.ctx.metrics.timer("scheduler.critical_section_query_duration"):
                    outcome = self.ctx.db.transaction(
                        partial(self._one, pool_name=name, now=now, queue_open=queue_open)
                    )
                if outcome is None:
                    busy += 1
                    self.ctx.metrics.incr("scheduler.critical_section_busy")
                    continue
                queued.extend(self._traced(a, started_ns) for a in outcome.queued)
                starving += self._emit(outcome)
        self.ctx.metrics.gauge("scheduler.tasks.executable", len(queued))
        self.ctx.metrics.gauge("scheduler.tasks.starving", starving)
        return QueueReport(queued=tuple(queued), busy_pools=busy, starving=starving)

    def _all_slots_taken(self, queue_open: Mapping[str, int] | None) -> bool:
        """Every live worker's slots are taken: no candidate can be admitted, so the critical
        section (which locks and weighs every scheduled task instance) is skipped. A finished
        attempt reported here refreshes the view at once. Every SKIP_FULL_AT_MOST_S the section
        runs anyway, for the starvation gauges and the log of queues no worker serves."""
        if not queue_open or any(queue_open.values()):
            return False
        now = time.monotonic()
        if now - self._last_full_check < SKIP_FULL_AT_MOST_S:
            return True
        self._last_full_check = now
        return False

    def _one(
        self,
        conn: Connection,
        *,
        pool_name: str,
        now: datetime,
        queue_open: Mapping[str, int] | None,
    ) -> PoolOutcome | None:
        opts = self.ctx.options
        return queue_pool(
            conn,
            pool_name,
            member_id=self.ctx.member_id,
            decide=admit,
            now=now,
            max_tis=opts.max_tis_per_query,
            parallelism=opts.parallelism,
            queue_open=queue_open,
        )

    def _traced(self, a: QueuedAttempt, started_ns: int) -> QueuedAttempt:
        """Record the attempt's task.queue span (and task.scheduled_duration, which Airflow
        sends for a task instance's first round only); the span is the dispatch's parent."""
        waited = a.scheduled_for
        if a.first_try and waited is not None:
            self.ctx.metrics.timing(
                "task.scheduled_duration", max(0.0, waited), dag_id=a.dag_id, task_id=a.task_id
            )
        if a.run_trace_context is None:
            return a
        parent = (
            keyed_context(a.run_trace_context, schedule_span_key(a.ti_id, a.scheduled_at))
            if a.scheduled_at is not None
            else context_from(a.run_trace_context)
        )
        span = record_span(
            "task.queue",
            parent,
            attributes={
                "tradewind.dag_id": a.dag_id,
                "tradewind.run_id": a.run_id,
                "tradewind.task_id": a.task_id,
                "tradewind.ti_id": a.ti_id,
                "tradewind.token": a.token,
                "tradewind.pool": a.pool,
                "tradewind.queue": a.queue,
            },
            start_time=started_ns,
        )
        return replace(a, trace_context=span)

    def _explain(self, outcome: PoolOutcome) -> None:
        """Say why tasks wait when no waiting will help: a pool that does not exist or is too
        small, a queue no live worker serves. Once a minute per cause, not per loop."""
        now = time.monotonic()
        assert outcome.admission is not None
        for starved in outcome.admission.starved:
            c = starved.candidate
            stuck = starved.permanent or (
                starved.reason is StarvationReason.QUEUE_FULL
                and self._last_queue_open is not None
                and c.queue not in self._last_queue_open
            )
            if not stuck:
                continue
            cause = (starved.reason.value, c.pool, c.queue)
            if now - self._explained.get(cause, float("-inf")) < 60:
                continue
            self._explained[cause] = now
            why = starved.message
            if starved.reason is StarvationReason.QUEUE_FULL:
                why = f"no live worker serves queue {c.queue!r}"
            log.warning(
                "%s.%s waits: %s", c.dag_id, c.task_id, why,
                extra={"event": "task_starved", "dag_id": c.dag_id, "task_id": c.task_id},
            )  # fmt: skip

    def _emit(self, outcome: PoolOutcome) -> int:
        if outcome.admission is None:
            return 0
        self._explain(outcome)
        usage = outcome.admission.pools.get(outcome.pool)
        if usage is not None:
            if usage.open_slots is not None:
                self.ctx.metrics.gauge("pool.open_slots", usage.open_slots, pool=outcome.pool)
            self.ctx.metrics.gauge("pool.starving_tasks", usage.starving_tasks, pool=outcome.pool)
            return usage.starving_tasks
        return len(outcome.admission.starved)
