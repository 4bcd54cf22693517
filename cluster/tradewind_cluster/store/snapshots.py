"""Frozen snapshots the store returns: no ORM object or Row ever leaves the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tradewind.states import DagRunState, TaskInstanceState

__all__ = ["DagRow", "RunRow", "TaskInstanceRow"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DagRow:
    """A dag row as the run-creation step reads it."""

    dag_id: str
    fileloc: str
    is_paused: bool
    is_active: bool
    max_active_runs: int
    last_automated_interval_start: datetime | None
    last_automated_interval_end: datetime | None
    next_dagrun_create_after: datetime | None
    check_runs: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    """One DAG run."""

    id: int
    dag_id: str
    run_id: str
    logical_date: datetime
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    run_type: str
    state: DagRunState
    conf: Mapping[str, Any] = field(default_factory=dict)
    run_after: datetime | None = None
    queued_at: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    trace_context: str | None = None  # the run's traceparent, where it was traced


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInstanceRow:
    """One task instance with its current fencing token."""

    id: int
    run_pk: int
    dag_id: str
    run_id: str
    task_id: str
    state: TaskInstanceState
    try_number: int
    max_tries: int
    token: int
    pool: str
    pool_slots: int
    queue: str
    priority_weight: int
    logical_date: datetime
    worker: str | None = None
    queued_by: str | None = None
    next_retry_at: datetime | None = None
    heartbeat_at: datetime | None = None
    followed: tuple[str, ...] | None = None
