"""The worker's report outbox: one report per attempt at a time and in order, attempts in
parallel, retries until a scheduler answers, and flush waiting for every answer. The link is
replaced by a recorder that can hold a call: what is under test is the outbox's threading."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tradewind.errors import RetryableError
from tradewind_cluster.worker.outcomes import PendingReport
from tradewind_cluster.worker.reporter import Reporter
from tradewind_proto.v1 import scheduler_pb2

SENDERS = 4


class _Link:
    """Records calls; a call for a held attempt blocks until released; `failures` makes the
    first calls fail as if no scheduler answered."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[int, int]] = []  # (ti_id, event) in the order they were sent
        self.held: dict[int, threading.Event] = {}
        self.failures = failures
        self.lock = threading.Lock()

    def call(self, method: str, request: Any, **_: Any) -> Any:
        assert method == "ReportAttempt"
        gate = self.held.get(request.attempt.ti_id)
        if gate is not None:
            assert gate.wait(10)
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise RetryableError("no scheduler answered")
            self.calls.append((request.attempt.ti_id, request.event))
        return scheduler_pb2.AttemptReportReply(accepted=True)


def _report(ti_id: int, event: int = scheduler_pb2.ATTEMPT_EVENT_SUCCESS) -> PendingReport:
    return PendingReport(ti_id=ti_id, token=1, event=event)


@contextlib.contextmanager
def _running(link: _Link, senders: int) -> Iterator[tuple[Reporter, _Link, list[PendingReport]]]:
    """A Reporter on `link` with `senders` sender threads, closed (and joined) at the end."""
    accepted: list[PendingReport] = []
    reporter = Reporter(
        link,  # type: ignore[arg-type]
        "w1",
        on_refused=lambda report, reason: None,
        on_accepted=lambda report, reply: accepted.append(report),
        call_timeout_s=1.0,
        max_backoff_s=0.02,
    )
    threads = [threading.Thread(target=reporter.run, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    yield reporter, link, accepted
    reporter.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


@pytest.fixture
def outbox() -> Iterator[tuple[Reporter, _Link, list[PendingReport]]]:
    with _running(_Link(), SENDERS) as running:
        yield running


def test_a_held_attempt_does_not_hold_the_others_and_keeps_its_order(outbox) -> None:
    reporter, link, _ = outbox
    link.held[1] = threading.Event()
    reporter.submit(_report(1, scheduler_pb2.ATTEMPT_EVENT_STARTED))
    reporter.submit(_report(1, scheduler_pb2.ATTEMPT_EVENT_SUCCESS))
    for ti in range(2, 2 + 2 * SENDERS):  # more attempts than senders, one held
        reporter.submit(_report(ti))
    assert reporter.flush(0.2) is False  # attempt 1 is still held
    assert sorted(ti for ti, _ in link.calls) == list(range(2, 2 + 2 * SENDERS))
    link.held[1].set()
    assert reporter.flush(5)
    ones = [event for ti, event in link.calls if ti == 1]
    assert ones == [scheduler_pb2.ATTEMPT_EVENT_STARTED, scheduler_pb2.ATTEMPT_EVENT_SUCCESS]
    assert reporter.pending() == 0


def test_reports_submitted_while_flush_waits_are_sent(outbox) -> None:
    reporter, link, accepted = outbox
    link.held[1] = threading.Event()
    reporter.submit(_report(1))
    done: list[bool] = []
    waiter = threading.Thread(target=lambda: done.append(reporter.flush(5)))
    waiter.start()
    time.sleep(0.05)  # flush is waiting on the held report
    for ti in range(2, 6):  # each new report must wake a sender, not only the flush
        reporter.submit(_report(ti))
        deadline = time.monotonic() + 5
        while ti not in {t for t, _ in link.calls} and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ti in {t for t, _ in link.calls}
    link.held[1].set()
    waiter.join(5)
    assert done == [True]
    assert sorted(r.ti_id for r in accepted) == [1, 2, 3, 4, 5]


def test_an_unanswered_report_is_sent_again_until_a_scheduler_answers() -> None:
    with _running(_Link(failures=3), senders=1) as (reporter, link, accepted):
        reporter.submit(_report(7))
        assert reporter.flush(5)
    assert link.calls == [(7, scheduler_pb2.ATTEMPT_EVENT_SUCCESS)]
    assert [r.ti_id for r in accepted] == [7]
