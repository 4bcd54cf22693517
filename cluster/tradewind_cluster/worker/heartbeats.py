"""Registration, heartbeats and the lease of one worker: register with any reachable scheduler
(naming the attempts still running), heartbeat with the running attempts, register again when a
scheduler does not know us, kill what it no longer wants, and kill everything once no heartbeat
was answered for lease_s (the worker can no longer prove its attempts are wanted)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tradewind.errors import BadInputError, RetryableError
from tradewind_cluster.observability import HealthState, Metrics
from tradewind_cluster.worker.executor import LEASE_REASON, UNWANTED_REASON, Executor, KillKind
from tradewind_cluster.worker.link import SchedulerLink
from tradewind_cluster.worker.options import WorkerOptions
from tradewind_proto.v1 import common_pb2, scheduler_pb2

__all__ = ["Heartbeats", "Lease", "WorkerIdentity"]

log = logging.getLogger(__name__)
_LOG_EVERY = 50  # while failing, one warning per this many failed heartbeats


class Lease:
    """The right to run attempts: renewed by each heartbeat a scheduler answered, measured from
    when that heartbeat was sent; it lapses lease_s later."""

    def __init__(self, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._renewed_at: float | None = None

    def renew(self, sent_at: float) -> None:
        """A heartbeat sent at `sent_at` (monotonic) was answered."""
        if self._renewed_at is None or sent_at > self._renewed_at:
            self._renewed_at = sent_at

    def held(self) -> bool:
        """True while the last answered heartbeat is younger than lease_s."""
        at = self._renewed_at
        return at is not None and self._clock() - at < self.lease_s

    def expired(self) -> bool:
        """True once a lease that was held has lapsed."""
        return self._renewed_at is not None and not self.held()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerIdentity:
    """What a worker tells a scheduler when it registers."""

    worker_id: str
    name: str
    hostname: str
    address: str
    queues: tuple[str, ...]
    slots: int
    version: str


class Heartbeats:
    """`run` in one thread; `check_lease` from the monitor (it must not wait on the network)."""

    def __init__(
        self,
        link: SchedulerLink,
        identity: WorkerIdentity,
        executor: Executor,
        *,
        options: WorkerOptions,
        metrics: Metrics,
        health: HealthState,
        draining: Callable[[], bool],
        call_timeout_s: float,
    ) -> None:
        self.link = link
        self.identity = identity
        self.executor = executor
        self.options = options
        self.metrics = metrics
        self.health = health
        self.draining = draining
        self.lease = Lease(options.lease_s)
        self.interval_s = options.heartbeat_interval_s
        self.registered = False
        self.scheduler_id: str | None = None
        # A heartbeat stuck longer than half the lease is worth less than a fresh one.
        self._timeout_s = min(call_timeout_s, options.lease_s / 2)
        self._failures = 0
        self._lapsed = False

    def run(self, halt: threading.Event) -> None:
        """Heartbeat every interval until halted."""
        while not halt.is_set():
            self.beat_once()
            halt.wait(self.interval_s)

    def beat_once(self) -> bool:
        """Register if needed, else heartbeat; True when a scheduler answered."""
        try:
            if not self.registered:
                self._register()
                return True
            sent_at = time.monotonic()
            reply = self.link.call(
                "Heartbeat",
                scheduler_pb2.WorkerHeartbeatRequest(
                    worker_id=self.identity.worker_id,
                    running=self._refs(),
                    free_slots=self.executor.free_slots(),
                    draining=self.draining(),
                ),
                timeout_s=self._timeout_s,
            )
            if not reply.known:
                log.warning("the scheduler does not know this worker: registering again")
                self.registered = False
                self._register()
                return True
            self._answered(sent_at, reply.unwanted)
            return True
        except (RetryableError, BadInputError) as exc:
            self._failed(exc)
            return False

    def check_lease(self) -> None:
        """Once the lease lapsed, kill every attempt (again on each call: SIGKILL follows)."""
        if not self.lease.expired():
            return
        if not self._lapsed:
            self._lapsed = True
            self.health.set_failure(
                "lease", f"expired: no heartbeat answered for {self.lease.lease_s:g}s"
            )
            log.error(
                "lease expired: no scheduler answered for %gs; killing every attempt",
                self.lease.lease_s,
                extra={"event": "lease_expired", "worker": self.identity.worker_id},
            )
        self.executor.kill_all(
            KillKind.LEASE, LEASE_REASON, grace_s=self.options.lease_kill_grace_s
        )

    def _refs(self) -> list[common_pb2.AttemptRef]:
        return [common_pb2.AttemptRef(ti_id=t, token=k) for t, k in self.executor.running_refs()]

    def _register(self) -> None:
        me = self.identity
        sent_at = time.monotonic()
        reply = self.link.call(
            "RegisterWorker",
            scheduler_pb2.RegisterWorkerRequest(
                worker_id=me.worker_id,
                name=me.name,
                hostname=me.hostname,
                address=me.address,
                queues=list(me.queues),
                slots=me.slots,
                version=me.version,
                running=self._refs(),
            ),
            timeout_s=self._timeout_s,
        )
        self.registered = True
        self.scheduler_id = reply.scheduler_id or None
        self._adopt_limits(reply.lease_s, reply.heartbeat_interval_s)
        log.info(
            "registered with scheduler %s at %s",
            reply.scheduler_id or "?",
            self.link.current,
            extra={"event": "worker_registered", "worker": me.worker_id},
        )
        self._answered(sent_at, reply.unwanted)

    def _adopt_limits(self, lease_s: float, interval_s: float) -> None:
        # The scheduler's zombie threshold was checked against its own lease setting: never
        # hold a longer lease (or heartbeat more slowly) than it expects.
        if 0 < lease_s < self.lease.lease_s:
            log.warning("using the scheduler's shorter worker lease of %gs", lease_s)
            self.lease.lease_s = lease_s
            self._timeout_s = min(self._timeout_s, lease_s / 2)
        if 0 < interval_s < self.interval_s:
            self.interval_s = interval_s

    def _answered(self, sent_at: float, unwanted: Iterable[common_pb2.AttemptRef]) -> None:
        self.lease.renew(sent_at)
        if self._failures:
            log.info("heartbeats answered again after %s failures", self._failures)
            self._failures = 0
        if self._lapsed and self.lease.held():
            self._lapsed = False
            log.info("lease held again", extra={"event": "lease_renewed"})
        self.metrics.incr("worker_heartbeat")
        self.health.beat("scheduler")
        self.health.beat("lease")
        for ref in unwanted:
            self.executor.kill(
                ref.ti_id, ref.token, KillKind.UNWANTED, UNWANTED_REASON,
                grace_s=self.options.kill_grace_s,
            )  # fmt: skip

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.metrics.incr("worker_heartbeat_failure")
        self.health.set_failure("scheduler", str(exc))
        if self._failures == 1 or self._failures % _LOG_EVERY == 0:
            log.warning(
                "heartbeat failed (%s in a row): %s",
                self._failures,
                exc,
                extra={"event": "worker_heartbeat_failed"},
            )
