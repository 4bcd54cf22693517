"""Step 7 of the loop: housekeeping, each sweep on its own interval and sharded by row locks —
peers (declare dead), orphans of dead replicas, attempts stuck in queued, and zombies — and the
pool gauges, every pool_metrics_interval as Airflow sends them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tradewind.scheduling.retries import FailureDecision, decide_failure
from tradewind.spec import TaskKind, TaskSpec
from tradewind.states import TaskInstanceState
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.store import housekeeping as store_hk
from tradewind_cluster.store import members
from tradewind_cluster.store import workers as store_workers
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.notify import notify
from tradewind_cluster.store.queueing import PoolSlots, pool_slots

__all__ = ["Housekeeper", "HousekeepingReport"]

log = logging.getLogger(__name__)
POOL_METRICS_INTERVAL_S = 5.0  # Airflow's [scheduler] pool_metrics_interval
_POOLS_LIMIT = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class HousekeepingReport:
    """What one pass found."""

    declared_dead: tuple[str, ...] = ()
    zombies: tuple[store_hk.Reaped, ...] = ()
    orphans_requeued: tuple[store_hk.Reaped, ...] = ()
    orphans_adopted: int = 0
    stuck_queued: tuple[store_hk.Reaped, ...] = ()
    lost_workers: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """True when anything moved (the loop then goes round again at once)."""
        return bool(
            self.zombies or self.orphans_requeued or self.stuck_queued or self.declared_dead
        )


class _Every:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = float("-inf")

    def due(self, force: bool) -> bool:
        now = self._clock()
        if force or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False


class Housekeeper:
    """Runs the sweeps whose interval has passed (all of them with force=True, in tests)."""

    def __init__(
        self,
        ctx: SchedulerContext,
        watch_peers: Callable[[], list[str]] = list,
        store_ok_for: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.ctx = ctx
        self._watch_peers = watch_peers
        # Seconds this replica's own store access has worked without a gap. Heartbeats could
        # not be recorded during an outage: zombie and lost-worker verdicts wait a threshold.
        self._store_ok_for = store_ok_for
        opts = ctx.options
        self._peers = _Every(0.5)
        self._orphans = _Every(opts.orphan_check_interval_s)
        self._zombies = _Every(opts.zombie_check_interval_s)
        self._pools = _Every(POOL_METRICS_INTERVAL_S)

    def run_once(self, now: datetime | None = None, *, force: bool = False) -> HousekeepingReport:
        """Run the sweeps that are due."""
        now = now or self.ctx.clock()
        declared = tuple(self._watch_peers()) if self._peers.due(force) else ()
        requeued: tuple[store_hk.Reaped, ...] = ()
        stuck: tuple[store_hk.Reaped, ...] = ()
        adopted = 0
        lost: tuple[str, ...] = ()
        if declared or self._orphans.due(force):
            requeued, adopted, stuck = self.ctx.db.transaction(
                lambda c: self._orphans_and_stuck(c, now)
            )
            if self._settled(self.ctx.options.worker_lost_after_s):
                lost = self.ctx.db.transaction(lambda c: self._lost_workers(c, now))
        threshold_s = self.ctx.options.zombie_threshold.total_seconds()
        zombies = (
            self.ctx.db.transaction(lambda c: self._reap(c, now))
            if self._zombies.due(force) and self._settled(threshold_s)
            else ()
        )
        touched = [r.run_pk for r in (*zombies, *stuck) if r.run_pk is not None]
        if touched:  # after the sweeps' transactions: dag_run comes before task_instance
            self.ctx.db.transaction(lambda c: store_hk.touch_runs(c, touched, now))
        report = HousekeepingReport(
            declared_dead=declared,
            zombies=tuple(zombies),
            orphans_requeued=requeued,
            orphans_adopted=adopted,
            stuck_queued=stuck,
            lost_workers=lost,
        )
        self._emit(report)
        if self._pools.due(force):
            self._emit_pools()
        return report

    def _emit_pools(self) -> None:
        """Airflow's pool gauges for every pool (each replica sends the same figures), and how
        many scheduler replicas and workers are alive."""
        m = self.ctx.metrics
        lost_after = self.ctx.options.worker_lost_after_s

        def read(conn: Connection) -> tuple[list[PoolSlots], int, int]:
            replicas = len(members.list_members(conn, limit=1000))
            workers = len(store_workers.live_workers(conn, max_age_s=lost_after, limit=10_000))
            return pool_slots(conn, limit=_POOLS_LIMIT), replicas, workers

        pools, replicas, workers = self.ctx.db.read(read)
        m.gauge("scheduler.members.alive", replicas)
        m.gauge("scheduler.workers.alive", workers)
        for p in pools:
            m.gauge("pool.open_slots", p.open, pool=p.pool)
            m.gauge("pool.queued_slots", p.queued, pool=p.pool)
            m.gauge("pool.running_slots", p.running, pool=p.pool)
            m.gauge("pool.scheduled_slots", p.scheduled, pool=p.pool)

    def _settled(self, seconds: float) -> bool:
        """True once this replica's store access has worked for `seconds` without a gap."""
        return self._store_ok_for() >= seconds

    def _orphans_and_stuck(
        self, conn: Connection, now: datetime
    ) -> tuple[tuple[store_hk.Reaped, ...], int, tuple[store_hk.Reaped, ...]]:
        opts = self.ctx.options
        limit = opts.max_tis_per_query
        requeued, adopted = store_hk.adopt_orphans(
            conn, member_id=self.ctx.member_id, now=now, limit=limit
        )
        stuck = store_hk.requeue_stuck_queued(
            conn,
            now=now,
            timeout=opts.queued_timeout,
            max_requeues=opts.queued_max_requeues,
            limit=limit,
        )
        if requeued or stuck:
            notify(conn, "scheduled")
        return tuple(requeued), adopted, tuple(stuck)

    def _lost_workers(self, conn: Connection, now: datetime) -> tuple[str, ...]:
        """Workers silent past their lease + margin are lost; attempts dispatched to them but
        never started are requeued (running ones are left to the zombie sweep)."""
        lost = store_workers.mark_lost_workers(conn, max_age_s=self.ctx.options.worker_lost_after_s)
        if lost:
            store_workers.requeue_lost_dispatches(conn, lost, now=now)
            notify(conn, "scheduled")
            log.warning("workers lost: %s", ", ".join(lost), extra={"event": "workers_lost"})
        return tuple(lost)

    def _reap(self, conn: Connection, now: datetime) -> list[store_hk.Reaped]:
        reaped = store_hk.reap_zombies(
            conn,
            now=now,
            threshold=self.ctx.options.zombie_threshold,
            decide=self._failure_decider(conn, now),
            limit=self.ctx.options.max_tis_per_query,
        )
        if reaped:
            notify(conn, "examine")
        return reaped

    def _failure_decider(
        self, conn: Connection, now: datetime
    ) -> Callable[[str, str, int, int], FailureDecision]:
        def decide(dag_id: str, task_id: str, try_number: int, max_tries: int) -> FailureDecision:
            spec = self.ctx.specs.get_many(conn, [dag_id]).get(dag_id)
            task = spec.tasks.get(task_id) if spec else None
            task = task or TaskSpec(task_id=task_id, operator="?", kind=TaskKind.CALLABLE)
            return decide_failure(task, try_number, max_tries, now, self.ctx.rng.random)

        return decide

    def _emit(self, report: HousekeepingReport) -> None:
        m = self.ctx.metrics
        for z in report.zombies:
            m.incr("zombies_killed", dag_id=z.dag_id, task_id=z.task_id)
            if z.to_state in (TaskInstanceState.FAILED, TaskInstanceState.UP_FOR_RETRY):
                # Airflow fails a zombie through handle_failure, which counts it.
                m.incr("ti_failures", dag_id=z.dag_id, task_id=z.task_id)
            log.warning(
                "zombie %s.%s (%s): %s",
                z.dag_id,
                z.task_id,
                z.run_id,
                z.reason,
                extra={"event": "zombie"},
            )
        if report.orphans_requeued:
            m.incr("scheduler.orphaned_tasks.cleared", len(report.orphans_requeued))
        if report.orphans_adopted:
            m.incr("scheduler.orphaned_tasks.adopted", report.orphans_adopted)
        if report.stuck_queued:
            m.incr("scheduler.tasks.requeued", len(report.stuck_queued), reason="queued_timeout")
        if report.declared_dead or report.lost_workers:
            m.incr(
                "scheduler.members.declared_dead",
                len(report.declared_dead) + len(report.lost_workers),
            )
