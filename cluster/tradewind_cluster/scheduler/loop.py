"""The scheduler loop: parse → create runs → examine → queue → dispatch → housekeeping, each
step bounded and run once per iteration. An idle replica sleeps on LISTEN/NOTIFY (and a local
wake-up pipe) so it reacts to new work in well under a millisecond, not after its idle sleep."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tradewind.errors import StoreUnavailableError
from tradewind_cluster.scheduler.context import SchedulerContext
from tradewind_cluster.scheduler.dispatching import Dispatcher, DispatchStep
from tradewind_cluster.scheduler.examiner import RunExaminer
from tradewind_cluster.scheduler.housekeeper import Housekeeper
from tradewind_cluster.scheduler.queuer import Queuer
from tradewind_cluster.scheduler.run_creation import RunCreator
from tradewind_cluster.store import dags
from tradewind_cluster.store.notify import WORKERS, Listener

__all__ = ["LoopReport", "SchedulerLoop", "Waker"]

log = logging.getLogger(__name__)

# How soon a replica looks again at a pool another replica held (SKIP LOCKED skipped it).
CONTENDED_RETRY_S = 0.01


class Waker:
    """A self-pipe: `wake()` from any thread makes the loop's select() return at once."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def fd(self) -> int:
        """The descriptor to select on."""
        return self._r

    def wake(self) -> None:
        """Interrupt the loop's idle wait."""
        # a full pipe already holds wake-ups: the loop will wake anyway
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"x")

    def drain(self) -> None:
        """Consume pending wake-ups."""
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close both ends."""
        os.close(self._r)
        os.close(self._w)


@dataclass(slots=True, kw_only=True)
class LoopReport:
    """What one iteration did; `busy` means go round again without sleeping."""

    busy: bool = False
    # a pool's critical section was held by another replica: what it skipped may be queueable
    # once that replica commits, and nothing will wake this one for it, so look again soon
    contended: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class SchedulerLoop:
    """One replica's loop. `run_once()` runs every step once; `run_forever()` until stopped."""

    def __init__(
        self,
        ctx: SchedulerContext,
        dispatcher: Dispatcher,
        *,
        parse_once: Callable[[], Any] | None = None,
        watch_peers: Callable[[], list[str]] = list,
        store_ok_for: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.ctx = ctx
        self.creator = RunCreator(ctx)
        self.examiner = RunExaminer(ctx)
        self.queuer = Queuer(ctx, queue_open=dispatcher.queue_open)
        self.dispatch = DispatchStep(ctx, dispatcher)
        self.housekeeper = Housekeeper(ctx, watch_peers=watch_peers, store_ok_for=store_ok_for)
        self._parse_once = parse_once
        self.waker = Waker()
        self.progress_at: float | None = None  # wall time of the last completed iteration
        self.store_ok = True
        self.last_error: str | None = None

    def _step(self, report: LoopReport, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        except StoreUnavailableError as exc:
            self.store_ok = False
            report.errors[name] = str(exc)
        except Exception as exc:
            report.errors[name] = f"{type(exc).__name__}: {exc}"
            log.exception(
                "scheduler step %s failed", name, extra={"event": "step_failed", "step": name}
            )
        finally:
            self.ctx.metrics.timing(
                "scheduler.step.duration", time.perf_counter() - started, step=name
            )
        self.ctx.metrics.incr("scheduler.step.errors", step=name)
        return None

    def run_once(self) -> LoopReport:
        """Run every step once, in order."""
        report = LoopReport()
        with self.ctx.metrics.timer("scheduler.scheduler_loop_duration"):
            if self._parse_once is not None:
                self._step(report, "parse", self._parse_once)
            created = self._step(report, "create_runs", self.creator.run_once)
            examined = self._step(report, "examine", self.examiner.run_once)
            queued = self._step(report, "queue", self.queuer.run_once)
            fresh = queued.queued if queued is not None else ()
            if fresh or self.dispatch.has_pending():
                self._step(report, "dispatch", lambda: self.dispatch.run_once(fresh))
            kept = self._step(report, "housekeeping", self.housekeeper.run_once)
        report.busy = bool(
            (created and (created.created or created.started))
            or (examined and examined.runs)
            or (queued and queued.queued)
            or (kept and kept.changed)
        )
        report.contended = bool(queued and queued.busy_pools)
        if not report.errors:
            self.store_ok = True
            self.last_error = None
        else:
            self.last_error = "; ".join(f"{k}: {v}" for k, v in report.errors.items())
        self.progress_at = time.time()
        return report

    def run_forever(
        self,
        stop: threading.Event,
        *,
        guard: Callable[[], None] = lambda: None,
        on_iteration: Callable[[], None] = lambda: None,
    ) -> None:
        """Loop until `stop` is set; sleep only when an iteration found nothing to do.
        `guard` runs before each iteration (identity check), `on_iteration` after it."""
        listener = Listener(self.ctx.db)
        try:
            while not stop.is_set():
                guard()
                report = self.run_once()
                on_iteration()
                if stop.is_set():
                    break
                if not report.busy:
                    timeout = self._idle_timeout()
                    if report.contended:
                        timeout = min(timeout, CONTENDED_RETRY_S)
                    topics = listener.wait(timeout, also=(self.waker.fd,))
                    self.waker.drain()
                    if WORKERS in topics:  # new slots: a cached "no free slot" is stale
                        self.dispatch.dispatcher.capacity_changed()
        finally:
            listener.close()

    def _idle_timeout(self) -> float:
        """Sleep until the next scheduled work falls due (a run's data interval ends, a retry
        delay passes), idle_sleep_s at most; events wake the loop sooner through NOTIFY."""
        idle = self.ctx.options.idle_sleep_s
        try:
            due = self.ctx.db.read(dags.next_due_at)
        except Exception:  # noqa: BLE001 - the store may be down: the plain idle sleep will do
            return idle
        if due is None:
            return idle
        wait = (due - self.ctx.clock()).total_seconds()
        if wait <= 0:
            # Due already but this iteration found nothing to do: another replica holds it (or
            # it keeps failing). Look again soon, without spinning.
            return min(idle, 0.05)
        return min(idle, wait + 0.001)

    def close(self) -> None:
        """Release the wake-up pipe."""
        self.waker.close()
