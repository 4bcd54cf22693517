"""What a finished attempt's outcome does to its task instance: success, skipped, a retry with
Airflow 2's retry delay (fixed, or exponential backoff with jitter and caps), or failed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from tradewind.spec import TaskSpec
from tradewind.states import TaskInstanceState

__all__ = [
    "MAX_RETRY_DELAY",
    "AttemptOutcome",
    "FailureDecision",
    "OutcomeDecision",
    "decide_failure",
    "decide_outcome",
    "retry_delay",
]

MAX_RETRY_DELAY = timedelta(hours=24)
"""Airflow's [core] max_task_retry_delay default: no exponential backoff waits longer."""

# 2**64 seconds of backoff is far beyond MAX_RETRY_DELAY for any positive retry_delay of at
# least a microsecond, so larger exponents change nothing and only risk float overflow.
_MAX_EXPONENT = 64


class AttemptOutcome(StrEnum):
    """How a worker reports that an attempt ended."""

    SUCCESS = "success"
    SKIPPED = "skipped"  # AirflowSkipException, or a bash exit code in skip_on_exit_code (99)
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureDecision:
    """A failed attempt's result: UP_FOR_RETRY with `next_retry_at`, or FAILED (None)."""

    to_state: TaskInstanceState
    next_retry_at: datetime | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeDecision:
    """The state a task instance takes when an attempt ends, and when it retries if it does."""

    to_state: TaskInstanceState
    next_retry_at: datetime | None
    reason: str


def retry_delay(task: TaskSpec, try_number: int, rng: Callable[[], float]) -> timedelta:
    """The wait after try `try_number` failed: retry_delay, or with exponential backoff a
    random whole number of seconds in [d, 2d) for d = ceil(retry_delay * 2**(try_number - 1))
    (at least 1), capped by 24 hours and then by max_retry_delay. `rng` returns [0, 1)."""
    if not task.retry_exponential_backoff:
        # Airflow applies neither max_retry_delay nor the 24-hour cap to a fixed delay.
        return task.retry_delay
    exponent = min(try_number - 1, _MAX_EXPONENT)
    base = max(math.ceil(task.retry_delay.total_seconds() * 2.0**exponent), 1)
    cap = int(MAX_RETRY_DELAY.total_seconds())
    if base >= cap:
        seconds = cap
    else:
        # Airflow draws the jitter from a hash of the task instance; an injected source is
        # just as spread out and keeps this function pure.
        jitter = min(int(rng() * base), base - 1)
        seconds = min(base + max(jitter, 0), cap)
    delay = timedelta(seconds=seconds)
    if task.max_retry_delay:
        delay = min(task.max_retry_delay, delay)
    return delay


def decide_failure(
    task: TaskSpec,
    try_number: int,
    max_tries: int,
    now: datetime,
    rng: Callable[[], float],
    *,
    force_fail: bool = False,
) -> FailureDecision:
    """Retry or fail after try `try_number` (1 for the first) failed at `now`.

    As Airflow's is_eligible_to_retry: a retry needs task.retries > 0 and try_number <=
    max_tries (max_tries starts at task.retries and grows when the task instance is cleared).
    `force_fail` is Airflow's AirflowFailException: fail without retrying."""
    if force_fail:
        return FailureDecision(
            to_state=TaskInstanceState.FAILED,
            next_retry_at=None,
            reason=f"try {try_number} failed and asked not to be retried",
        )
    if task.retries <= 0:
        return FailureDecision(
            to_state=TaskInstanceState.FAILED,
            next_retry_at=None,
            reason=f"try {try_number} failed and task {task.task_id!r} has no retries",
        )
    if try_number > max_tries:
        return FailureDecision(
            to_state=TaskInstanceState.FAILED,
            next_retry_at=None,
            reason=f"try {try_number} failed and no tries are left (max_tries={max_tries})",
        )
    delay = retry_delay(task, try_number, rng)
    return FailureDecision(
        to_state=TaskInstanceState.UP_FOR_RETRY,
        next_retry_at=now + delay,
        reason=f"try {try_number} of {max_tries + 1} failed; retry in {delay}",
    )


def decide_outcome(
    task: TaskSpec,
    outcome: AttemptOutcome,
    try_number: int,
    max_tries: int,
    now: datetime,
    rng: Callable[[], float],
    *,
    force_fail: bool = False,
) -> OutcomeDecision:
    """Map a reported attempt outcome to the task instance's next state.

    SUCCESS -> success; SKIPPED -> skipped (a skip is not a failure and is never retried);
    FAILED -> decide_failure (up_for_retry with a retry time, or failed)."""
    if outcome is AttemptOutcome.SUCCESS:
        return OutcomeDecision(
            to_state=TaskInstanceState.SUCCESS, next_retry_at=None, reason="attempt succeeded"
        )
    if outcome is AttemptOutcome.SKIPPED:
        return OutcomeDecision(
            to_state=TaskInstanceState.SKIPPED,
            next_retry_at=None,
            reason="attempt asked to be skipped; skips are never retried",
        )
    failure = decide_failure(task, try_number, max_tries, now, rng, force_fail=force_fail)
    return OutcomeDecision(
        to_state=failure.to_state, next_retry_at=failure.next_retry_at, reason=failure.reason
    )
