"""State machines of task instances and DAG runs: the states, who moves them, and the one
table of allowed transitions. The store applies each transition as a compare-and-set."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from tradewind.errors import InvalidTransitionError

__all__ = [
    "DAG_RUN_TRANSITIONS",
    "FINISHED_TI_STATES",
    "TASK_INSTANCE_TRANSITIONS",
    "UNFINISHED_TI_STATES",
    "DagRunState",
    "TaskInstanceState",
    "can_transition",
    "transition",
]


class TaskInstanceState(StrEnum):
    """The life of one task in one DAG run."""

    NONE = "none"
    """Created with its run (or cleared); waits for its upstreams. Moved on by the scheduler."""
    SCHEDULED = "scheduled"
    """Its trigger rule passed; waits for a pool slot. Moved on by the critical section."""
    QUEUED = "queued"
    """An attempt with a fencing token exists; being dispatched. Moved on by the worker's start
    report, or back to scheduled by the dispatcher / orphan and queued-timeout housekeeping."""
    RUNNING = "running"
    """A worker runs the attempt. Moved on by the worker's final report or the zombie reaper."""
    SUCCESS = "success"
    """Finished well (reported by a worker, set for tasks that need no worker, or marked)."""
    FAILED = "failed"
    """Finished badly with no tries left (worker report, zombie reaper, timeouts or marked)."""
    SKIPPED = "skipped"
    """Skipped by a branch, a short-circuit, exit code 99, trigger-rule skip propagation
    or a run timeout."""
    UPSTREAM_FAILED = "upstream_failed"
    """Its trigger rule can no longer pass because of failed upstreams. Set by the scheduler."""
    UP_FOR_RETRY = "up_for_retry"
    """A try failed and tries are left; rescheduled by the scheduler after the retry delay."""
    REMOVED = "removed"
    """The task disappeared from the DAG definition after the run was created."""


FINISHED_TI_STATES: frozenset[TaskInstanceState] = frozenset(
    {
        TaskInstanceState.SUCCESS,
        TaskInstanceState.FAILED,
        TaskInstanceState.SKIPPED,
        TaskInstanceState.UPSTREAM_FAILED,
        TaskInstanceState.REMOVED,
    }
)
UNFINISHED_TI_STATES: frozenset[TaskInstanceState] = frozenset(
    set(TaskInstanceState) - FINISHED_TI_STATES
)


class DagRunState(StrEnum):
    """The life of one DAG run."""

    QUEUED = "queued"
    """Created (scheduled, manual or backfill); started by the scheduler within max_active_runs."""
    RUNNING = "running"
    """Its tasks are being examined by the scheduler each loop."""
    SUCCESS = "success"
    """Every leaf task succeeded or was skipped (set by the scheduler, or marked)."""
    FAILED = "failed"
    """A leaf failed / upstream-failed, the run timed out, or it was marked failed."""


_TI = TaskInstanceState
_MARKED = {_TI.SUCCESS, _TI.FAILED}  # an operator may mark any task instance success or failed

TASK_INSTANCE_TRANSITIONS: dict[TaskInstanceState, frozenset[TaskInstanceState]] = {
    _TI.NONE: frozenset({_TI.SCHEDULED, _TI.SKIPPED, _TI.UPSTREAM_FAILED, _TI.REMOVED, *_MARKED}),
    _TI.SCHEDULED: frozenset(
        {_TI.QUEUED, _TI.NONE, _TI.SKIPPED, _TI.UPSTREAM_FAILED, _TI.REMOVED, *_MARKED}
    ),
    _TI.QUEUED: frozenset(
        {_TI.RUNNING, _TI.SCHEDULED, _TI.NONE, _TI.SKIPPED, _TI.UP_FOR_RETRY, *_MARKED}
    ),
    _TI.RUNNING: frozenset({_TI.UP_FOR_RETRY, _TI.SKIPPED, _TI.NONE, *_MARKED}),
    _TI.UP_FOR_RETRY: frozenset({_TI.SCHEDULED, _TI.NONE, _TI.SKIPPED, *_MARKED}),
    _TI.SUCCESS: frozenset({_TI.NONE, _TI.FAILED}),
    _TI.FAILED: frozenset({_TI.NONE, _TI.SUCCESS}),
    _TI.SKIPPED: frozenset({_TI.NONE, *_MARKED}),
    _TI.UPSTREAM_FAILED: frozenset({_TI.NONE, *_MARKED}),
    _TI.REMOVED: frozenset({_TI.NONE}),
}

_DR = DagRunState
DAG_RUN_TRANSITIONS: dict[DagRunState, frozenset[DagRunState]] = {
    _DR.QUEUED: frozenset({_DR.RUNNING, _DR.SUCCESS, _DR.FAILED}),
    _DR.RUNNING: frozenset({_DR.SUCCESS, _DR.FAILED, _DR.QUEUED}),
    _DR.SUCCESS: frozenset({_DR.QUEUED, _DR.RUNNING, _DR.FAILED}),
    _DR.FAILED: frozenset({_DR.QUEUED, _DR.RUNNING, _DR.SUCCESS}),
}

S = TypeVar("S", TaskInstanceState, DagRunState)


def can_transition(current: S, target: S) -> bool:
    """True when the transition table allows moving from `current` to `target`."""
    if isinstance(current, TaskInstanceState) and isinstance(target, TaskInstanceState):
        return target in TASK_INSTANCE_TRANSITIONS[current]
    if isinstance(current, DagRunState) and isinstance(target, DagRunState):
        return target in DAG_RUN_TRANSITIONS[current]
    return False


def transition(current: S, target: S) -> S:
    """Return `target` if the move is allowed; raise InvalidTransitionError otherwise."""
    if not can_transition(current, target):
        raise InvalidTransitionError(
            f"{type(current).__name__}: {current.value!r} -> {target.value!r} is not allowed"
        )
    return target
