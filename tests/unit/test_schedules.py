"""Schedules: parsing, data intervals, next_dagrun_info, manual intervals and run ids.

Cases marked "Airflow" are ported from apache/airflow tests/timetables/test_interval_timetable.py
(Airflow 2.x), so a DAG moved over from Airflow gets the same runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tradewind.errors import BadInputError, InvalidScheduleError
from tradewind.schedules import (
    CRON_PRESETS,
    DataInterval,
    RunInfo,
    RunType,
    manual_data_interval,
    next_dagrun_info,
    parse_schedule,
    resolve_timezone,
    run_id_for,
)
from tradewind.spec import DagSpec, ScheduleKind, ScheduleSpec

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def dag(schedule: str | timedelta | None, **kwargs: Any) -> DagSpec:
    return DagSpec(dag_id="d", fileloc="d.py", schedule=parse_schedule(schedule), **kwargs)


def interval(start: datetime, end: datetime) -> DataInterval:
    return DataInterval(start=start, end=end)


def chain(spec: DagSpec, count: int, now: datetime = FAR_FUTURE) -> list[DataInterval]:
    """The first `count` intervals, each computed from the previous one as the scheduler does."""
    result: list[DataInterval] = []
    last: DataInterval | None = None
    for _ in range(count):
        info = next_dagrun_info(spec, last, now)
        assert info is not None
        result.append(info.data_interval)
        last = info.data_interval
    return result


# ------------------------------------------------------------------------------ parse_schedule


@pytest.mark.parametrize(
    ("preset", "expression"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@quarterly", "0 0 1 */3 *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_presets_resolve_to_cron_and_keep_label(preset: str, expression: str) -> None:
    spec = parse_schedule(preset)
    assert spec.kind is ScheduleKind.CRON
    assert spec.expression == expression
    assert spec.label == preset
    assert CRON_PRESETS[preset] == expression


def test_none_is_manual_only() -> None:
    spec = parse_schedule(None)
    assert spec.kind is ScheduleKind.NONE
    assert spec.label == "None"
    assert spec.expression is None
    assert spec.delta is None


def test_once() -> None:
    spec = parse_schedule("@once")
    assert spec.kind is ScheduleKind.ONCE
    assert spec.label == "@once"
    assert spec.expression is None


@pytest.mark.parametrize("cron", ["*/5 * * * *", "30 16 * * *", "0 9 * * MON-FRI", "0 0 L * *"])
def test_valid_cron(cron: str) -> None:
    spec = parse_schedule(cron)
    assert spec.kind is ScheduleKind.CRON
    assert spec.expression == cron
    assert spec.label == cron


def test_cron_whitespace_is_normalised_in_expression_only() -> None:
    spec = parse_schedule("  0   0 * *  * ")
    assert spec.expression == "0 0 * * *"
    assert spec.label == "  0   0 * *  * "


def test_timedelta() -> None:
    spec = parse_schedule(timedelta(minutes=30))
    assert spec.kind is ScheduleKind.DELTA
    assert spec.delta == timedelta(minutes=30)
    assert spec.label == "0:30:00"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0 0 1 13 0", "'0 0 1 13 0'"),  # Airflow's invalid-cron case: month 13
        ("61 * * * *", "out of range"),
        ("* * * * * *", "expected 5 fields"),
        ("0 0 * *", "got 4"),
        ("", "got 0"),
        ("every day", "got 2"),
        ("0 0 30 2 *", "no date ever matches it"),
        ("@every_day", "unknown schedule preset '@every_day'"),
        ("@continuous", "unknown schedule preset"),
    ],
)
def test_bad_strings_are_rejected_naming_the_expression(value: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message) as caught:
        parse_schedule(value)
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(days=-1), timedelta(microseconds=-1)])
def test_non_positive_timedelta_is_rejected(delta: timedelta) -> None:
    with pytest.raises(InvalidScheduleError, match="must be a positive timedelta"):
        parse_schedule(delta)


@pytest.mark.parametrize("value", [5, 1.5, b"@daily", datetime(2024, 1, 1)])
def test_other_types_are_rejected(value: object) -> None:
    with pytest.raises(InvalidScheduleError, match="not supported"):
        parse_schedule(value)  # type: ignore[arg-type]


def test_resolve_timezone() -> None:
    assert str(resolve_timezone("Europe/Zurich")) == "Europe/Zurich"
    with pytest.raises(InvalidScheduleError, match="'Mars/Olympus'"):
        resolve_timezone("Mars/Olympus")
    with pytest.raises(InvalidScheduleError, match="unknown time zone"):
        resolve_timezone("../etc/passwd")


# ----------------------------------------------------------------------------- values, run ids


def test_data_interval_normalises_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    span = DataInterval(start=datetime(2024, 1, 1, 2, tzinfo=plus_two), end=utc(2024, 1, 2))
    assert span.start == utc(2024, 1, 1)
    assert span.start.tzinfo is UTC


def test_data_interval_rejects_naive_and_reversed() -> None:
    with pytest.raises(BadInputError, match="timezone-aware"):
        DataInterval(start=datetime(2024, 1, 1), end=utc(2024, 1, 2))
    with pytest.raises(BadInputError, match="after its end"):
        DataInterval(start=utc(2024, 1, 2), end=utc(2024, 1, 1))


def test_run_info_shapes() -> None:
    info = RunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    assert info.logical_date == utc(2024, 1, 1)
    assert info.run_after == utc(2024, 1, 2)
    exact = RunInfo.exact(utc(2024, 1, 1))
    assert exact.data_interval == interval(utc(2024, 1, 1), utc(2024, 1, 1))
    assert exact.run_after == exact.logical_date == utc(2024, 1, 1)


@pytest.mark.parametrize(
    ("run_type", "expected"),
    [
        (RunType.SCHEDULED, "scheduled__2024-01-01T00:00:00+00:00"),
        (RunType.MANUAL, "manual__2024-01-01T00:00:00+00:00"),
        (RunType.BACKFILL, "backfill__2024-01-01T00:00:00+00:00"),
    ],
)
def test_run_ids_match_airflow(run_type: RunType, expected: str) -> None:
    assert run_id_for(run_type, utc(2024, 1, 1)) == expected


def test_run_id_is_in_utc_with_microseconds() -> None:
    local = datetime(2024, 1, 1, 1, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert run_id_for(RunType.MANUAL, local) == "manual__2024-01-01T00:00:00.123456+00:00"
    with pytest.raises(BadInputError):
        run_id_for(RunType.MANUAL, datetime(2024, 1, 1))


# ------------------------------------------------------------------- next_dagrun_info: cron


CURRENT_TIME = utc(2021, 9, 7)
START_DATE = utc(2021, 9, 4)
PREV_INTERVAL = interval(START_DATE, START_DATE + timedelta(days=1))


def test_cron_first_interval_starts_at_first_tick_at_or_after_start_date() -> None:
    assert chain(dag("@daily", start_date=utc(2024, 1, 1, 10)), 1) == [
        interval(utc(2024, 1, 2), utc(2024, 1, 3))
    ]
    assert chain(dag("@daily", start_date=utc(2024, 1, 1)), 2) == [
        interval(utc(2024, 1, 1), utc(2024, 1, 2)),
        interval(utc(2024, 1, 2), utc(2024, 1, 3)),
    ]


def test_cron_run_is_due_at_interval_end() -> None:
    info = next_dagrun_info(dag("@daily", start_date=utc(2024, 1, 1)), None, utc(2024, 1, 1))
    assert info == RunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    assert info.run_after == utc(2024, 1, 2)
    assert info.logical_date == utc(2024, 1, 1)


@pytest.mark.parametrize("last", [None, PREV_INTERVAL], ids=["first-run", "subsequent"])
def test_airflow_no_catchup_first_starts_at_current_time(last: DataInterval | None) -> None:
    spec = dag("30 16 * * *", start_date=CURRENT_TIME - timedelta(days=1), catchup=False)
    info = next_dagrun_info(spec, last, CURRENT_TIME)
    tick = CURRENT_TIME + timedelta(hours=16, minutes=30)
    assert info == RunInfo.interval(tick - timedelta(days=1), tick)


@pytest.mark.parametrize("start", [None, START_DATE], ids=["none", "start_date"])
@pytest.mark.parametrize("catchup", [True, False])
def test_airflow_new_schedule_starts_at_new_time(start: datetime | None, catchup: bool) -> None:
    old = interval(CURRENT_TIME - timedelta(days=1), CURRENT_TIME)
    spec = dag("30 16 * * *", start_date=start, catchup=catchup)
    info = next_dagrun_info(spec, old, CURRENT_TIME)
    tick = CURRENT_TIME + timedelta(hours=16, minutes=30)
    assert info == RunInfo.interval(tick - timedelta(days=1), tick)


@pytest.mark.parametrize("schedule", ["@hourly", timedelta(hours=1)], ids=["cron", "delta"])
@pytest.mark.parametrize("last", [None, PREV_INTERVAL], ids=["first-run", "subsequent"])
def test_airflow_no_catchup_ends_at_current_time(
    schedule: str | timedelta, last: DataInterval | None
) -> None:
    spec = dag(schedule, start_date=START_DATE, catchup=False)
    info = next_dagrun_info(spec, last, CURRENT_TIME)
    assert info == RunInfo.interval(CURRENT_TIME - timedelta(hours=1), CURRENT_TIME)


@pytest.mark.parametrize("schedule", ["@hourly", timedelta(hours=1)], ids=["cron", "delta"])
def test_airflow_catchup_starts_at_previous_end(schedule: str | timedelta) -> None:
    spec = dag(schedule, start_date=START_DATE)
    info = next_dagrun_info(spec, PREV_INTERVAL, CURRENT_TIME)
    end = PREV_INTERVAL.end
    assert info == RunInfo.interval(end, end + timedelta(hours=1))


@pytest.mark.parametrize(
    "last",
    [
        interval(utc(2022, 8, 7), utc(2022, 8, 8)),
        interval(utc(2022, 8, 7, 1), utc(2022, 8, 8, 1)),  # written under an older schedule
    ],
    ids=["exact", "changed"],
)
def test_airflow_cron_realigns_previous_interval(last: DataInterval) -> None:
    info = next_dagrun_info(dag("@daily"), last, FAR_FUTURE)
    assert info == RunInfo.interval(utc(2022, 8, 8), utc(2022, 8, 9))


def test_cron_no_catchup_on_a_boundary_takes_the_interval_ending_now() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), catchup=False)
    on_tick = next_dagrun_info(spec, None, utc(2024, 1, 10))
    assert on_tick == RunInfo.interval(utc(2024, 1, 9), utc(2024, 1, 10))
    between = next_dagrun_info(spec, None, utc(2024, 1, 10, 5))
    assert between == RunInfo.interval(utc(2024, 1, 9), utc(2024, 1, 10))


def test_cron_no_catchup_skips_missed_intervals_after_a_pause() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), catchup=False)
    last = interval(utc(2024, 1, 1), utc(2024, 1, 2))
    info = next_dagrun_info(spec, last, utc(2024, 1, 10, 5))
    assert info == RunInfo.interval(utc(2024, 1, 9), utc(2024, 1, 10))


def test_no_catchup_with_future_start_date_waits_for_it() -> None:
    spec = dag("@daily", start_date=utc(2024, 2, 1, 6), catchup=False)
    info = next_dagrun_info(spec, None, utc(2024, 1, 10))
    assert info == RunInfo.interval(utc(2024, 2, 2), utc(2024, 2, 3))


def test_no_catchup_without_start_date_still_schedules_like_airflow() -> None:
    spec = dag("@daily", catchup=False)
    info = next_dagrun_info(spec, None, utc(2024, 1, 10, 5))
    assert info == RunInfo.interval(utc(2024, 1, 9), utc(2024, 1, 10))


def test_catchup_without_start_date_never_schedules() -> None:
    assert next_dagrun_info(dag("@daily"), None, FAR_FUTURE) is None
    assert next_dagrun_info(dag(timedelta(hours=1)), None, FAR_FUTURE) is None


def test_end_date_bounds_the_logical_date_not_the_interval_end() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), end_date=utc(2024, 1, 3))
    runs = chain(spec, 3)
    assert runs[-1] == interval(utc(2024, 1, 3), utc(2024, 1, 4))
    assert next_dagrun_info(spec, runs[-1], FAR_FUTURE) is None


def test_start_after_end_date_means_no_runs() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 5), end_date=utc(2024, 1, 3))
    assert next_dagrun_info(spec, None, FAR_FUTURE) is None


def test_cron_in_non_utc_zone_and_across_spring_forward() -> None:
    # 9am in New York: 14:00 UTC in EST, 13:00 UTC in EDT (DST began 10 March 2024).
    spec = dag("0 9 * * *", start_date=utc(2024, 3, 8), timezone="America/New_York")
    assert chain(spec, 3) == [
        interval(utc(2024, 3, 8, 14), utc(2024, 3, 9, 14)),
        interval(utc(2024, 3, 9, 14), utc(2024, 3, 10, 13)),  # a 23-hour day
        interval(utc(2024, 3, 10, 13), utc(2024, 3, 11, 13)),
    ]


def test_unknown_dag_timezone_is_an_invalid_schedule() -> None:
    spec = dag("@daily", start_date=utc(2024, 1, 1), timezone="Nowhere/Land")
    with pytest.raises(InvalidScheduleError, match="'Nowhere/Land'"):
        next_dagrun_info(spec, None, FAR_FUTURE)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(BadInputError, match="now"):
        next_dagrun_info(dag("@daily", start_date=utc(2024, 1, 1)), None, datetime(2024, 1, 1))


# Airflow's TestCronIntervalDst: Zurich entered DST on 26 Mar 2023 (2am -> 3am) and left it on
# 29 Oct 2023 (3am -> 2am, the 2am hour repeats).


def test_airflow_dst_entering_exact() -> None:
    spec = dag("0 3 * * *", start_date=utc(2023, 3, 24), timezone="Europe/Zurich")
    assert chain(spec, 3) == [
        interval(utc(2023, 3, 24, 2), utc(2023, 3, 25, 2)),
        interval(utc(2023, 3, 25, 2), utc(2023, 3, 26, 1)),
        interval(utc(2023, 3, 26, 1), utc(2023, 3, 27, 1)),
    ]


def test_airflow_dst_entering_skip() -> None:
    # 2am does not exist on the 26th: that tick is taken at 3am DST (1am UTC).
    spec = dag("0 2 * * *", start_date=utc(2023, 3, 24), timezone="Europe/Zurich")
    assert chain(spec, 3) == [
        interval(utc(2023, 3, 24, 1), utc(2023, 3, 25, 1)),
        interval(utc(2023, 3, 25, 1), utc(2023, 3, 26, 1)),
        interval(utc(2023, 3, 26, 1), utc(2023, 3, 27, 0)),
    ]


def test_airflow_dst_exiting_exact() -> None:
    spec = dag("0 3 * * *", start_date=utc(2023, 10, 27), timezone="Europe/Zurich")
    assert chain(spec, 3) == [
        interval(utc(2023, 10, 27, 1), utc(2023, 10, 28, 1)),
        interval(utc(2023, 10, 28, 1), utc(2023, 10, 29, 2)),
        interval(utc(2023, 10, 29, 2), utc(2023, 10, 30, 2)),
    ]


def test_airflow_dst_exiting_fold() -> None:
    # 2am happens twice on the 29th; Airflow ends on the second one (1am UTC).
    spec = dag("0 2 * * *", start_date=utc(2023, 10, 27), timezone="Europe/Zurich")
    assert chain(spec, 3) == [
        interval(utc(2023, 10, 27, 0), utc(2023, 10, 28, 0)),
        interval(utc(2023, 10, 28, 0), utc(2023, 10, 29, 1)),
        interval(utc(2023, 10, 29, 1), utc(2023, 10, 30, 1)),
    ]


@pytest.mark.parametrize(
    ("cron", "hours"), [("0 7-8 * * *", (7, 8)), ("0 7,9 * * *", (7, 9))], ids=["7-8", "7,9"]
)
def test_airflow_dst_non_trivial_los_angeles(cron: str, hours: tuple[int, int]) -> None:
    # DST began on 8 Mar 2020 in Los Angeles: UTC-8 -> UTC-7.
    first, second = hours
    spec = dag(cron, start_date=utc(2020, 3, 7), timezone="America/Los_Angeles")
    assert chain(spec, 3) == [
        interval(utc(2020, 3, 7, first + 8), utc(2020, 3, 7, second + 8)),
        interval(utc(2020, 3, 7, second + 8), utc(2020, 3, 8, first + 7)),
        interval(utc(2020, 3, 8, first + 7), utc(2020, 3, 8, second + 7)),
    ]


def test_airflow_fold_scheduling_every_half_hour() -> None:
    # Schedules that fire every hour step by elapsed time, so the repeated hour is not skipped.
    spec = dag("*/30 * * * *", start_date=utc(2023, 10, 28, 23, 30), timezone="Europe/Zurich")
    ends = [span.end for span in chain(spec, 5)]
    assert ends == [
        utc(2023, 10, 29, 0, 0),  # 2:00 DST
        utc(2023, 10, 29, 0, 30),  # 2:30 DST
        utc(2023, 10, 29, 1, 0),  # 2:00 again, standard time
        utc(2023, 10, 29, 1, 30),  # 2:30 again
        utc(2023, 10, 29, 2, 0),  # 3:00 standard time
    ]


def test_hourly_across_spring_forward_keeps_one_hour_steps() -> None:
    spec = dag("@hourly", start_date=utc(2023, 3, 25, 23), timezone="Europe/Zurich")
    ends = [span.end for span in chain(spec, 3)]
    assert ends == [utc(2023, 3, 26, 0), utc(2023, 3, 26, 1), utc(2023, 3, 26, 2)]


# ------------------------------------------------------------------ next_dagrun_info: others


def test_delta_starts_at_start_date_without_alignment() -> None:
    spec = dag(timedelta(minutes=30), start_date=utc(2024, 2, 1, 0, 10))
    assert chain(spec, 2) == [
        interval(utc(2024, 2, 1, 0, 10), utc(2024, 2, 1, 0, 40)),
        interval(utc(2024, 2, 1, 0, 40), utc(2024, 2, 1, 1, 10)),
    ]


def test_delta_is_elapsed_time_whatever_the_dag_timezone() -> None:
    spec = dag(timedelta(days=1), start_date=utc(2023, 3, 25), timezone="Europe/Zurich")
    assert chain(spec, 2)[1] == interval(utc(2023, 3, 26), utc(2023, 3, 27))


def test_delta_no_catchup_rounds_now_down_from_the_unix_epoch() -> None:
    # Airflow >= 2.8 (apache/airflow#35391): floor(now) to a multiple of the delta since
    # 1970-01-01, minus one delta. 7h steps since the epoch pass 02:00 and 09:00 on 1 Jan 2024.
    spec = dag(timedelta(hours=7), start_date=utc(2020, 1, 1), catchup=False)
    info = next_dagrun_info(spec, None, utc(2024, 1, 1, 12))
    assert info == RunInfo.interval(utc(2024, 1, 1, 2), utc(2024, 1, 1, 9))


def test_delta_no_catchup_half_hour_table_from_airflow_docs() -> None:
    # Enabled at 01:05: the latest complete 30-minute interval, epoch-aligned.
    spec = dag(timedelta(minutes=30), start_date=utc(2024, 2, 1, 0, 10), catchup=False)
    info = next_dagrun_info(spec, None, utc(2024, 2, 1, 1, 5))
    assert info == RunInfo.interval(utc(2024, 2, 1, 0, 30), utc(2024, 2, 1, 1, 0))


def test_delta_no_catchup_keeps_a_later_start_date() -> None:
    spec = dag(timedelta(hours=1), start_date=utc(2024, 1, 1, 11, 20), catchup=False)
    info = next_dagrun_info(spec, None, utc(2024, 1, 1, 12, 30))
    assert info == RunInfo.interval(utc(2024, 1, 1, 11, 20), utc(2024, 1, 1, 12, 20))


def test_once_runs_once_at_start_date_whatever_catchup() -> None:
    for catchup in (True, False):
        spec = dag("@once", start_date=utc(2024, 1, 1, 6), catchup=catchup)
        info = next_dagrun_info(spec, None, utc(2030, 1, 1))
        assert info == RunInfo.exact(utc(2024, 1, 1, 6))
        assert next_dagrun_info(spec, info.data_interval, utc(2030, 1, 1)) is None


def test_once_without_start_date_or_after_end_date_never_runs() -> None:
    assert next_dagrun_info(dag("@once"), None, FAR_FUTURE) is None
    late = dag("@once", start_date=utc(2024, 1, 2), end_date=utc(2024, 1, 1))
    assert next_dagrun_info(late, None, FAR_FUTURE) is None


def test_none_schedule_never_runs() -> None:
    spec = dag(None, start_date=utc(2024, 1, 1))
    assert next_dagrun_info(spec, None, FAR_FUTURE) is None


# ------------------------------------------------------------------------ manual intervals


@pytest.mark.parametrize(
    "trigger_at", [utc(2022, 8, 8, 1), utc(2022, 8, 8)], ids=["adhoc", "exact"]
)
def test_airflow_cron_manual_interval_is_last_complete_period(trigger_at: datetime) -> None:
    assert manual_data_interval(dag("@daily"), trigger_at) == interval(
        utc(2022, 8, 7), utc(2022, 8, 8)
    )


def test_cron_manual_interval_in_dag_timezone() -> None:
    spec = dag("0 9 * * *", timezone="America/New_York")
    assert manual_data_interval(spec, utc(2024, 3, 10, 20)) == interval(
        utc(2024, 3, 9, 14), utc(2024, 3, 10, 13)
    )


def test_delta_manual_interval_ends_at_logical_date() -> None:
    spec = dag(timedelta(hours=6))
    assert manual_data_interval(spec, utc(2024, 1, 1, 5, 7)) == interval(
        utc(2023, 12, 31, 23, 7), utc(2024, 1, 1, 5, 7)
    )


@pytest.mark.parametrize("schedule", [None, "@once"])
def test_trivial_manual_interval_is_exact(schedule: str | None) -> None:
    at = utc(2024, 1, 1, 5, 7)
    assert manual_data_interval(dag(schedule), at) == interval(at, at)


def test_spec_with_a_bad_stored_expression_is_an_invalid_schedule() -> None:
    bad = ScheduleSpec(kind=ScheduleKind.CRON, label="x", expression="99 * * * *")
    spec = DagSpec(dag_id="d", fileloc="d.py", schedule=bad, start_date=utc(2024, 1, 1))
    with pytest.raises(InvalidScheduleError, match="'99 \\* \\* \\* \\*'"):
        next_dagrun_info(spec, None, FAR_FUTURE)


def test_manual_interval_on_a_dst_skipped_tick_day_is_a_full_interval() -> None:
    # 2am did not exist in Zurich on 26 Mar 2023; that tick is 3am DST = 01:00 UTC. Airflow steps
    # back from 3am wall-clock onto that same 2am and returns [01:00, 01:00] for every trigger
    # until the next tick: a deliberate fix here returns the day that really ended.
    spec = dag("0 2 * * *", timezone="Europe/Zurich")
    day = interval(utc(2023, 3, 25, 1), utc(2023, 3, 26, 1))
    assert manual_data_interval(spec, utc(2023, 3, 26, 1)) == day
    assert manual_data_interval(spec, utc(2023, 3, 26, 13)) == day


def test_no_catchup_on_a_dst_skipped_tick_day_takes_the_day_that_ended() -> None:
    spec = dag("0 2 * * *", start_date=utc(2023, 1, 1), timezone="Europe/Zurich", catchup=False)
    info = next_dagrun_info(spec, None, utc(2023, 3, 26, 13))
    assert info == RunInfo.interval(utc(2023, 3, 25, 1), utc(2023, 3, 26, 1))


def test_prev_tick_in_the_repeated_hour_is_never_later_than_now() -> None:
    # At 00:45 UTC on 29 Oct 2023 Zurich reads 2:45 DST; its 2:30 tick is taken (as Airflow does)
    # at the second 2:30, 01:30 UTC, which has not happened yet: the manual interval ends earlier.
    spec = dag("30 2 * * *", timezone="Europe/Zurich")
    span = manual_data_interval(spec, utc(2023, 10, 29, 0, 45))
    assert span == interval(utc(2023, 10, 27, 0, 30), utc(2023, 10, 28, 0, 30))
