"""Examining one running DAG run: which task instances move on (scheduled, skipped,
upstream_failed, success for empty tasks, removed) and whether the run has finished, as
Airflow 2's scheduler decides in _schedule_dag_run, verify_integrity and DagRun.update_state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from tradewind.errors import BadInputError
from tradewind.scheduling.trigger_rules import TriggerOutcome, TriggerVerdict, evaluate_trigger_rule
from tradewind.spec import BranchKind, DagSpec, TaskKind, TaskSpec
from tradewind.states import (
    FINISHED_TI_STATES,
    UNFINISHED_TI_STATES,
    DagRunState,
    TaskInstanceState,
    can_transition,
    transition,
)
from tradewind.trigger_rule import TriggerRule

__all__ = [
    "RunCause",
    "RunDecision",
    "RunExamination",
    "RunView",
    "TaskDecision",
    "TaskInstanceLike",
    "TaskInstanceView",
    "examine_run",
]

_TI = TaskInstanceState
_IN_FLIGHT = frozenset({_TI.SCHEDULED, _TI.QUEUED, _TI.RUNNING})
_PAST_OK = frozenset({_TI.SUCCESS, _TI.SKIPPED})
_FAILED_LEAF = frozenset({_TI.FAILED, _TI.UPSTREAM_FAILED})
_NAMES_SHOWN = 5


class TaskInstanceLike(Protocol):
    """What examining a run reads of each task instance: a TaskInstanceView, or any object
    with these attributes (the scheduler passes the rows it read, as they are)."""

    @property
    def task_id(self) -> str: ...
    @property
    def state(self) -> TaskInstanceState: ...
    @property
    def next_retry_at(self) -> datetime | None: ...
    @property
    def followed(self) -> tuple[str, ...] | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInstanceView:
    """One task instance of the run as read from the store.

    `followed` is the recorded outcome of a finished branching task: for BRANCH the task ids
    it chose to follow; for SHORT_CIRCUIT () when its condition was falsy, None when truthy."""

    task_id: str
    state: TaskInstanceState
    try_number: int = 0  # tries that started
    max_tries: int = 0
    next_retry_at: datetime | None = None  # set while up_for_retry
    followed: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunView:
    """The DAG run being examined."""

    run_id: str
    state: DagRunState
    start_date: datetime | None = None  # when it became running; dagrun_timeout counts from it
    logical_date: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDecision:
    """Move one task instance from `from_state` to `to_state` (a legal transition)."""

    task_id: str
    from_state: TaskInstanceState
    to_state: TaskInstanceState
    reason: str


class RunCause(StrEnum):
    """Why a run finished; the values are Airflow's DAG callback reasons."""

    SUCCESS = "success"
    TASK_FAILURE = "task_failure"
    DEADLOCK = "deadlock"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunDecision:
    """Finish the run in `to_state`."""

    to_state: DagRunState
    cause: RunCause
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunExamination:
    """Everything one examination decided; the store applies it in this order:

    1. insert a task instance in state none for each id in `to_create` (tasks added to the DAG
       after the run was created) and reset each id in `to_restore` from removed to none (tasks
       back in the DAG);
    2. apply `task_decisions` in order, each as a compare-and-set from its from_state;
    3. apply `run_decision` when it is not None.
    `stranded` names task instances whose task left the DAG but whose state cannot legally
    become removed (Airflow would mark them removed); they no longer count for the run's state.
    `not_examined_reason` says why nothing was examined (a logical date in the future)."""

    task_decisions: tuple[TaskDecision, ...] = ()
    to_create: tuple[str, ...] = ()
    to_restore: tuple[str, ...] = ()
    stranded: tuple[str, ...] = ()
    run_decision: RunDecision | None = None
    not_examined_reason: str | None = None


def _decision(
    task_id: str, current: TaskInstanceState, target: TaskInstanceState, reason: str
) -> TaskDecision:
    return TaskDecision(
        task_id=task_id, from_state=current, to_state=transition(current, target), reason=reason
    )


def _names(task_ids: Iterable[str]) -> str:
    ids = list(task_ids)
    shown = ", ".join(ids[:_NAMES_SHOWN])
    return shown if len(ids) <= _NAMES_SHOWN else f"{shown} and {len(ids) - _NAMES_SHOWN} more"


def _descendants(spec: DagSpec, task_ids: Iterable[str]) -> set[str]:
    """Every task downstream of `task_ids`, transitively (the ids themselves excluded)."""
    found: set[str] = set()
    stack = [t for t in task_ids if t in spec.tasks]
    while stack:
        for child in spec.tasks[stack.pop()].downstream_task_ids:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _skipped_by(
    spec: DagSpec, task: TaskSpec, followed: tuple[str, ...]
) -> Iterator[tuple[str, str]]:
    """(task id, reason) for each task a finished branching `task` skips."""
    if task.branching is BranchKind.BRANCH:
        # As Airflow's skip_all_except: a direct downstream that is also downstream of a
        # followed task (the "join" after an empty branch) is kept.
        kept = set(followed) | _descendants(spec, followed)
        reason = f"branch {task.task_id!r} followed [{_names(followed)}]"
        yield from ((d, reason) for d in task.downstream_task_ids if d not in kept)
        return
    if followed:  # a short-circuit whose condition was truthy skips nothing
        return
    reason = f"short-circuited by {task.task_id!r}"
    if task.ignore_downstream_trigger_rules:
        yield from ((d, reason) for d in sorted(_descendants(spec, [task.task_id])))
    else:
        yield from ((d, reason) for d in task.downstream_task_ids)


def _branch_skips(
    spec: DagSpec, states: Mapping[str, TaskInstanceState], tis: Mapping[str, TaskInstanceLike]
) -> dict[str, str]:
    """Task id -> reason for every task a finished branch or short-circuit skips."""
    skips: dict[str, str] = {}
    for task in spec.tasks.values():
        view = tis.get(task.task_id)
        if task.branching is None or view is None or view.followed is None:
            continue
        if states[task.task_id] in FINISHED_TI_STATES:
            for task_id, reason in _skipped_by(spec, task, view.followed):
                skips.setdefault(task_id, reason)
    return skips


def _unless_waiting(task: TaskSpec, upstream: list[TaskInstanceState]) -> TriggerOutcome | None:
    """The task's trigger-rule outcome, None when it says wait. With no upstream finished every
    rule but always waits: that is answered without evaluating the rule and building its
    reason (in a long chain most tasks are there)."""
    if (
        upstream
        and task.trigger_rule != TriggerRule.ALWAYS
        and FINISHED_TI_STATES.isdisjoint(upstream)
    ):
        return None
    outcome = evaluate_trigger_rule(task.trigger_rule, upstream)
    return None if outcome.verdict is TriggerVerdict.WAIT else outcome


class _Walk:
    """Judges the run's tasks once, in topological order, updating states as it decides so
    that a skip or upstream failure reaches every downstream task in the same call."""

    def __init__(
        self,
        spec: DagSpec,
        tis: Mapping[str, TaskInstanceLike],
        previous_states: Mapping[str, TaskInstanceState],
        now: datetime,
    ) -> None:
        self.spec = spec
        self.tis = tis
        self.previous_states = previous_states
        self.now = now
        self.to_create = tuple(t for t in spec.tasks if t not in tis)
        self.to_restore = tuple(t for t in spec.tasks if t in tis and tis[t].state is _TI.REMOVED)
        self.states: dict[str, TaskInstanceState] = {
            t: tis[t].state if t in tis and t not in self.to_restore else _TI.NONE
            for t in spec.tasks
        }
        self.skips = _branch_skips(spec, self.states, tis)
        self.decisions: list[TaskDecision] = []

    def run(self) -> None:
        """Judge every task of the spec; `spec.tasks` is in topological order."""
        for task in self.spec.tasks.values():
            decision = self._judge(task, self.states[task.task_id])
            if decision is not None:
                self.decisions.append(decision)
                self.states[task.task_id] = decision.to_state

    def _judge(self, task: TaskSpec, state: TaskInstanceState) -> TaskDecision | None:
        if state not in UNFINISHED_TI_STATES:
            return None
        skip_reason = self.skips.get(task.task_id)
        if skip_reason is not None:
            # A branch skips its unfollowed tasks the moment it finishes, before their
            # trigger rules are judged, so the skip wins over any trigger-rule outcome.
            return _decision(task.task_id, state, _TI.SKIPPED, skip_reason)
        if state not in (_TI.NONE, _TI.UP_FOR_RETRY):
            return None
        outcome = _unless_waiting(task, [self.states[u] for u in task.upstream_task_ids])
        if outcome is None:
            return None
        reason = f"trigger rule {task.trigger_rule}: {outcome.reason}"
        if outcome.verdict is TriggerVerdict.SKIP:
            return _decision(task.task_id, state, _TI.SKIPPED, reason)
        if outcome.verdict is TriggerVerdict.UPSTREAM_FAILED:
            # up_for_retry -> upstream_failed is not a legal move; such a task waits instead.
            if can_transition(state, _TI.UPSTREAM_FAILED):
                return _decision(task.task_id, state, _TI.UPSTREAM_FAILED, reason)
            return None
        if not self._may_start(task, state):
            return None
        if task.kind is TaskKind.EMPTY:
            return _decision(
                task.task_id, state, _TI.SUCCESS, f"{reason}; empty task needs no worker"
            )
        return _decision(task.task_id, state, _TI.SCHEDULED, reason)

    def _may_start(self, task: TaskSpec, state: TaskInstanceState) -> bool:
        if state is _TI.UP_FOR_RETRY:
            retry_at = self.tis[task.task_id].next_retry_at
            if retry_at is not None and retry_at > self.now:
                return False
        if task.depends_on_past and task.task_id in self.previous_states:
            return self.previous_states[task.task_id] in _PAST_OK
        return True


def _vanished(
    spec: DagSpec, tis: Mapping[str, TaskInstanceLike]
) -> tuple[list[TaskDecision], list[str]]:
    """Removed decisions for task instances whose task left the DAG, and the stranded ones."""
    decisions: list[TaskDecision] = []
    stranded: list[str] = []
    for view in tis.values():
        if view.task_id in spec.tasks or view.state is _TI.REMOVED:
            continue
        if can_transition(view.state, _TI.REMOVED):
            decisions.append(
                _decision(view.task_id, view.state, _TI.REMOVED, "task is no longer in the DAG")
            )
        else:
            stranded.append(view.task_id)
    return decisions, stranded


def _can_progress(task: TaskSpec, states: Mapping[str, TaskInstanceState]) -> bool:
    state = states[task.task_id]
    if state in _IN_FLIGHT:
        return True  # it was handed on and will report
    upstream = [states[u] for u in task.upstream_task_ids]
    # As Airflow's premature check: an up_for_retry task counts even before its retry time.
    return evaluate_trigger_rule(task.trigger_rule, upstream).verdict is TriggerVerdict.RUN


def _deadlock(
    spec: DagSpec, states: Mapping[str, TaskInstanceState], unfinished: list[str]
) -> RunDecision | None:
    tasks = [spec.tasks[t] for t in unfinished]
    # Airflow skips deadlock detection when a task may be held back by something outside the
    # run: depends_on_past or a per-DAG concurrency limit.
    if any(t.depends_on_past or t.max_active_tis_per_dag is not None for t in tasks):
        return None
    if any(_can_progress(t, states) for t in tasks):
        return None
    return RunDecision(
        to_state=DagRunState.FAILED,
        cause=RunCause.DEADLOCK,
        reason=f"deadlock: no unfinished task can ever run ({_names(unfinished)})",
    )


def _decide_run(spec: DagSpec, states: Mapping[str, TaskInstanceState]) -> RunDecision | None:
    """The run's state from its task instances, as Airflow's DagRun.update_state."""
    unfinished = [t for t, state in states.items() if state in UNFINISHED_TI_STATES]
    if unfinished:
        return _deadlock(spec, states, unfinished)
    failed_leaves = [t for t in spec.leaves if states[t] in _FAILED_LEAF]
    if failed_leaves:
        return RunDecision(
            to_state=DagRunState.FAILED,
            cause=RunCause.TASK_FAILURE,
            reason=f"leaf task failed or upstream_failed: {_names(failed_leaves)}",
        )
    return RunDecision(
        to_state=DagRunState.SUCCESS,
        cause=RunCause.SUCCESS,
        reason="every task finished and every leaf task succeeded or was skipped",
    )


def _time_out(spec: DagSpec, run: RunView, tis: Mapping[str, TaskInstanceLike]) -> RunExamination:
    reason = f"run exceeded dagrun_timeout {spec.dagrun_timeout} (started {run.start_date})"
    decisions = tuple(
        _decision(view.task_id, view.state, _TI.SKIPPED, reason)
        for view in tis.values()
        if view.state in UNFINISHED_TI_STATES
    )
    return RunExamination(
        task_decisions=decisions,
        run_decision=RunDecision(
            to_state=DagRunState.FAILED, cause=RunCause.TIMED_OUT, reason=reason
        ),
    )


def examine_run(
    spec: DagSpec,
    run: RunView,
    tis: Mapping[str, TaskInstanceLike],
    previous_states: Mapping[str, TaskInstanceState],
    now: datetime,
    *,
    allow_future_logical_date: bool = False,
) -> RunExamination:
    """Decide what moves on in one running run; applying the result reaches a fixed point.

    `tis` maps task id -> its task instance in this run. `previous_states` maps task id -> the
    state of the same task in the previous run, for depends_on_past: an absent task passes
    (no previous run, or Airflow's ignore_first_depends_on_past applies); pass NONE for a
    previous run that has no such task instance. Raises BadInputError for a run not running."""
    if run.state is not DagRunState.RUNNING:
        raise BadInputError(
            f"run {run.run_id!r} of DAG {spec.dag_id!r} is {run.state}, not running"
        )
    if (
        spec.dagrun_timeout
        and run.start_date is not None
        and run.start_date < now - spec.dagrun_timeout
    ):
        return _time_out(spec, run, tis)
    if not allow_future_logical_date and run.logical_date is not None and run.logical_date > now:
        return RunExamination(
            not_examined_reason=f"logical date {run.logical_date} is in the future"
        )
    removed, stranded = _vanished(spec, tis)
    walk = _Walk(spec, tis, previous_states, now)
    walk.run()
    decisions = (*removed, *walk.decisions)
    run_decision = _decide_run(spec, walk.states)
    return RunExamination(
        task_decisions=decisions,
        to_create=walk.to_create,
        to_restore=walk.to_restore,
        stranded=tuple(stranded),
        run_decision=run_decision,
    )
