"""What every scheduler step shares: the store, this replica's identity, the spec cache, the
options, metrics, randomness and the clock. Built once at start-up and passed down."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tradewind_cluster.config import Settings
from tradewind_cluster.observability.metrics import Metrics
from tradewind_cluster.scheduler.specs import SpecCache
from tradewind_cluster.store.database import Database

__all__ = ["SchedulerContext", "SchedulerOptions", "utcnow"]


def utcnow() -> datetime:
    """The wall clock in UTC (decisions take `now` as a value; this is the one place it is read)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerOptions:
    """The scheduler section of the settings, in the units the steps use."""

    max_runs_per_loop: int = 10
    max_dagruns_to_examine: int = 20
    max_tis_per_query: int = 512
    parallelism: int | None = 32
    zombie_threshold: timedelta = timedelta(seconds=8)
    zombie_check_interval_s: float = 2.0
    orphan_check_interval_s: float = 2.0
    queued_timeout: timedelta = timedelta(minutes=10)
    queued_max_requeues: int = 3
    idle_sleep_s: float = 1.0
    dispatch_retry_attempts: int = 3
    parse_interval_s: float = 30.0
    worker_lost_after_s: float = 6.0  # worker lease + margin: silent longer means lost
    eager_dispatch: bool = False  # a success report may hand its worker the next task

    @classmethod
    def from_settings(cls, settings: Settings) -> SchedulerOptions:
        """Take the values from a validated settings tree."""
        s = settings.scheduler
        return cls(
            max_runs_per_loop=s.max_runs_per_loop,
            max_dagruns_to_examine=s.max_dagruns_to_examine,
            max_tis_per_query=s.max_tis_per_query,
            parallelism=settings.core.parallelism,
            zombie_threshold=timedelta(seconds=s.zombie_threshold_s),
            zombie_check_interval_s=s.zombie_check_interval_s,
            orphan_check_interval_s=s.orphan_check_interval_s,
            queued_timeout=timedelta(seconds=s.queued_timeout_s),
            queued_max_requeues=s.queued_max_requeues,
            idle_sleep_s=s.idle_sleep_s,
            dispatch_retry_attempts=s.dispatch_retry_attempts,
            parse_interval_s=s.parse_interval_s,
            worker_lost_after_s=settings.worker.lease_s + settings.worker.lease_margin_s,
            eager_dispatch=s.eager_dispatch,
        )


@dataclass(slots=True, kw_only=True)
class SchedulerContext:
    """Shared by the steps of one replica."""

    db: Database
    member_id: str
    options: SchedulerOptions = field(default_factory=SchedulerOptions)
    specs: SpecCache = field(default_factory=SpecCache)
    metrics: Metrics = field(default_factory=Metrics)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], datetime] = utcnow
