"""due_runs: which scheduled runs one DAG creates now, the caps on them, and why it waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tradewind.schedules import DataInterval, RunInfo, parse_schedule
from tradewind.scheduling.runs import (
    REASON_LIMIT,
    REASON_MANUAL_ONLY,
    REASON_MAX_ACTIVE_RUNS,
    REASON_NO_START_DATE,
    REASON_SCHEDULE_EXHAUSTED,
    DueRuns,
    due_runs,
)
from tradewind.spec import DagSpec


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def dag(schedule: str | timedelta | None, **kwargs: Any) -> DagSpec:
    return DagSpec(dag_id="d", fileloc="d.py", schedule=parse_schedule(schedule), **kwargs)


def days(*numbers: int) -> list[datetime]:
    return [utc(2024, 1, n) for n in numbers]


def logical_dates(decision: DueRuns) -> list[datetime]:
    return [run.logical_date for run in decision.runs]


DAILY = dag("@daily", start_date=utc(2024, 1, 1))
NOW = utc(2024, 1, 5, 12)


def test_catchup_creates_every_ended_interval_in_order() -> None:
    decision = due_runs(DAILY, None, NOW, active_runs=0, limit=100)
    assert logical_dates(decision) == days(1, 2, 3, 4)
    assert all(run.run_after <= NOW for run in decision.runs)
    assert decision.reason is None
    assert decision.next_run == RunInfo.interval(utc(2024, 1, 5), utc(2024, 1, 6))
    assert decision.next_logical_date == utc(2024, 1, 5)
    assert decision.next_data_interval == DataInterval(start=utc(2024, 1, 5), end=utc(2024, 1, 6))
    assert decision.next_run_after == utc(2024, 1, 6)
    assert decision.last_automated == DataInterval(start=utc(2024, 1, 4), end=utc(2024, 1, 5))


def test_resumes_after_the_stored_last_interval() -> None:
    last = DataInterval(start=utc(2024, 1, 2), end=utc(2024, 1, 3))
    decision = due_runs(DAILY, last, NOW, active_runs=0, limit=100)
    assert logical_dates(decision) == days(3, 4)


def test_limit_caps_and_next_run_is_already_due() -> None:
    decision = due_runs(DAILY, None, NOW, active_runs=0, limit=2)
    assert logical_dates(decision) == days(1, 2)
    assert decision.next_logical_date == utc(2024, 1, 3)
    assert decision.next_run_after is not None
    assert decision.next_run_after <= NOW


def test_chunked_calls_equal_one_big_call() -> None:
    created: list[RunInfo] = []
    last: DataInterval | None = None
    for _ in range(10):
        decision = due_runs(DAILY, last, NOW, active_runs=0, limit=1)
        created.extend(decision.runs)
        last = decision.last_automated or last
    assert created == list(due_runs(DAILY, None, NOW, active_runs=0, limit=100).runs)


def test_max_active_runs_caps_creation() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), max_active_runs=3)
    decision = due_runs(spec, None, NOW, active_runs=2, limit=100)
    assert logical_dates(decision) == days(1)
    assert decision.next_logical_date == utc(2024, 1, 2)


@pytest.mark.parametrize("active", [3, 7], ids=["at-limit", "over-limit"])
def test_max_active_runs_reached_creates_nothing(active: int) -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), max_active_runs=3)
    decision = due_runs(spec, None, NOW, active_runs=active, limit=100)
    assert decision.runs == ()
    assert decision.reason == REASON_MAX_ACTIVE_RUNS
    assert decision.next_run == RunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    assert decision.last_automated is None


@pytest.mark.parametrize("limit", [0, -3])
def test_zero_or_negative_limit_creates_nothing(limit: int) -> None:
    decision = due_runs(DAILY, None, NOW, active_runs=0, limit=limit)
    assert decision.runs == ()
    assert decision.reason == REASON_LIMIT


def test_not_due_names_when() -> None:
    last = DataInterval(start=utc(2024, 1, 4), end=utc(2024, 1, 5))
    decision = due_runs(DAILY, last, NOW, active_runs=0, limit=100)
    assert decision.runs == ()
    assert decision.reason == "not due until 2024-01-06T00:00:00+00:00"
    assert decision.next_run_after == utc(2024, 1, 6)


def test_not_due_wins_over_max_active_runs() -> None:
    last = DataInterval(start=utc(2024, 1, 4), end=utc(2024, 1, 5))
    spec = dag("@daily", start_date=utc(2024, 1, 1), max_active_runs=1)
    decision = due_runs(spec, last, NOW, active_runs=1, limit=100)
    assert decision.reason == "not due until 2024-01-06T00:00:00+00:00"


def test_a_run_is_due_exactly_at_its_interval_end() -> None:
    decision = due_runs(DAILY, None, utc(2024, 1, 2), active_runs=0, limit=100)
    assert logical_dates(decision) == days(1)


def test_end_date_exhausts_the_schedule() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), end_date=utc(2024, 1, 2))
    decision = due_runs(spec, None, NOW, active_runs=0, limit=100)
    assert logical_dates(decision) == days(1, 2)
    assert decision.next_run is None
    assert decision.next_logical_date is None
    assert decision.next_data_interval is None
    assert decision.next_run_after is None
    again = due_runs(spec, decision.last_automated, NOW, active_runs=0, limit=100)
    assert again.runs == ()
    assert again.reason == REASON_SCHEDULE_EXHAUSTED


def test_manual_only() -> None:
    decision = due_runs(dag(None, start_date=utc(2024, 1, 1)), None, NOW, 0, 100)
    assert decision == DueRuns(runs=(), next_run=None, reason=REASON_MANUAL_ONLY)


def test_no_start_date_with_catchup() -> None:
    decision = due_runs(dag("@daily"), None, NOW, active_runs=0, limit=100)
    assert decision.runs == ()
    assert decision.reason == REASON_NO_START_DATE


def test_once_creates_one_run_at_start_date() -> None:
    spec = dag("@once", start_date=utc(2024, 1, 3, 6))
    early = due_runs(spec, None, utc(2024, 1, 3), active_runs=0, limit=100)
    assert early.runs == ()
    assert early.reason == "not due until 2024-01-03T06:00:00+00:00"
    decision = due_runs(spec, None, NOW, active_runs=0, limit=100)
    assert decision.runs == (RunInfo.exact(utc(2024, 1, 3, 6)),)
    assert decision.next_run is None
    after = due_runs(spec, decision.last_automated, NOW, active_runs=0, limit=100)
    assert after.reason == REASON_SCHEDULE_EXHAUSTED


@pytest.mark.parametrize("schedule", ["@daily", timedelta(days=1)], ids=["cron", "delta"])
def test_no_catchup_creates_only_the_latest_complete_interval(schedule: str | timedelta) -> None:
    spec = dag(schedule, start_date=utc(2024, 1, 1), catchup=False)
    decision = due_runs(spec, None, NOW, active_runs=0, limit=100)
    assert logical_dates(decision) == days(4)
    assert decision.next_run == RunInfo.interval(utc(2024, 1, 5), utc(2024, 1, 6))
    # After a long pause the next call skips the missed days too.
    later = due_runs(spec, decision.last_automated, utc(2024, 1, 20, 1), 0, 100)
    assert logical_dates(later) == [utc(2024, 1, 19)]


def test_delta_catchup_counts_whole_intervals() -> None:
    spec = dag(timedelta(hours=5), start_date=utc(2024, 1, 1, 1))
    decision = due_runs(spec, None, utc(2024, 1, 2, 1), active_runs=0, limit=100)
    # 24 hours hold four whole 5-hour intervals: 01-06, 06-11, 11-16, 16-21.
    assert [run.logical_date.hour for run in decision.runs] == [1, 6, 11, 16]
    assert decision.next_run_after == utc(2024, 1, 2, 2)


def test_cron_in_dag_timezone_across_dst() -> None:
    spec = dag("0 9 * * *", start_date=utc(2024, 3, 9), timezone="America/New_York")
    decision = due_runs(spec, None, utc(2024, 3, 11, 13), active_runs=0, limit=100)
    assert [run.data_interval for run in decision.runs] == [
        DataInterval(start=utc(2024, 3, 9, 14), end=utc(2024, 3, 10, 13)),
        DataInterval(start=utc(2024, 3, 10, 13), end=utc(2024, 3, 11, 13)),
    ]
