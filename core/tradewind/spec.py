"""The deserialized, import-free form of a DAG: everything the scheduler decides with.

A `DagSpec` is built from an authored `DAG` (serialization.py) or read back from the JSON
stored in the metadata database; no decision ever needs the DAG file itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule

__all__ = ["BranchKind", "DagSpec", "ScheduleKind", "ScheduleSpec", "TaskKind", "TaskSpec"]


class ScheduleKind(StrEnum):
    """The shapes a DAG's schedule can take."""

    NONE = "none"  # manual triggers only
    ONCE = "once"  # a single run at start_date
    CRON = "cron"  # intervals between consecutive cron ticks (presets resolve to cron)
    DELTA = "delta"  # fixed-length intervals starting at start_date


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleSpec:
    """A validated schedule: `expression` is set for CRON, `delta` for DELTA."""

    kind: ScheduleKind
    label: str  # as the author wrote it: "@daily", "*/5 * * * *", "0:05:00", "None"
    expression: str | None = None
    delta: timedelta | None = None


class TaskKind(StrEnum):
    """How a worker runs a task."""

    EMPTY = "empty"  # needs no worker: the scheduler marks it success
    BASH = "bash"  # runs bash_command in bash; no DAG import on the worker
    CALLABLE = "callable"  # the worker imports the DAG file and calls operator.execute()


class BranchKind(StrEnum):
    """Tasks whose outcome decides which downstream tasks are skipped."""

    BRANCH = "branch"  # returns the task_id(s) to follow; other direct downstreams skip
    SHORT_CIRCUIT = "short_circuit"  # a falsy result skips downstream


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """One task as the scheduler and workers see it."""

    task_id: str
    operator: str  # the operator's class name, e.g. "BashOperator"
    kind: TaskKind
    upstream_task_ids: tuple[str, ...] = ()  # sorted
    downstream_task_ids: tuple[str, ...] = ()  # sorted
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    retries: int = 0
    retry_delay: timedelta = timedelta(minutes=5)
    retry_exponential_backoff: bool = False
    max_retry_delay: timedelta | None = None
    execution_timeout: timedelta | None = None
    depends_on_past: bool = False
    pool: str = "default_pool"
    pool_slots: int = 1
    priority_weight: int = 1
    weight_rule: WeightRule = WeightRule.DOWNSTREAM
    priority_weight_total: int = 1  # computed from weight_rule over the graph
    queue: str = "default"
    max_active_tis_per_dag: int | None = None
    do_xcom_push: bool = True
    owner: str = "tradewind"
    doc: str | None = None
    branching: BranchKind | None = None
    ignore_downstream_trigger_rules: bool = True  # ShortCircuitOperator only
    template_fields: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)  # JSON operator arguments


@dataclass(frozen=True, slots=True, kw_only=True)
class DagSpec:
    """One DAG as the scheduler sees it. `tasks` keeps topological order."""

    dag_id: str
    fileloc: str
    schedule: ScheduleSpec
    start_date: datetime | None = None  # aware, UTC
    end_date: datetime | None = None  # aware, UTC; bounds the logical date
    timezone: str = "UTC"  # IANA name cron expressions are evaluated in
    catchup: bool = True
    max_active_runs: int = 16
    max_active_tasks: int = 16
    dagrun_timeout: timedelta | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    is_paused_upon_creation: bool | None = None
    tasks: Mapping[str, TaskSpec] = field(default_factory=dict)

    def task(self, task_id: str) -> TaskSpec:
        """The task with this id; KeyError names it when absent."""
        try:
            return self.tasks[task_id]
        except KeyError:
            raise KeyError(f"DAG {self.dag_id!r} has no task {task_id!r}") from None

    @property
    def leaves(self) -> tuple[str, ...]:
        """Task ids with no downstream task: they decide the run's state."""
        return tuple(t.task_id for t in self.tasks.values() if not t.downstream_task_ids)

    @property
    def roots(self) -> tuple[str, ...]:
        """Task ids with no upstream task."""
        return tuple(t.task_id for t in self.tasks.values() if not t.upstream_task_ids)
