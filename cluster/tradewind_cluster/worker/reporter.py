"""The outbox of attempt reports, each retried with jittered, capped backoff (across
schedulers) until a scheduler answers. Reports of one attempt go in order, one at a time;
reports of different attempts go in parallel from several sender threads, so one slow answer
does not hold every other attempt's slot. A refusal (stale token, unknown attempt) is final:
the caller hears of it and kills the attempt if it still runs."""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable

from tradewind.errors import BadInputError, RetryableError
from tradewind_cluster.worker.link import SchedulerLink
from tradewind_cluster.worker.outcomes import PendingReport
from tradewind_proto.v1 import scheduler_pb2

__all__ = ["Reporter"]

log = logging.getLogger(__name__)


class Reporter:
    """`submit` from anywhere; `run` in one thread until `close`."""

    def __init__(
        self,
        link: SchedulerLink,
        worker_id: str,
        *,
        on_refused: Callable[[PendingReport, str], None],
        on_accepted: Callable[
            [PendingReport, scheduler_pb2.AttemptReportReply], None
        ] = lambda report, reply: None,
        call_timeout_s: float,
        max_backoff_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._link = link
        self._worker_id = worker_id
        self._on_refused = on_refused
        self._on_accepted = on_accepted
        self._timeout_s = call_timeout_s
        self._max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()
        self._queue: collections.deque[PendingReport] = collections.deque()
        # One lock, two conditions: senders wait for work, flush waits for answers. A new
        # report wakes one sender, not every sender and flush.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._work = threading.Condition(lock)
        self._closed = False
        self._failures = 0
        self._in_flight: set[tuple[int, int]] = set()  # attempts with a report being sent

    def submit(self, report: PendingReport) -> None:
        """Queue a report behind those already waiting."""
        with self._cond:
            self._queue.append(report)
            self._work.notify()

    def pending(self) -> int:
        """Reports not yet answered."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Stop `run` after the report in flight."""
        with self._cond:
            self._closed = True
            self._work.notify_all()
            self._cond.notify_all()

    def run(self) -> None:
        """Send reports until closed (several threads may run this at once)."""
        while True:
            with self._cond:
                report = self._next_sendable()
                while report is None and not self._closed:
                    self._work.wait()
                    report = self._next_sendable()
                if self._closed or report is None:
                    return
                self._in_flight.add((report.ti_id, report.token))
            settled = self._send(report)
            with self._cond:
                self._in_flight.discard((report.ti_id, report.token))
                if settled:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(report)
                if settled:  # e.g. a later report of this attempt may go now
                    self._work.notify(len(self._queue))
                self._cond.notify_all()
                if not settled:  # this sender sends it again after its backoff
                    self._work.wait(self._backoff())

    def _next_sendable(self) -> PendingReport | None:
        """The oldest report whose attempt has nothing in flight (keeps per-attempt order)."""
        blocked: set[tuple[int, int]] = set(self._in_flight)
        for report in self._queue:
            key = (report.ti_id, report.token)
            if key not in blocked:
                return report
            blocked.add(key)  # a later report of the same attempt waits for this one
        return None

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued report was answered (True) or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def _backoff(self) -> float:
        # Exponential from 50 ms, capped, with jitter so many workers do not retry in step.
        cap = min(self._max_backoff_s, 0.05 * 2 ** min(self._failures, 16))
        return self._rng.uniform(cap / 2, cap)

    def _send(self, report: PendingReport) -> bool:
        """True when the report is settled (accepted, refused or undeliverable for good)."""
        try:
            reply = self._link.call(
                "ReportAttempt",
                report.to_proto(self._worker_id),
                timeout_s=self._timeout_s,
                metadata=report.metadata,
            )
        except RetryableError as exc:
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.warning(
                    "report of attempt %s/%s not delivered yet (try %s): %s",
                    report.ti_id,
                    report.token,
                    self._failures,
                    exc,
                    extra={"event": "report_retry", "attempt": report.ti_id},
                )
            return False
        except BadInputError as exc:
            log.error(
                "report of attempt %s/%s dropped: %s",
                report.ti_id,
                report.token,
                exc,
                extra={"event": "report_dropped", "attempt": report.ti_id},
            )
            self._on_refused(report, f"undeliverable: {exc}")
            return True
        self._failures = 0
        if reply.accepted:
            self._on_accepted(report, reply)
        else:
            self._on_refused(report, reply.reason or "refused")
        return True
