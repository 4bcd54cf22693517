"""Retries follow Airflow 2's is_eligible_to_retry and next_retry_datetime: a fixed retry_delay,
or exponential backoff with jitter in [d, 2d) capped by 24 hours and then by max_retry_delay."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tradewind.scheduling.retries import (
    MAX_RETRY_DELAY,
    AttemptOutcome,
    decide_failure,
    decide_outcome,
    retry_delay,
)
from tradewind.spec import TaskKind, TaskSpec
from tradewind.states import TaskInstanceState

TI = TaskInstanceState
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def task(**overrides: Any) -> TaskSpec:
    fields: dict[str, Any] = {"task_id": "t", "operator": "BashOperator", "kind": TaskKind.BASH}
    fields.update(overrides)
    return TaskSpec(**fields)


def low() -> float:
    return 0.0


def high() -> float:
    return 0.999999


def test_failure_with_tries_left_is_retried_after_retry_delay() -> None:
    decision = decide_failure(task(retries=2), 1, 2, NOW, low)
    assert decision.to_state is TI.UP_FOR_RETRY
    assert decision.next_retry_at == NOW + timedelta(minutes=5)
    assert "try 1 of 3 failed" in decision.reason


def test_last_allowed_try_still_retries_and_the_one_after_fails() -> None:
    assert decide_failure(task(retries=2), 2, 2, NOW, low).to_state is TI.UP_FOR_RETRY
    decision = decide_failure(task(retries=2), 3, 2, NOW, low)
    assert decision.to_state is TI.FAILED
    assert decision.next_retry_at is None
    assert "no tries are left" in decision.reason


def test_task_without_retries_fails_even_when_max_tries_grew_after_a_clear() -> None:
    # Airflow: `task.retries and try_number <= max_tries`.
    decision = decide_failure(task(retries=0), 1, 5, NOW, low)
    assert decision.to_state is TI.FAILED
    assert "has no retries" in decision.reason


def test_cleared_task_instance_retries_up_to_its_raised_max_tries() -> None:
    assert decide_failure(task(retries=1), 3, 3, NOW, low).to_state is TI.UP_FOR_RETRY


def test_force_fail_never_retries() -> None:
    decision = decide_failure(task(retries=3), 1, 3, NOW, low, force_fail=True)
    assert decision.to_state is TI.FAILED
    assert "asked not to be retried" in decision.reason


def test_fixed_delay_ignores_max_retry_delay_and_the_day_cap() -> None:
    t = task(retries=1, retry_delay=timedelta(hours=48), max_retry_delay=timedelta(hours=1))
    assert retry_delay(t, 1, low) == timedelta(hours=48)


@pytest.mark.parametrize(
    ("try_number", "lowest", "highest"),
    [(1, 30, 59), (2, 60, 119), (3, 120, 239), (5, 480, 959)],
)
def test_exponential_backoff_doubles_per_try_with_jitter_below_double(
    try_number: int, lowest: int, highest: int
) -> None:
    t = task(retries=9, retry_delay=timedelta(seconds=30), retry_exponential_backoff=True)
    assert retry_delay(t, try_number, low) == timedelta(seconds=lowest)
    assert retry_delay(t, try_number, high) == timedelta(seconds=highest)


def test_exponential_backoff_is_capped_by_max_retry_delay() -> None:
    t = task(
        retries=9,
        retry_delay=timedelta(seconds=30),
        retry_exponential_backoff=True,
        max_retry_delay=timedelta(hours=1),
    )
    assert retry_delay(t, 9, low) == timedelta(hours=1)  # 30 * 2**8 = 7680 s > 1 h
    assert retry_delay(t, 2, low) == timedelta(seconds=60)


def test_exponential_backoff_is_capped_at_24_hours_even_above_max_retry_delay() -> None:
    t = task(
        retries=99,
        retry_delay=timedelta(hours=1),
        retry_exponential_backoff=True,
        max_retry_delay=timedelta(days=3),
    )
    assert retry_delay(t, 6, high) == MAX_RETRY_DELAY
    assert timedelta(hours=24) == MAX_RETRY_DELAY


def test_huge_try_numbers_do_not_overflow() -> None:
    t = task(retries=1, retry_delay=timedelta(seconds=1), retry_exponential_backoff=True)
    assert retry_delay(t, 10_000, high) == MAX_RETRY_DELAY


def test_zero_or_tiny_delay_backs_off_at_least_one_second() -> None:
    zero = task(retries=1, retry_delay=timedelta(0), retry_exponential_backoff=True)
    assert retry_delay(zero, 1, low) == timedelta(seconds=1)
    assert retry_delay(zero, 1, high) == timedelta(seconds=1)
    half = task(retries=1, retry_delay=timedelta(seconds=0.5), retry_exponential_backoff=True)
    assert retry_delay(half, 1, low) == timedelta(seconds=1)  # ceil(0.5)


def test_jitter_comes_from_the_injected_source() -> None:
    t = task(retries=5, retry_delay=timedelta(minutes=10), retry_exponential_backoff=True)
    first = retry_delay(t, 3, random.Random(7).random)
    assert first == retry_delay(t, 3, random.Random(7).random)
    delays = {retry_delay(t, 3, random.Random(seed).random) for seed in range(20)}
    assert len(delays) > 1
    assert all(timedelta(minutes=40) <= d < timedelta(minutes=80) for d in delays)


def test_decide_failure_adds_the_delay_to_now() -> None:
    t = task(retries=3, retry_delay=timedelta(seconds=10), retry_exponential_backoff=True)
    decision = decide_failure(t, 2, 3, NOW, low)
    assert decision.next_retry_at == NOW + timedelta(seconds=20)


def test_outcome_success() -> None:
    decision = decide_outcome(task(retries=2), AttemptOutcome.SUCCESS, 1, 2, NOW, low)
    assert decision.to_state is TI.SUCCESS
    assert decision.next_retry_at is None
    assert decision.reason


def test_outcome_skipped_is_never_retried() -> None:
    decision = decide_outcome(task(retries=2), AttemptOutcome.SKIPPED, 1, 2, NOW, low)
    assert decision.to_state is TI.SKIPPED
    assert decision.next_retry_at is None
    assert "never retried" in decision.reason


def test_outcome_failed_uses_the_retry_rules() -> None:
    retry = decide_outcome(task(retries=2), AttemptOutcome.FAILED, 1, 2, NOW, low)
    assert retry.to_state is TI.UP_FOR_RETRY
    assert retry.next_retry_at == NOW + timedelta(minutes=5)
    final = decide_outcome(task(retries=2), AttemptOutcome.FAILED, 3, 2, NOW, low)
    assert final.to_state is TI.FAILED
    forced = decide_outcome(task(retries=2), AttemptOutcome.FAILED, 1, 2, NOW, low, force_fail=True)
    assert forced.to_state is TI.FAILED
