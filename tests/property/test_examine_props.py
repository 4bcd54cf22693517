"""examine_run on random DAGs and random task-instance states: only legal moves, never a task
scheduled whose trigger rule fails, and one call reaches the fixed point."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tradewind.scheduling.examine import (
    RunCause,
    RunExamination,
    RunView,
    TaskInstanceView,
    examine_run,
)
from tradewind.scheduling.trigger_rules import TriggerVerdict, evaluate_trigger_rule
from tradewind.spec import BranchKind, DagSpec, ScheduleKind, ScheduleSpec, TaskKind, TaskSpec
from tradewind.states import (
    FINISHED_TI_STATES,
    UNFINISHED_TI_STATES,
    DagRunState,
    TaskInstanceState,
    can_transition,
)
from tradewind.trigger_rule import TriggerRule

TI = TaskInstanceState
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RECORDS_OUTCOME = {TI.SUCCESS, TI.FAILED}  # states in which a branch may have recorded `followed`


@st.composite
def dags(draw: st.DrawFn) -> DagSpec:
    n = draw(st.integers(min_value=1, max_value=8))
    ids = [f"t{i}" for i in range(n)]
    up: dict[str, list[str]] = {t: [] for t in ids}
    down: dict[str, list[str]] = {t: [] for t in ids}
    for j in range(n):
        for i in range(j):
            if draw(st.integers(0, 2)) == 0:
                up[ids[j]].append(ids[i])
                down[ids[i]].append(ids[j])
    tasks = {}
    for t in ids:
        tasks[t] = TaskSpec(
            task_id=t,
            operator="Op",
            kind=draw(st.sampled_from([TaskKind.BASH, TaskKind.BASH, TaskKind.EMPTY])),
            upstream_task_ids=tuple(up[t]),
            downstream_task_ids=tuple(down[t]),
            trigger_rule=draw(st.sampled_from(list(TriggerRule))),
            depends_on_past=draw(st.integers(0, 5)) == 0,
            max_active_tis_per_dag=draw(st.sampled_from([None, None, None, 2])),
            branching=draw(
                st.sampled_from([None, None, BranchKind.BRANCH, BranchKind.SHORT_CIRCUIT])
            ),
            ignore_downstream_trigger_rules=draw(st.booleans()),
        )
    timeout = draw(st.sampled_from([None, None, timedelta(minutes=30), timedelta(hours=2)]))
    schedule = ScheduleSpec(kind=ScheduleKind.NONE, label="None")
    return DagSpec(
        dag_id="d", fileloc="d.py", schedule=schedule, tasks=tasks, dagrun_timeout=timeout
    )


def view(draw: st.DrawFn, spec: DagSpec, task_id: str) -> TaskInstanceView:
    state = draw(st.sampled_from(list(TaskInstanceState)))
    retry_at = None
    if state is TI.UP_FOR_RETRY:
        retry_at = draw(
            st.sampled_from([None, NOW - timedelta(minutes=1), NOW, NOW + timedelta(minutes=1)])
        )
    followed = None
    task = spec.tasks.get(task_id)
    if task is not None and task.branching is not None and state in RECORDS_OUTCOME:
        choices = [*task.downstream_task_ids, *spec.tasks]
        followed = draw(st.none() | st.lists(st.sampled_from(choices), max_size=3).map(tuple))
    return TaskInstanceView(task_id=task_id, state=state, next_retry_at=retry_at, followed=followed)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[DagSpec, RunView, dict[str, TaskInstanceView], dict[str, TaskInstanceState]]:
    spec = draw(dags())
    tis = {t: view(draw, spec, t) for t in spec.tasks if draw(st.integers(0, 9)) > 0}
    for gone in draw(st.lists(st.sampled_from(["g0", "g1", "g2"]), unique=True)):
        tis[gone] = view(draw, spec, gone)
    previous = {
        t: draw(st.sampled_from(list(TaskInstanceState))) for t in spec.tasks if draw(st.booleans())
    }
    started = NOW - draw(
        st.sampled_from([timedelta(minutes=5), timedelta(hours=1), timedelta(hours=3)])
    )
    run = RunView(run_id="r", state=DagRunState.RUNNING, start_date=started, logical_date=started)
    return spec, run, tis, previous


def apply(result: RunExamination, tis: dict[str, TaskInstanceView]) -> dict[str, TaskInstanceView]:
    """What the store would hold after applying `result` (task instances only)."""
    after = dict(tis)
    for task_id in (*result.to_create, *result.to_restore):
        after[task_id] = TaskInstanceView(task_id=task_id, state=TI.NONE)
    for d in result.task_decisions:
        assert after[d.task_id].state is d.from_state, d
        # A state set by the scheduler carries no branch outcome.
        after[d.task_id] = replace(after[d.task_id], state=d.to_state, followed=None)
    return after


Scenario = tuple[DagSpec, RunView, dict[str, TaskInstanceView], dict[str, TaskInstanceState]]


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_only_legal_transitions_once_per_task(scenario: Scenario) -> None:
    spec, run, tis, previous = scenario
    result = examine_run(spec, run, tis, previous, NOW)
    seen = [d.task_id for d in result.task_decisions]
    assert len(seen) == len(set(seen))
    for d in result.task_decisions:
        assert can_transition(d.from_state, d.to_state), d
        assert d.reason
    timed_out = result.run_decision is not None and result.run_decision.cause is RunCause.TIMED_OUT
    if not timed_out:
        assert result.to_create == tuple(t for t in spec.tasks if t not in tis)
    if result.run_decision is not None:
        assert result.run_decision.reason
        assert can_transition(run.state, result.run_decision.to_state)
    apply(result, tis)  # each from_state matches what the store holds


def _branch_excludes(spec: DagSpec, tis: dict[str, TaskInstanceView], task_id: str) -> bool:
    """True when a finished direct-upstream BRANCH recorded a choice that cannot reach task_id."""
    for parent_id in spec.tasks[task_id].upstream_task_ids:
        parent, ti = spec.tasks[parent_id], tis.get(parent_id)
        if parent.branching is not BranchKind.BRANCH or ti is None or ti.followed is None:
            continue
        if ti.state not in FINISHED_TI_STATES:
            continue
        reachable = set(ti.followed)
        frontier = list(ti.followed)
        while frontier:
            current = frontier.pop()
            for child in spec.tasks[current].downstream_task_ids if current in spec.tasks else ():
                if child not in reachable:
                    reachable.add(child)
                    frontier.append(child)
        if task_id not in reachable:
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_never_starts_a_task_whose_trigger_rule_fails(scenario: Scenario) -> None:
    spec, run, tis, previous = scenario
    result = examine_run(spec, run, tis, previous, NOW)
    after = apply(result, tis)
    for d in result.task_decisions:
        started = d.to_state is TI.SCHEDULED or (
            d.to_state is TI.SUCCESS and d.from_state in (TI.NONE, TI.UP_FOR_RETRY)
        )
        if not started:
            continue
        task = spec.tasks[d.task_id]
        upstream = [after[u].state for u in task.upstream_task_ids]
        assert evaluate_trigger_rule(task.trigger_rule, upstream).verdict is TriggerVerdict.RUN
        assert all(s in FINISHED_TI_STATES for s in upstream) or task.trigger_rule in {
            TriggerRule.ALWAYS,
            TriggerRule.ONE_FAILED,
            TriggerRule.ONE_SUCCESS,
        }
        if task.depends_on_past and d.task_id in previous:
            assert previous[d.task_id] in (TI.SUCCESS, TI.SKIPPED)
        if d.from_state is TI.UP_FOR_RETRY:
            retry_at = tis[d.task_id].next_retry_at
            assert retry_at is None or retry_at <= NOW
        assert not _branch_excludes(spec, tis, d.task_id)


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_one_call_reaches_the_fixed_point(scenario: Scenario) -> None:
    spec, run, tis, previous = scenario
    first = examine_run(spec, run, tis, previous, NOW)
    if first.not_examined_reason is not None:
        return
    again = examine_run(spec, run, apply(first, tis), previous, NOW)
    assert again.task_decisions == ()
    assert again.to_create == ()
    assert again.to_restore == ()
    assert again.stranded == first.stranded
    assert again.run_decision == first.run_decision


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios(), later=st.sampled_from([timedelta(seconds=30), timedelta(days=1)]))
def test_only_retries_move_when_time_passes(scenario: Scenario, later: timedelta) -> None:
    spec, run, tis, previous = scenario
    spec = replace(spec, dagrun_timeout=None)
    settled = apply(examine_run(spec, run, tis, previous, NOW), tis)
    moved = examine_run(spec, run, settled, previous, NOW + later).task_decisions
    retrying = {t for t, v in settled.items() if v.state is TI.UP_FOR_RETRY}
    reach = set(retrying)
    for task_id in spec.tasks:  # spec order is topological
        if set(spec.tasks[task_id].upstream_task_ids) & reach:
            reach.add(task_id)
    assert {d.task_id for d in moved} <= reach


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_run_decision_matches_the_settled_states(scenario: Scenario) -> None:
    spec, run, tis, previous = scenario
    result = examine_run(spec, run, tis, previous, NOW)
    after = apply(result, tis)
    # A timed-out run creates no missing task instances (Airflow times out before verify_integrity).
    states = {t: after[t].state if t in after else TI.NONE for t in spec.tasks}
    unfinished = [t for t, s in states.items() if s in UNFINISHED_TI_STATES]
    decision = result.run_decision
    if decision is None:
        assert unfinished
        return
    expected: dict[RunCause, Any] = {
        RunCause.SUCCESS: DagRunState.SUCCESS,
        RunCause.TASK_FAILURE: DagRunState.FAILED,
        RunCause.DEADLOCK: DagRunState.FAILED,
        RunCause.TIMED_OUT: DagRunState.FAILED,
    }
    assert decision.to_state is expected[decision.cause]
    if decision.cause is RunCause.TIMED_OUT:
        assert all(v.state not in UNFINISHED_TI_STATES for v in after.values())
    elif decision.cause is RunCause.DEADLOCK:
        assert unfinished
        assert not any(spec.tasks[t].depends_on_past for t in unfinished)
        assert not any(states[t] in (TI.SCHEDULED, TI.QUEUED, TI.RUNNING) for t in unfinished)
    else:
        assert not unfinished
        leaf_failed = any(states[t] in (TI.FAILED, TI.UPSTREAM_FAILED) for t in spec.leaves)
        assert leaf_failed == (decision.cause is RunCause.TASK_FAILURE)


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios())
def test_leaves_no_task_behind_that_its_rule_would_move(scenario: Scenario) -> None:
    """Judged against the settled states, every task left in none waits on its trigger rule
    (or on depends_on_past): the walk's shortcut for tasks with no finished upstream agrees
    with evaluate_trigger_rule."""
    spec, run, tis, previous = scenario
    result = examine_run(spec, run, tis, previous, NOW)
    decision = result.run_decision
    if result.not_examined_reason is not None or (
        decision is not None and decision.cause is RunCause.TIMED_OUT
    ):
        return
    after = apply(result, tis)
    states = {t: after[t].state if t in after else TI.NONE for t in spec.tasks}
    for task_id, task in spec.tasks.items():
        if states[task_id] is not TI.NONE:
            continue
        upstream = [states[u] for u in task.upstream_task_ids]
        verdict = evaluate_trigger_rule(task.trigger_rule, upstream).verdict
        if verdict is TriggerVerdict.RUN:
            assert task.depends_on_past, task_id
            assert previous.get(task_id) not in (None, TI.SUCCESS, TI.SKIPPED), task_id
        else:
            assert verdict is TriggerVerdict.WAIT, (task_id, verdict)
