"""Examining a run decides task moves and the run's state as Airflow 2's scheduler does
(_schedule_dag_run, verify_integrity, DagRun.update_state, the skip mixin and the ti deps),
with skips and upstream failures reaching every downstream task in one call."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tradewind.errors import BadInputError
from tradewind.scheduling.examine import (
    RunCause,
    RunExamination,
    RunView,
    TaskInstanceView,
    examine_run,
)
from tradewind.spec import BranchKind, DagSpec, ScheduleKind, ScheduleSpec, TaskKind, TaskSpec
from tradewind.states import DagRunState, TaskInstanceState
from tradewind.trigger_rule import TriggerRule

TI = TaskInstanceState
TR = TriggerRule
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RUNNING = RunView(run_id="r1", state=DagRunState.RUNNING, start_date=NOW - timedelta(minutes=10))


def make_dag(chains: str, dag_kwargs: Mapping[str, Any] | None = None, **tasks: Any) -> DagSpec:
    """Tasks from chains like "a>>b>>c, a>>d" (written in topological order) plus per-task
    TaskSpec overrides given as keyword dicts."""
    order: list[str] = []
    up: dict[str, set[str]] = {}
    down: dict[str, set[str]] = {}
    for chain in filter(None, (c.strip() for c in chains.split(","))):
        ids = [i.strip() for i in chain.split(">>")]
        for task_id in ids:
            if task_id not in order:
                order.append(task_id)
                up[task_id], down[task_id] = set(), set()
        for a, b in itertools.pairwise(ids):
            down[a].add(b)
            up[b].add(a)
    specs = {}
    for task_id in order:
        fields: dict[str, Any] = {
            "task_id": task_id,
            "operator": "BashOperator",
            "kind": TaskKind.BASH,
            "upstream_task_ids": tuple(sorted(up[task_id])),
            "downstream_task_ids": tuple(sorted(down[task_id])),
        }
        fields.update(tasks.get(task_id, {}))
        specs[task_id] = TaskSpec(**fields)
    schedule = ScheduleSpec(kind=ScheduleKind.NONE, label="None")
    return DagSpec(dag_id="d", fileloc="d.py", schedule=schedule, tasks=specs, **(dag_kwargs or {}))


def views(**states: TaskInstanceState | TaskInstanceView) -> dict[str, TaskInstanceView]:
    return {
        task_id: v
        if isinstance(v, TaskInstanceView)
        else TaskInstanceView(task_id=task_id, state=v)
        for task_id, v in states.items()
    }


def examine(
    spec: DagSpec,
    tis: Mapping[str, TaskInstanceView],
    previous: Mapping[str, TaskInstanceState] | None = None,
    *,
    run: RunView = RUNNING,
    now: datetime = NOW,
) -> RunExamination:
    return examine_run(spec, run, tis, previous or {}, now)


def moves(result: RunExamination) -> dict[str, TaskInstanceState]:
    return {d.task_id: d.to_state for d in result.task_decisions}


# ------------------------------------------------------------------ trigger rules in a run


def test_root_is_scheduled_and_its_downstream_waits() -> None:
    result = examine(make_dag("a>>b"), views(a=TI.NONE, b=TI.NONE))
    assert moves(result) == {"a": TI.SCHEDULED}
    decision = result.task_decisions[0]
    assert decision.from_state is TI.NONE
    assert decision.reason == "trigger rule all_success: no upstream tasks"
    assert result.run_decision is None


def test_downstream_of_successes_is_scheduled() -> None:
    result = examine(make_dag("a>>c, b>>c"), views(a=TI.SUCCESS, b=TI.SUCCESS, c=TI.NONE))
    assert moves(result) == {"c": TI.SCHEDULED}
    assert "all 2 upstream succeeded" in result.task_decisions[0].reason


def test_upstream_failed_cascades_through_the_whole_chain_in_one_call() -> None:
    spec = make_dag("a>>b>>c>>d")
    result = examine(spec, views(a=TI.FAILED, b=TI.NONE, c=TI.NONE, d=TI.NONE))
    assert moves(result) == {
        "b": TI.UPSTREAM_FAILED,
        "c": TI.UPSTREAM_FAILED,
        "d": TI.UPSTREAM_FAILED,
    }
    assert result.task_decisions[0].reason == "trigger rule all_success: 1 upstream failed"
    assert result.run_decision is not None
    assert result.run_decision.to_state is DagRunState.FAILED
    assert result.run_decision.cause is RunCause.TASK_FAILURE


def test_skip_cascades_through_all_success_but_not_through_none_failed() -> None:
    spec = make_dag("a>>b>>c, b>>d", d={"trigger_rule": TR.NONE_FAILED})
    result = examine(spec, views(a=TI.SKIPPED, b=TI.NONE, c=TI.NONE, d=TI.NONE))
    assert moves(result) == {"b": TI.SKIPPED, "c": TI.SKIPPED, "d": TI.SCHEDULED}


def test_one_failed_runs_after_an_upstream_failed_cascade() -> None:
    spec = make_dag("a>>b>>c", c={"trigger_rule": TR.ONE_FAILED})
    result = examine(spec, views(a=TI.FAILED, b=TI.NONE, c=TI.NONE))
    assert moves(result) == {"b": TI.UPSTREAM_FAILED, "c": TI.SCHEDULED}


def test_all_done_cleanup_runs_after_failures_and_decides_the_run() -> None:
    spec = make_dag("a>>b>>cleanup", cleanup={"trigger_rule": TR.ALL_DONE})
    result = examine(spec, views(a=TI.FAILED, b=TI.NONE, cleanup=TI.NONE))
    assert moves(result) == {"b": TI.UPSTREAM_FAILED, "cleanup": TI.SCHEDULED}
    assert result.run_decision is None
    done = examine(spec, views(a=TI.FAILED, b=TI.UPSTREAM_FAILED, cleanup=TI.SUCCESS))
    # As Airflow: only leaves decide the run's state, so a succeeding cleanup leaf wins.
    assert done.run_decision is not None
    assert done.run_decision.to_state is DagRunState.SUCCESS


def test_in_flight_and_finished_tasks_are_left_alone() -> None:
    spec = make_dag("a>>b, c, d, e")
    result = examine(spec, views(a=TI.RUNNING, b=TI.NONE, c=TI.QUEUED, d=TI.SCHEDULED, e=TI.FAILED))
    assert moves(result) == {}
    assert result.run_decision is None


# ------------------------------------------------------------------ empty tasks


def test_empty_task_goes_straight_to_success_and_its_downstream_is_scheduled() -> None:
    spec = make_dag("start>>work", start={"kind": TaskKind.EMPTY, "operator": "EmptyOperator"})
    result = examine(spec, views(start=TI.NONE, work=TI.NONE))
    assert moves(result) == {"start": TI.SUCCESS, "work": TI.SCHEDULED}
    assert "empty task needs no worker" in result.task_decisions[0].reason


def test_empty_task_whose_rule_fails_is_upstream_failed_not_success() -> None:
    spec = make_dag("a>>end", end={"kind": TaskKind.EMPTY})
    assert moves(examine(spec, views(a=TI.FAILED, end=TI.NONE))) == {"end": TI.UPSTREAM_FAILED}


def test_run_of_only_empty_tasks_finishes_in_one_call() -> None:
    spec = make_dag(
        "a>>b>>c",
        a={"kind": TaskKind.EMPTY},
        b={"kind": TaskKind.EMPTY},
        c={"kind": TaskKind.EMPTY},
    )
    result = examine(spec, views(a=TI.NONE, b=TI.NONE, c=TI.NONE))
    assert moves(result) == {"a": TI.SUCCESS, "b": TI.SUCCESS, "c": TI.SUCCESS}
    assert result.run_decision is not None
    assert result.run_decision.to_state is DagRunState.SUCCESS


# ------------------------------------------------------------------ retries


def retrying(task_id: str, at: datetime | None) -> TaskInstanceView:
    return TaskInstanceView(
        task_id=task_id, state=TI.UP_FOR_RETRY, try_number=1, max_tries=2, next_retry_at=at
    )


@pytest.mark.parametrize(
    ("retry_at", "expected"),
    [
        (NOW - timedelta(seconds=1), {"a": TI.SCHEDULED}),
        (NOW, {"a": TI.SCHEDULED}),
        (None, {"a": TI.SCHEDULED}),
        (NOW + timedelta(seconds=1), {}),
    ],
)
def test_up_for_retry_is_scheduled_once_its_retry_time_comes(
    retry_at: datetime | None, expected: dict[str, TaskInstanceState]
) -> None:
    spec = make_dag("a>>b")
    assert moves(examine(spec, {**views(b=TI.NONE), "a": retrying("a", retry_at)})) == expected


def test_waiting_retry_is_not_a_deadlock() -> None:
    spec = make_dag("a>>b")
    result = examine(spec, {**views(b=TI.NONE), "a": retrying("a", NOW + timedelta(hours=1))})
    assert result.run_decision is None


# ------------------------------------------------------------------ branching


def branch(
    task_id: str, followed: tuple[str, ...] | None, state: TaskInstanceState = TI.SUCCESS
) -> TaskInstanceView:
    return TaskInstanceView(task_id=task_id, state=state, followed=followed)


def test_branch_skips_the_direct_downstream_tasks_it_did_not_follow() -> None:
    spec = make_dag(
        "br>>x>>join, br>>y>>join",
        br={"branching": BranchKind.BRANCH},
        join={"trigger_rule": TR.NONE_FAILED_MIN_ONE_SUCCESS},
    )
    result = examine(
        spec, {**views(x=TI.NONE, y=TI.NONE, join=TI.NONE), "br": branch("br", ("x",))}
    )
    assert moves(result) == {"x": TI.SCHEDULED, "y": TI.SKIPPED}
    assert result.task_decisions[1].reason == "branch 'br' followed [x]"
    later = examine(
        spec, {**views(x=TI.SUCCESS, y=TI.SKIPPED, join=TI.NONE), "br": branch("br", ("x",))}
    )
    assert moves(later) == {"join": TI.SCHEDULED}


def test_branch_keeps_a_direct_downstream_that_is_also_downstream_of_the_followed_task() -> None:
    # br -> join and br -> t1 -> join: following t1 keeps join (Airflow's empty-branch case).
    spec = make_dag(
        "br>>t1>>join, br>>join, br>>t2",
        br={"branching": BranchKind.BRANCH},
        join={"trigger_rule": TR.NONE_FAILED_MIN_ONE_SUCCESS},
    )
    tis = {**views(t1=TI.NONE, join=TI.NONE, t2=TI.NONE), "br": branch("br", ("t1",))}
    assert moves(examine(spec, tis)) == {"t1": TI.SCHEDULED, "t2": TI.SKIPPED}


def test_branch_following_nothing_skips_every_direct_downstream() -> None:
    spec = make_dag("br>>x>>z, br>>y", br={"branching": BranchKind.BRANCH})
    tis = {**views(x=TI.NONE, y=TI.NONE, z=TI.NONE), "br": branch("br", ())}
    # z is skipped by x's all_success trigger rule in the same call.
    assert moves(examine(spec, tis)) == {"x": TI.SKIPPED, "y": TI.SKIPPED, "z": TI.SKIPPED}


def test_branch_skip_wins_over_the_trigger_rule() -> None:
    spec = make_dag("br>>x, f>>x", br={"branching": BranchKind.BRANCH})
    tis = {**views(x=TI.NONE, f=TI.FAILED), "br": branch("br", ())}
    assert moves(examine(spec, tis)) == {"x": TI.SKIPPED}


def test_unfinished_branch_or_missing_record_skips_nothing() -> None:
    spec = make_dag("br>>x", br={"branching": BranchKind.BRANCH})
    assert (
        moves(
            examine(
                spec,
                {
                    "x": TaskInstanceView(task_id="x", state=TI.NONE),
                    "br": branch("br", (), TI.RUNNING),
                },
            )
        )
        == {}
    )
    assert moves(
        examine(spec, {"x": TaskInstanceView(task_id="x", state=TI.NONE), "br": branch("br", None)})
    ) == {"x": TI.SCHEDULED}


def test_short_circuit_falsy_skips_every_descendant_ignoring_trigger_rules() -> None:
    spec = make_dag(
        "sc>>a>>b>>final, other>>final",
        sc={"branching": BranchKind.SHORT_CIRCUIT},
        final={"trigger_rule": TR.ALL_DONE},
    )
    tis = {**views(a=TI.NONE, b=TI.NONE, final=TI.NONE, other=TI.SUCCESS), "sc": branch("sc", ())}
    result = examine(spec, tis)
    assert moves(result) == {"a": TI.SKIPPED, "b": TI.SKIPPED, "final": TI.SKIPPED}
    assert all(d.reason == "short-circuited by 'sc'" for d in result.task_decisions)


def test_short_circuit_respecting_trigger_rules_skips_only_direct_downstream() -> None:
    spec = make_dag(
        "sc>>a>>b>>final",
        sc={"branching": BranchKind.SHORT_CIRCUIT, "ignore_downstream_trigger_rules": False},
        final={"trigger_rule": TR.ALL_DONE},
    )
    tis = {**views(a=TI.NONE, b=TI.NONE, final=TI.NONE), "sc": branch("sc", ())}
    result = examine(spec, tis)
    assert moves(result) == {"a": TI.SKIPPED, "b": TI.SKIPPED, "final": TI.SCHEDULED}
    assert result.task_decisions[0].reason == "short-circuited by 'sc'"
    assert result.task_decisions[1].reason.startswith("trigger rule all_success")


def test_short_circuit_truthy_lets_downstream_run() -> None:
    spec = make_dag("sc>>a", sc={"branching": BranchKind.SHORT_CIRCUIT})
    tis = {"a": TaskInstanceView(task_id="a", state=TI.NONE), "sc": branch("sc", None)}
    assert moves(examine(spec, tis)) == {"a": TI.SCHEDULED}


def test_short_circuit_skips_tasks_already_in_flight() -> None:
    spec = make_dag(
        "sc>>a", sc={"branching": BranchKind.SHORT_CIRCUIT}, a={"trigger_rule": TR.ALWAYS}
    )
    tis = {"a": TaskInstanceView(task_id="a", state=TI.RUNNING), "sc": branch("sc", ())}
    assert moves(examine(spec, tis)) == {"a": TI.SKIPPED}


# ------------------------------------------------------------------ depends_on_past


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        ({"a": TI.SUCCESS}, {"a": TI.SCHEDULED}),
        ({"a": TI.SKIPPED}, {"a": TI.SCHEDULED}),
        ({}, {"a": TI.SCHEDULED}),  # no previous task instance
        ({"a": TI.FAILED}, {}),
        ({"a": TI.RUNNING}, {}),
        ({"a": TI.NONE}, {}),  # the previous run has not run it (yet)
    ],
)
def test_depends_on_past_needs_the_previous_task_instance_to_succeed_or_skip(
    previous: dict[str, TaskInstanceState], expected: dict[str, TaskInstanceState]
) -> None:
    spec = make_dag("a", a={"depends_on_past": True})
    result = examine(spec, views(a=TI.NONE), previous)
    assert moves(result) == expected
    assert result.run_decision is None  # never a deadlock while depends_on_past may hold it


def test_depends_on_past_does_not_hold_back_upstream_failed_or_skips() -> None:
    spec = make_dag("a>>b, c>>d", b={"depends_on_past": True}, d={"depends_on_past": True})
    tis = views(a=TI.FAILED, b=TI.NONE, c=TI.SKIPPED, d=TI.NONE)
    result = examine(spec, tis, {"b": TI.FAILED, "d": TI.FAILED})
    assert moves(result) == {"b": TI.UPSTREAM_FAILED, "d": TI.SKIPPED}


def test_depends_on_past_ignores_other_tasks() -> None:
    spec = make_dag("a", a={"depends_on_past": False})
    assert moves(examine(spec, views(a=TI.NONE), {"a": TI.FAILED})) == {"a": TI.SCHEDULED}


# ------------------------------------------------------------------ DAG changes


def test_missing_task_instance_is_created_and_judged_in_the_same_call() -> None:
    spec = make_dag("a>>b, new")
    result = examine(spec, views(a=TI.SUCCESS, b=TI.RUNNING))
    assert result.to_create == ("new",)
    assert moves(result) == {"new": TI.SCHEDULED}
    assert result.task_decisions[0].from_state is TI.NONE
    assert result.run_decision is None


def test_missing_task_instance_counts_as_unfinished_for_the_run() -> None:
    spec = make_dag("a, b", b={"depends_on_past": True})
    result = examine(spec, views(a=TI.SUCCESS), {"b": TI.FAILED})
    assert result.to_create == ("b",)
    assert result.run_decision is None


def test_task_instances_of_vanished_tasks_are_removed_or_stranded() -> None:
    spec = make_dag("a")
    tis = views(
        a=TI.SUCCESS,
        gone=TI.NONE,
        gone_sched=TI.SCHEDULED,
        gone_run=TI.RUNNING,
        gone_ok=TI.FAILED,
        gone_before=TI.REMOVED,
    )
    result = examine(spec, tis)
    assert moves(result) == {"gone": TI.REMOVED, "gone_sched": TI.REMOVED}
    assert result.task_decisions[0].reason == "task is no longer in the DAG"
    assert result.stranded == ("gone_run", "gone_ok")
    # Vanished tasks no longer count: a failed or running one does not decide the run.
    assert result.run_decision is not None
    assert result.run_decision.to_state is DagRunState.SUCCESS


def test_removed_task_instance_whose_task_is_back_is_restored_and_judged() -> None:
    spec = make_dag("a>>b")
    result = examine(spec, views(a=TI.REMOVED, b=TI.NONE))
    assert result.to_restore == ("a",)
    assert moves(result) == {"a": TI.SCHEDULED}
    assert result.task_decisions[0].from_state is TI.NONE


# ------------------------------------------------------------------ the run's state


@pytest.mark.parametrize(
    ("a", "b", "state", "cause"),
    [
        (TI.SUCCESS, TI.SUCCESS, DagRunState.SUCCESS, RunCause.SUCCESS),
        (TI.SUCCESS, TI.SKIPPED, DagRunState.SUCCESS, RunCause.SUCCESS),
        (TI.SKIPPED, TI.SKIPPED, DagRunState.SUCCESS, RunCause.SUCCESS),
        (TI.SUCCESS, TI.FAILED, DagRunState.FAILED, RunCause.TASK_FAILURE),
        (TI.FAILED, TI.UPSTREAM_FAILED, DagRunState.FAILED, RunCause.TASK_FAILURE),
    ],
)
def test_finished_run_state_comes_from_its_leaves(
    a: TaskInstanceState, b: TaskInstanceState, state: DagRunState, cause: RunCause
) -> None:
    result = examine(make_dag("a>>b"), views(a=a, b=b))
    assert result.run_decision is not None
    assert (result.run_decision.to_state, result.run_decision.cause) == (state, cause)
    assert result.run_decision.reason


def test_failed_leaf_waits_for_every_task_to_finish() -> None:
    result = examine(make_dag("a, b"), views(a=TI.FAILED, b=TI.RUNNING))
    assert result.run_decision is None


def test_failed_non_leaf_does_not_fail_a_run_whose_leaves_succeeded() -> None:
    spec = make_dag("a>>b", b={"trigger_rule": TR.ALL_DONE})
    result = examine(spec, views(a=TI.FAILED, b=TI.SUCCESS))
    assert result.run_decision is not None
    assert result.run_decision.to_state is DagRunState.SUCCESS


def test_deadlock_fails_the_run() -> None:
    # b was up for retry when a was marked failed: it can never run, and up_for_retry cannot
    # become upstream_failed, so nothing can make progress.
    spec = make_dag("a>>b>>c")
    tis = {**views(a=TI.FAILED, c=TI.NONE), "b": retrying("b", NOW - timedelta(minutes=1))}
    result = examine(spec, tis)
    assert moves(result) == {}
    assert result.run_decision is not None
    assert result.run_decision.to_state is DagRunState.FAILED
    assert result.run_decision.cause is RunCause.DEADLOCK
    assert result.run_decision.cause.value == "deadlock"
    assert result.run_decision.reason.startswith("deadlock")


def test_no_deadlock_detection_with_a_per_dag_concurrency_limit() -> None:
    spec = make_dag("a>>b>>c", c={"max_active_tis_per_dag": 1})
    tis = {**views(a=TI.FAILED, c=TI.NONE), "b": retrying("b", NOW)}
    assert examine(spec, tis).run_decision is None


# ------------------------------------------------------------------ run timeout and guards


def timed(minutes: int) -> DagSpec:
    return make_dag("a>>b>>c, d", {"dagrun_timeout": timedelta(minutes=minutes)})


def test_timed_out_run_fails_and_skips_every_unfinished_task_instance() -> None:
    tis = views(a=TI.SUCCESS, b=TI.RUNNING, c=TI.NONE, d=TI.UP_FOR_RETRY, gone=TI.QUEUED)
    result = examine(timed(5), tis)
    assert moves(result) == {"b": TI.SKIPPED, "c": TI.SKIPPED, "d": TI.SKIPPED, "gone": TI.SKIPPED}
    assert result.run_decision is not None
    assert result.run_decision.to_state is DagRunState.FAILED
    assert result.run_decision.cause is RunCause.TIMED_OUT
    assert "dagrun_timeout" in result.task_decisions[0].reason
    assert result.to_create == ()


def test_run_exactly_at_its_timeout_is_not_timed_out() -> None:
    result = examine(timed(10), views(a=TI.SUCCESS, b=TI.RUNNING, c=TI.NONE, d=TI.RUNNING))
    assert result.run_decision is None


def test_zero_timeout_means_no_timeout() -> None:
    result = examine(timed(0), views(a=TI.SUCCESS, b=TI.RUNNING, c=TI.NONE, d=TI.RUNNING))
    assert result.run_decision is None


def test_run_that_is_not_running_is_rejected() -> None:
    run = RunView(run_id="r1", state=DagRunState.QUEUED)
    with pytest.raises(BadInputError, match=r"'r1'.*queued"):
        examine(make_dag("a"), views(a=TI.NONE), run=run)


def test_run_with_a_future_logical_date_is_not_examined() -> None:
    run = RunView(run_id="r1", state=DagRunState.RUNNING, logical_date=NOW + timedelta(days=1))
    result = examine(make_dag("a"), views(a=TI.NONE), run=run)
    assert result.task_decisions == ()
    assert result.not_examined_reason is not None
    assert "future" in result.not_examined_reason
    allowed = examine_run(
        make_dag("a"), run, views(a=TI.NONE), {}, NOW, allow_future_logical_date=True
    )
    assert moves(allowed) == {"a": TI.SCHEDULED}
