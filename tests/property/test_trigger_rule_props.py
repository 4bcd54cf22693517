"""Trigger-rule evaluation agrees with a truth table written here from the rules' definitions
(Airflow 2 docs and TriggerRuleDep), independently of the implementation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tradewind.scheduling.trigger_rules import TriggerVerdict, evaluate_trigger_rule
from tradewind.states import TaskInstanceState
from tradewind.trigger_rule import TriggerRule

TI = TaskInstanceState
V = TriggerVerdict

FINISHED = {TI.SUCCESS, TI.FAILED, TI.SKIPPED, TI.UPSTREAM_FAILED, TI.REMOVED}
FAILURES = {TI.FAILED, TI.UPSTREAM_FAILED}


def truth_table(rule: TriggerRule, ups: list[TaskInstanceState]) -> TriggerVerdict:
    """What the rule's definition says, written as predicates over the upstream list."""
    if not ups or rule is TriggerRule.ALWAYS:
        return V.RUN
    every_done = all(s in FINISHED for s in ups)
    any_failure = any(s in FAILURES for s in ups)
    any_skip = TI.SKIPPED in ups
    any_success = TI.SUCCESS in ups

    def only(allowed: set[TaskInstanceState]) -> bool:
        return all(s in allowed for s in ups)

    if rule is TriggerRule.ALL_SUCCESS:
        if any_failure:
            return V.UPSTREAM_FAILED
        if any_skip:
            return V.SKIP
        return V.RUN if only({TI.SUCCESS}) else V.WAIT
    if rule is TriggerRule.ALL_FAILED:
        if any_success or any_skip:
            return V.SKIP
        return V.RUN if only(FAILURES) else V.WAIT
    if rule is TriggerRule.ALL_DONE:
        return V.RUN if every_done else V.WAIT
    if rule is TriggerRule.ONE_FAILED:
        if any_failure:
            return V.RUN
        return V.SKIP if every_done else V.WAIT
    if rule is TriggerRule.ONE_SUCCESS:
        if any_success:
            return V.RUN
        if not every_done:
            return V.WAIT
        return V.SKIP if only({TI.SKIPPED}) else V.UPSTREAM_FAILED
    if rule is TriggerRule.NONE_FAILED:
        if any_failure:
            return V.UPSTREAM_FAILED
        return V.RUN if only({TI.SUCCESS, TI.SKIPPED}) else V.WAIT
    if rule is TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS:
        if any_failure:
            return V.UPSTREAM_FAILED
        if only({TI.SKIPPED}):
            return V.SKIP
        return V.RUN if only({TI.SUCCESS, TI.SKIPPED}) else V.WAIT
    assert rule is TriggerRule.NONE_SKIPPED
    if any_skip:
        return V.SKIP
    return V.RUN if every_done else V.WAIT


upstreams = st.lists(st.sampled_from(list(TaskInstanceState)), max_size=7)


@settings(max_examples=200, deadline=None)
@given(rule=st.sampled_from(list(TriggerRule)), ups=upstreams)
def test_agrees_with_truth_table(rule: TriggerRule, ups: list[TaskInstanceState]) -> None:
    outcome = evaluate_trigger_rule(rule, ups)
    assert outcome.verdict is truth_table(rule, ups)
    assert outcome.reason


@settings(max_examples=100, deadline=None)
@given(rule=st.sampled_from(list(TriggerRule)), ups=upstreams, data=st.data())
def test_order_of_upstreams_does_not_matter(
    rule: TriggerRule, ups: list[TaskInstanceState], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(ups))
    assert evaluate_trigger_rule(rule, shuffled) == evaluate_trigger_rule(rule, ups)


finished_upstreams = st.lists(st.sampled_from(sorted(FINISHED)), min_size=1, max_size=7)
WAITS_ON_REMOVED = {
    TriggerRule.ALL_SUCCESS,
    TriggerRule.ALL_FAILED,
    TriggerRule.NONE_FAILED,
    TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
}


@settings(max_examples=150, deadline=None)
@given(rule=st.sampled_from(list(TriggerRule)), ups=finished_upstreams)
def test_every_rule_decides_once_upstreams_are_done(
    rule: TriggerRule, ups: list[TaskInstanceState]
) -> None:
    """Only a removed upstream (never a success, never a failure) can leave a rule waiting
    after every upstream finished; Airflow's deadlock check ends such a run."""
    verdict = evaluate_trigger_rule(rule, ups).verdict
    if verdict is V.WAIT:
        assert rule in WAITS_ON_REMOVED
        assert TI.REMOVED in ups
