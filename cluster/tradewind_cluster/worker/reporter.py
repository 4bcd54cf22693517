"""The outbox of attempt reports: sent in order from one thread, each retried with jittered,
capped backoff (across schedulers) until a scheduler answers. A refusal (stale token, unknown
attempt) is final: the caller hears of it and kills the attempt if it still runs."""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable

from tradewind.errors import BadInputError, RetryableError
from tradewind_cluster.worker.link import SchedulerLink
from tradewind_cluster.worker.outcomes import PendingReport

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
        on_accepted: Callable[[PendingReport], None] = lambda report: None,
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
        self._cond = threading.Condition()
        self._closed = False
        self._failures = 0

    def submit(self, report: PendingReport) -> None:
        """Queue a report behind those already waiting."""
        with self._cond:
            self._queue.append(report)
            self._cond.notify_all()

    def pending(self) -> int:
        """Reports not yet answered."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Stop `run` after the report in flight."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run(self) -> None:
        """Send reports until closed."""
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                report = self._queue[0]
            if self._send(report):
                with self._cond:
                    if self._queue and self._queue[0] is report:
                        self._queue.popleft()
                    self._cond.notify_all()
            else:
                with self._cond:
                    self._cond.wait(self._backoff())

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
            self._on_accepted(report)
        else:
            self._on_refused(report, reply.reason or "refused")
        return True
