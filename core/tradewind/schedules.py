"""Schedules: parse what a DAG author wrote into a ScheduleSpec, and the data-interval arithmetic
of Airflow 2's timetables (CronDataInterval, DeltaDataInterval, Once, Null) on top of it:
the next run after a given interval, manual-run intervals and run ids."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from tradewind.errors import BadInputError, InvalidScheduleError
from tradewind.spec import DagSpec, ScheduleKind, ScheduleSpec

__all__ = [
    "CRON_PRESETS",
    "DataInterval",
    "RunInfo",
    "RunType",
    "manual_data_interval",
    "next_dagrun_info",
    "parse_schedule",
    "resolve_timezone",
    "run_id_for",
]

# Airflow's cron_presets, plus the croniter aliases Airflow lets through unchanged.
CRON_PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# Any fixed instant works: only whether the expression ever fires is checked.
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------ parsing


def parse_schedule(value: str | timedelta | None) -> ScheduleSpec:
    """Validate a DAG's `schedule` argument; raise InvalidScheduleError naming what is wrong."""
    if value is None:
        return ScheduleSpec(kind=ScheduleKind.NONE, label="None")
    if isinstance(value, timedelta):
        return _parse_delta(value)
    if isinstance(value, str):
        return _parse_string(value)
    raise InvalidScheduleError(
        f"schedule {value!r} of type {type(value).__name__} is not supported: use None, "
        "a preset such as '@daily', a 5-field cron expression or a datetime.timedelta"
    )


def _parse_delta(value: timedelta) -> ScheduleSpec:
    if value <= timedelta(0):
        raise InvalidScheduleError(f"schedule interval {value!r} must be a positive timedelta")
    return ScheduleSpec(kind=ScheduleKind.DELTA, label=str(value), delta=value)


def _parse_string(value: str) -> ScheduleSpec:
    text = value.strip()
    if text == "@once":
        return ScheduleSpec(kind=ScheduleKind.ONCE, label=value)
    if text.startswith("@"):
        if text not in CRON_PRESETS:
            known = ", ".join(["@once", *CRON_PRESETS])
            raise InvalidScheduleError(f"unknown schedule preset {value!r}; known presets: {known}")
        return ScheduleSpec(kind=ScheduleKind.CRON, label=value, expression=CRON_PRESETS[text])
    expression = " ".join(text.split())
    _validate_cron(value, expression)
    return ScheduleSpec(kind=ScheduleKind.CRON, label=value, expression=expression)


def _validate_cron(value: str, expression: str) -> None:
    fields = len(expression.split())
    if fields != 5:
        raise InvalidScheduleError(
            f"invalid cron expression {value!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {fields}"
        )
    try:
        croniter(expression, _PROBE).get_next(datetime)
    except CroniterBadDateError:
        # The fields are each valid but together no date matches them (e.g. 30 February).
        raise InvalidScheduleError(
            f"invalid cron expression {value!r}: no date ever matches it"
        ) from None
    except (CroniterError, ValueError, KeyError, IndexError, TypeError) as exc:
        # croniter reports some malformed fields with bare built-in errors.
        raise InvalidScheduleError(f"invalid cron expression {value!r}: {exc}") from None


def resolve_timezone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; InvalidScheduleError names it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(f"unknown time zone {name!r}: use an IANA name") from None


# ------------------------------------------------------------------------------------- values


def _utc(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadInputError(f"{name} {value.isoformat()} must be timezone-aware")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataInterval:
    """The half-open span [start, end) of data a run covers; aware, normalised to UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc("data interval start", self.start))
        object.__setattr__(self, "end", _utc("data interval end", self.end))
        if self.start > self.end:
            raise BadInputError(
                f"data interval start {self.start.isoformat()} is after its end "
                f"{self.end.isoformat()}"
            )

    @classmethod
    def exact(cls, at: datetime) -> DataInterval:
        """The empty interval [at, at] of @once, None and manual runs of those schedules."""
        return cls(start=at, end=at)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """One automated run: its logical date (the interval start) and when it may be created."""

    logical_date: datetime
    data_interval: DataInterval
    run_after: datetime

    @classmethod
    def interval(cls, start: datetime, end: datetime) -> RunInfo:
        """A data-interval run: logical date = start, created once `end` has passed."""
        data_interval = DataInterval(start=start, end=end)
        return cls(
            logical_date=data_interval.start,
            data_interval=data_interval,
            run_after=data_interval.end,
        )

    @classmethod
    def exact(cls, at: datetime) -> RunInfo:
        """A run at one instant: interval [at, at], created once `at` has passed."""
        data_interval = DataInterval.exact(at)
        return cls(
            logical_date=data_interval.start,
            data_interval=data_interval,
            run_after=data_interval.start,
        )


class RunType(StrEnum):
    """How a DAG run came to be; the prefix of its run id, as in Airflow's DagRunType."""

    SCHEDULED = "scheduled"  # created by a scheduler from the DAG's schedule
    MANUAL = "manual"  # triggered by a user or the API
    BACKFILL = "backfill"  # created by a backfill over a date range


def run_id_for(run_type: RunType, logical_date: datetime) -> str:
    """Airflow's run id: `<run type>__<logical date in UTC, ISO 8601>`."""
    return f"{RunType(run_type).value}__{_utc('logical date', logical_date).isoformat()}"


# ---------------------------------------------------------------------------------- timetables


class _Timetable(Protocol):
    """The four moves Airflow's _DataIntervalTimetable is built from, plus catchup=False."""

    def next_tick(self, current: datetime) -> datetime: ...
    def prev_tick(self, current: datetime) -> datetime: ...
    def align_to_next(self, current: datetime) -> datetime: ...
    def align_to_prev(self, current: datetime) -> datetime: ...
    def skip_to_latest(self, earliest: datetime | None, now: datetime) -> datetime: ...


def _localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in `zone` as UTC; of two candidates (DST gap or fold) the later one.

    Airflow (pendulum) resolves a skipped 2am to 3am DST and a repeated 2am to its second
    occurrence; with zoneinfo both are the later of the fold=0 and fold=1 readings."""
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return max(first, second)


@functools.lru_cache(maxsize=1024)
def _cron_template(expression: str) -> croniter[datetime]:
    return croniter(expression, _PROBE, ret_type=datetime)


def _cron_tick(expression: str, naive: datetime, *, forward: bool) -> datetime:
    # Expanding the expression is croniter's costly step (most of a tick's time), so each tick
    # works on a copy of a cached, already expanded iterator; copies keep the cache untouched.
    cron = copy.copy(_cron_template(expression))
    return cron.get_next(datetime, naive) if forward else cron.get_prev(datetime, naive)


def _covers_every_hour(expression: str) -> bool:
    # Airflow steps schedules that fire every hour by elapsed time, so that `30 * * * *` also
    # fires in the repeated hour when DST ends; croniter normalises such an hour field to *.
    return _cron_template(expression).expanded[1] == ["*"]


@dataclass(frozen=True, slots=True)
class _CronTimetable:
    """Ticks of a cron expression evaluated on the wall clock of `zone`, as Airflow's CronMixin."""

    expression: str
    zone: ZoneInfo

    def next_tick(self, current: datetime) -> datetime:
        naive = current.astimezone(self.zone).replace(tzinfo=None)
        tick = _cron_tick(self.expression, naive, forward=True)
        if _covers_every_hour(self.expression):
            return current.astimezone(UTC) + (tick - naive)
        return _localize(tick, self.zone)

    def prev_tick(self, current: datetime) -> datetime:
        naive = current.astimezone(self.zone).replace(tzinfo=None)
        tick = _cron_tick(self.expression, naive, forward=False)
        if _covers_every_hour(self.expression):
            # Stepping back by wall-clock time misses across a DST shift that is not a whole
            # hour (Lord Howe's 30 minutes): next_tick steps 1:00 -> 2:30 -> 3:00 when DST
            # starts, but 3:00 minus an hour is 1:30 standard time, and run after run then
            # alternated between two intervals; when DST ends a step back can stop short, on a
            # time that is no tick. So step back two ticks and forward to the last tick before
            # `current`, as next_tick makes them.
            earlier = _cron_tick(self.expression, tick, forward=False)
            previous = current.astimezone(UTC) - (naive - earlier)
            while (following := self.next_tick(previous)) < current:
                previous = following
            return previous
        previous = _localize(tick, self.zone)
        # Deliberate fix over Airflow: a wall-clock tick that DST skipped or repeated can map to
        # `current` itself or later (e.g. 2am -> 3am DST), which gave Airflow empty or inverted
        # intervals for a whole day; keep stepping back until the tick really is earlier.
        while previous >= current:
            tick = _cron_tick(self.expression, tick, forward=False)
            previous = _localize(tick, self.zone)
        return previous

    def align_to_next(self, current: datetime) -> datetime:
        following = self.next_tick(current)
        return current if self.prev_tick(following) == current else following

    def align_to_prev(self, current: datetime) -> datetime:
        previous = self.prev_tick(current)
        return current if self.next_tick(previous) == current else previous

    def skip_to_latest(self, earliest: datetime | None, now: datetime) -> datetime:
        # The start of the latest interval that has fully ended at `now`. Airflow asserts that
        # next_tick(prev_tick(now)) is never before now; it is not, so "after" covers the rest.
        last_start = self.prev_tick(now)
        new_start = last_start if self.next_tick(last_start) == now else self.prev_tick(last_start)
        if earliest is None:
            return new_start
        return max(new_start, self.align_to_next(earliest))


@dataclass(frozen=True, slots=True)
class _DeltaTimetable:
    """Fixed steps of elapsed time with no alignment, as Airflow's DeltaDataIntervalTimetable."""

    delta: timedelta

    def next_tick(self, current: datetime) -> datetime:
        return current + self.delta

    def prev_tick(self, current: datetime) -> datetime:
        return current - self.delta

    def align_to_next(self, current: datetime) -> datetime:
        return current

    def align_to_prev(self, current: datetime) -> datetime:
        return current

    def skip_to_latest(self, earliest: datetime | None, now: datetime) -> datetime:
        # Airflow rounds `now` down to a multiple of the delta since the Unix epoch (not since
        # start_date), then steps back one delta: the latest epoch-aligned complete interval.
        rounded = _EPOCH + ((now - _EPOCH) // self.delta) * self.delta
        new_start = rounded - self.delta
        return new_start if earliest is None else max(new_start, earliest)


def _timetable(spec: DagSpec) -> _Timetable:
    schedule = spec.schedule
    if schedule.kind is ScheduleKind.CRON and schedule.expression is not None:
        try:
            _cron_template(schedule.expression)
        except (CroniterError, ValueError, KeyError, IndexError, TypeError) as exc:
            # Only reachable for a spec built without parse_schedule (e.g. a tampered row).
            raise InvalidScheduleError(
                f"DAG {spec.dag_id!r} has an invalid cron expression {schedule.expression!r}: {exc}"
            ) from None
        return _CronTimetable(schedule.expression, resolve_timezone(spec.timezone))
    if schedule.kind is ScheduleKind.DELTA and schedule.delta is not None:
        return _DeltaTimetable(schedule.delta)
    raise InvalidScheduleError(f"DAG {spec.dag_id!r} has a malformed schedule {schedule!r}")


# ------------------------------------------------------------------------------- next run info


def next_dagrun_info(
    spec: DagSpec, last_automated: DataInterval | None, now: datetime
) -> RunInfo | None:
    """The automated run after `last_automated` (None: the first), or None when there is none.

    Airflow's Timetable.next_dagrun_info under the DAG's restriction: earliest = start_date,
    latest = end_date (bounding the logical date), catchup. `now` only matters with
    catchup=False, where the run may skip ahead to the latest complete interval."""
    now = _utc("now", now)
    kind = spec.schedule.kind
    if kind is ScheduleKind.NONE:
        return None
    if kind is ScheduleKind.ONCE:
        return _once_info(spec, last_automated)
    timetable = _timetable(spec)
    earliest = _utc("start_date", spec.start_date) if spec.start_date is not None else None
    if not spec.catchup:
        earliest = timetable.skip_to_latest(earliest, now)
    elif earliest is not None:
        earliest = timetable.align_to_next(earliest)
    if last_automated is None:
        if earliest is None:
            return None
        start = earliest
    else:
        # Re-aligning the previous end copes with a DAG whose schedule has changed since.
        start = timetable.align_to_prev(last_automated.end)
        if earliest is not None:
            start = max(start, earliest)
    if spec.end_date is not None and start > _utc("end_date", spec.end_date):
        return None
    return RunInfo.interval(start, timetable.next_tick(start))


def _once_info(spec: DagSpec, last_automated: DataInterval | None) -> RunInfo | None:
    # @once runs at start_date whatever catchup says, as Airflow has done since 1.10.
    if last_automated is not None or spec.start_date is None:
        return None
    start = _utc("start_date", spec.start_date)
    if spec.end_date is not None and start > _utc("end_date", spec.end_date):
        return None
    return RunInfo.exact(start)


def manual_data_interval(spec: DagSpec, logical_date: datetime) -> DataInterval:
    """The data interval of a run triggered by hand at `logical_date`, as Airflow infers it.

    Cron: the last complete interval ending at or before `logical_date`; timedelta:
    [logical_date - delta, logical_date]; @once and None: [logical_date, logical_date]."""
    at = _utc("logical date", logical_date)
    if spec.schedule.kind in (ScheduleKind.NONE, ScheduleKind.ONCE):
        return DataInterval.exact(at)
    timetable = _timetable(spec)
    end = timetable.align_to_prev(at)
    return DataInterval(start=timetable.prev_tick(end), end=end)
