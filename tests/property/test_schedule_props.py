"""Properties of schedules and due_runs: runs increase, intervals tile time, catchup counts match
interval arithmetic, catchup=False creates only the latest interval, and chunked calls agree
with one big call."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tradewind.errors import InvalidScheduleError
from tradewind.schedules import (
    DataInterval,
    RunInfo,
    _CronTimetable,
    manual_data_interval,
    parse_schedule,
)
from tradewind.scheduling.runs import due_runs
from tradewind.spec import DagSpec, ScheduleKind

SETTINGS = settings(max_examples=100, deadline=None)
UNLIMITED = 100_000

# Each expression with roughly its longest gap between ticks, to size windows in ticks.
PERIODS = {
    "* * * * *": timedelta(minutes=1),
    "*/7 * * * *": timedelta(minutes=7),
    "*/30 * * * *": timedelta(minutes=30),
    "0 * * * *": timedelta(hours=1),
    "45 */3 * * *": timedelta(hours=3),
    "0 2 * * *": timedelta(days=1),
    "30 1,2,3 * * *": timedelta(days=1),
    "0 9 * * 1-5": timedelta(days=3),
    "15 0 1,15 * *": timedelta(days=17),
}
CRONS = list(PERIODS)
# Zones with DST (including Lord Howe's 30-minute shift) and without.
ZONES = ["UTC", "Europe/Zurich", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]

# Start anywhere in 2023 (two DST changes in every zone with DST), to the second.
starts = st.datetimes(
    min_value=datetime(2023, 1, 1), max_value=datetime(2023, 12, 31), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=0))
# The 2023 DST changes of the zones above, in UTC: starts up to a day and a half before one
# (and a little after) put a change inside the window.
DST_CHANGES = [
    datetime(2023, 3, 12, 7, tzinfo=UTC),  # America/New_York
    datetime(2023, 11, 5, 6, tzinfo=UTC),
    datetime(2023, 3, 26, 1, tzinfo=UTC),  # Europe/Zurich
    datetime(2023, 10, 29, 1, tzinfo=UTC),
    datetime(2023, 4, 1, 15, tzinfo=UTC),  # Australia/Lord_Howe (30 minutes)
    datetime(2023, 9, 30, 15, 30, tzinfo=UTC),
]
near_dst = st.sampled_from(DST_CHANGES).flatmap(
    lambda change: st.integers(min_value=-36 * 60, max_value=6 * 60).map(
        lambda minutes: change + timedelta(minutes=minutes)
    )
)
deltas = st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=3)).map(
    lambda delta: timedelta(seconds=max(60, int(delta.total_seconds())))
)


def dag(schedule: str | timedelta | None, **kwargs: Any) -> DagSpec:
    return DagSpec(
        dag_id="d",
        fileloc="d.py",
        schedule=parse_schedule(schedule),
        max_active_runs=UNLIMITED,
        **kwargs,
    )


def assert_tiled(runs: tuple[RunInfo, ...]) -> None:
    for run in runs:
        assert run.logical_date == run.data_interval.start
        assert run.run_after == run.data_interval.end
        assert run.data_interval.start < run.data_interval.end
    for before, after in itertools.pairwise(runs):
        assert before.logical_date < after.logical_date
        assert before.data_interval.end == after.data_interval.start


def chunked(spec: DagSpec, now: datetime, sizes: list[int]) -> list[RunInfo]:
    created: list[RunInfo] = []
    last: DataInterval | None = None
    for size in sizes:
        decision = due_runs(spec, last, now, active_runs=0, limit=size)
        created.extend(decision.runs)
        last = decision.last_automated or last
    return created


ticks = st.floats(min_value=0, max_value=60)


@SETTINGS
@given(
    expression=st.sampled_from(CRONS),
    zone=st.sampled_from(ZONES),
    start=starts | near_dst,
    count=ticks,
)
# Lord Howe's 30-minute DST start: runs alternated between two intervals before the fix.
@example(
    expression="0 * * * *",
    zone="Australia/Lord_Howe",
    start=datetime(2023, 9, 29, tzinfo=UTC),
    count=40.0,
)
def test_cron_runs_increase_and_tile(
    expression: str, zone: str, start: datetime, count: float
) -> None:
    span = PERIODS[expression] * count
    spec = dag(expression, start_date=start, timezone=zone)
    decision = due_runs(spec, None, start + span, active_runs=0, limit=300)
    assert_tiled(decision.runs)
    assert all(run.run_after <= start + span for run in decision.runs)
    assert all(run.logical_date >= start for run in decision.runs)
    if decision.runs and decision.next_run is not None:
        assert decision.runs[-1].data_interval.end == decision.next_run.data_interval.start


@SETTINGS
@given(expression=st.sampled_from(CRONS), zone=st.sampled_from(ZONES), start=starts | near_dst)
# Lord Howe's DST end: one step back by wall-clock time stopped short of 14:00 UTC.
@example(expression="0 * * * *", zone="Australia/Lord_Howe", start=datetime(2023, 4, 1, tzinfo=UTC))
def test_cron_prev_tick_undoes_next_tick(expression: str, zone: str, start: datetime) -> None:
    """On the ticks next_tick makes (across DST changes too), prev_tick steps back to the same
    ticks: what manual runs and catchup=False rely on to find an interval."""
    timetable = _CronTimetable(expression, ZoneInfo(zone))
    ticks = [timetable.align_to_next(start)]
    for _ in range(30):
        ticks.append(timetable.next_tick(ticks[-1]))
    for before, after in itertools.pairwise(ticks):
        assert before < after
        assert timetable.prev_tick(after) == before, (before, after)


@SETTINGS
@given(delta=deltas, start=starts, periods=st.integers(min_value=0, max_value=60))
def test_delta_runs_increase_and_tile(delta: timedelta, start: datetime, periods: int) -> None:
    spec = dag(delta, start_date=start)
    decision = due_runs(spec, None, start + delta * periods, active_runs=0, limit=UNLIMITED)
    assert_tiled(decision.runs)
    assert all(run.data_interval.end - run.data_interval.start == delta for run in decision.runs)


@SETTINGS
@given(
    delta=deltas,
    start=starts,
    elapsed=st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=20)),
    end_offset=st.none()
    | st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=20)),
)
def test_delta_catchup_count_is_interval_arithmetic(
    delta: timedelta, start: datetime, elapsed: timedelta, end_offset: timedelta | None
) -> None:
    now = start + elapsed
    end_date = None if end_offset is None else start + end_offset
    spec = dag(delta, start_date=start, end_date=end_date)
    expected = max(0, (now - start) // delta)  # intervals fully ended by now
    if end_date is not None:  # end_date bounds the logical date, i.e. the interval start
        expected = min(expected, max(0, (end_date - start) // delta + 1))
    decision = due_runs(spec, None, now, active_runs=0, limit=UNLIMITED)
    assert len(decision.runs) == expected
    assert [run.logical_date for run in decision.runs] == [
        start + delta * index for index in range(expected)
    ]


@SETTINGS
@given(
    expression=st.sampled_from(CRONS),
    start=starts.map(lambda moment: moment.replace(second=0)),
    count=ticks,
)
def test_utc_cron_catchup_count_matches_croniter(
    expression: str, start: datetime, count: float
) -> None:
    now = start + PERIODS[expression] * count
    # Independent oracle: croniter's own ticks from the first one at or after start_date.
    ticks = croniter(expression, start - timedelta(minutes=1)).all_next(datetime)
    expected = []
    tick = next(ticks)
    while (following := next(ticks)) <= now:
        expected.append(DataInterval(start=tick, end=following))
        tick = following
    decision = due_runs(dag(expression, start_date=start), None, now, 0, UNLIMITED)
    assert [run.data_interval for run in decision.runs] == expected


@SETTINGS
@given(
    schedule=st.sampled_from(CRONS) | deltas,
    zone=st.sampled_from(ZONES),
    start=starts,
    span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=5)),
    sizes=st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=40),
)
def test_chunked_calls_equal_one_big_call(
    schedule: str | timedelta, zone: str, start: datetime, span: timedelta, sizes: list[int]
) -> None:
    spec = dag(schedule, start_date=start, timezone=zone)
    now = start + span
    whole = due_runs(spec, None, now, active_runs=0, limit=sum(sizes))
    assert chunked(spec, now, sizes) == list(whole.runs)


@SETTINGS
@given(
    schedule=st.sampled_from(CRONS) | deltas,
    zone=st.sampled_from(ZONES),
    start=starts,
    span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    max_active=st.integers(min_value=1, max_value=5),
    active=st.integers(min_value=0, max_value=7),
    limit=st.integers(min_value=0, max_value=7),
)
def test_caps_are_respected(
    schedule: str | timedelta,
    zone: str,
    start: datetime,
    span: timedelta,
    max_active: int,
    active: int,
    limit: int,
) -> None:
    spec = DagSpec(
        dag_id="d",
        fileloc="d.py",
        schedule=parse_schedule(schedule),
        start_date=start,
        timezone=zone,
        max_active_runs=max_active,
    )
    decision = due_runs(spec, None, start + span, active_runs=active, limit=limit)
    assert len(decision.runs) <= max(0, min(limit, max_active - active))
    assert (decision.reason is None) == bool(decision.runs)


@SETTINGS
@given(
    schedule=st.sampled_from(CRONS) | deltas,
    zone=st.sampled_from(ZONES),
    start=starts,
    span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
)
def test_no_catchup_creates_at_most_the_latest_complete_interval(
    schedule: str | timedelta, zone: str, start: datetime, span: timedelta
) -> None:
    spec = dag(schedule, start_date=start, timezone=zone, catchup=False)
    now = start + span
    decision = due_runs(spec, None, now, active_runs=0, limit=UNLIMITED)
    assert len(decision.runs) <= 1
    # Whatever was created, nothing else is due at the same instant.
    again = due_runs(spec, decision.last_automated, now, active_runs=0, limit=UNLIMITED)
    assert again.runs == ()
    if decision.runs and decision.next_run is not None:
        assert decision.next_run.run_after > now


@SETTINGS
@given(
    expression=st.sampled_from(CRONS),
    zone=st.sampled_from(ZONES),
    at=starts,
)
def test_cron_manual_interval_is_the_last_complete_one(
    expression: str, zone: str, at: datetime
) -> None:
    spec = dag(expression, timezone=zone)
    span = manual_data_interval(spec, at)
    assert span.start < span.end <= at
    # Scheduling on from that interval yields one that has not ended at `at`.
    following = due_runs(spec, span, at, active_runs=0, limit=UNLIMITED)
    assert following.next_run is not None
    assert following.next_run.data_interval.start == span.end
    assert following.next_run.run_after > at


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=40) | st.sampled_from(["@daily", "0 0 * * *", "1-5 * * * *"]))
def test_parse_schedule_accepts_or_raises_invalid_schedule(value: str) -> None:
    try:
        spec = parse_schedule(value)
    except InvalidScheduleError as exc:
        message = str(exc)
    else:
        message = ""
        assert spec.label == value
        assert spec.kind in (ScheduleKind.CRON, ScheduleKind.ONCE)
    assert message == "" or repr(value) in message
