"""The "which runs are due" decision for one DAG: the scheduled runs to create now, within
max_active_runs and a per-call limit, and the next run to record on the DAG row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tradewind.schedules import DataInterval, RunInfo, next_dagrun_info
from tradewind.spec import DagSpec, ScheduleKind

__all__ = [
    "REASON_LIMIT",
    "REASON_MANUAL_ONLY",
    "REASON_MAX_ACTIVE_RUNS",
    "REASON_NO_START_DATE",
    "REASON_SCHEDULE_EXHAUSTED",
    "DueRuns",
    "due_runs",
]

REASON_MANUAL_ONLY = "manual only"
REASON_SCHEDULE_EXHAUSTED = "schedule exhausted"
REASON_NO_START_DATE = "no start_date"
REASON_MAX_ACTIVE_RUNS = "max_active_runs reached"
REASON_LIMIT = "limit reached"
_REASON_NOT_DUE = "not due until {}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DueRuns:
    """What to create for one DAG now, and the next run to store on its row.

    `runs` are in logical-date order, each with run_after <= now. `next_run` is the first
    automated run not created by this decision (possibly already due, when a cap stopped
    creation), or None when the schedule has no more runs. `reason` explains an empty `runs`."""

    runs: tuple[RunInfo, ...]
    next_run: RunInfo | None
    reason: str | None = None

    @property
    def next_logical_date(self) -> datetime | None:
        """The logical date of `next_run`, or None when the schedule is exhausted."""
        return None if self.next_run is None else self.next_run.logical_date

    @property
    def next_data_interval(self) -> DataInterval | None:
        """The data interval of `next_run`, or None when the schedule is exhausted."""
        return None if self.next_run is None else self.next_run.data_interval

    @property
    def next_run_after(self) -> datetime | None:
        """When `next_run` may be created, or None when the schedule is exhausted."""
        return None if self.next_run is None else self.next_run.run_after

    @property
    def last_automated(self) -> DataInterval | None:
        """The data interval of the last run in `runs`, or None when it creates nothing."""
        return self.runs[-1].data_interval if self.runs else None


def due_runs(
    spec: DagSpec,
    last_automated: DataInterval | None,
    now: datetime,
    active_runs: int,
    limit: int,
) -> DueRuns:
    """The scheduled runs of `spec` to create at `now`, resuming after `last_automated`.

    Creates at most `limit` runs and at most max_active_runs - active_runs (never negative).
    Calling it again with the last created interval continues exactly where this call stopped,
    so several small calls create the same runs as one large call at the same `now`."""
    capacity = max(0, min(limit, spec.max_active_runs - active_runs))
    runs: list[RunInfo] = []
    upcoming = next_dagrun_info(spec, last_automated, now)
    while upcoming is not None and upcoming.run_after <= now and len(runs) < capacity:
        runs.append(upcoming)
        upcoming = next_dagrun_info(spec, upcoming.data_interval, now)
    reason = None if runs else _idle_reason(spec, upcoming, now, active_runs)
    return DueRuns(runs=tuple(runs), next_run=upcoming, reason=reason)


def _idle_reason(spec: DagSpec, upcoming: RunInfo | None, now: datetime, active_runs: int) -> str:
    if spec.schedule.kind is ScheduleKind.NONE:
        return REASON_MANUAL_ONLY
    if upcoming is None:
        return REASON_NO_START_DATE if spec.start_date is None else REASON_SCHEDULE_EXHAUSTED
    if upcoming.run_after > now:
        return _REASON_NOT_DUE.format(upcoming.run_after.isoformat())
    if active_runs >= spec.max_active_runs:
        return REASON_MAX_ACTIVE_RUNS
    return REASON_LIMIT
