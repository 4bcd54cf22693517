"""Step 5 of the loop: the critical section, pool by pool. Pools are visited in an order of
this replica's own shuffling, so replicas spread over pools instead of queueing behind one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from tradewind.scheduling.admission import admit
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.queueing import (
    PoolOutcome,
    QueuedAttempt,
    pools_with_scheduled,
    queue_pool,
)

__all__ = ["QueueReport", "Queuer"]


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

    def run_once(
        self, now: datetime | None = None, pools: frozenset[str] | None = None
    ) -> QueueReport:
        """One critical section per pool with scheduled work (or the pools given)."""
        now = now or self.ctx.clock()
        todo = (
            sorted(pools)
            if pools is not None
            else self.ctx.db.read(lambda c: pools_with_scheduled(c))
        )
        self.ctx.rng.shuffle(todo)
        queued: list[QueuedAttempt] = []
        busy = starving = 0
        queue_open = self._queue_open()
        with self.ctx.metrics.timer("scheduler.critical_section_duration"):
            for name in todo:
                outcome = self.ctx.db.transaction(
                    partial(self._one, pool_name=name, now=now, queue_open=queue_open)
                )
                if outcome is None:
                    busy += 1
                    self.ctx.metrics.incr("scheduler.critical_section_busy")
                    continue
                queued.extend(outcome.queued)
                starving += self._emit(outcome)
        self.ctx.metrics.gauge("scheduler.tasks.executable", len(queued))
        self.ctx.metrics.gauge("scheduler.tasks.starving", starving)
        return QueueReport(queued=tuple(queued), busy_pools=busy, starving=starving)

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

    def _emit(self, outcome: PoolOutcome) -> int:
        if outcome.admission is None:
            return 0
        usage = outcome.admission.pools.get(outcome.pool)
        if usage is not None:
            if usage.open_slots is not None:
                self.ctx.metrics.gauge("pool.open_slots", usage.open_slots, pool=outcome.pool)
            self.ctx.metrics.gauge("pool.starving_tasks", usage.starving_tasks, pool=outcome.pool)
            return usage.starving_tasks
        return len(outcome.admission.starved)
