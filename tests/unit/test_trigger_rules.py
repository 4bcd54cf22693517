"""Trigger rules decide run / wait / skip / upstream_failed exactly as Airflow 2's TriggerRuleDep
does with flag_upstream_failed on, for an unmapped task. One row per case of each rule."""

from __future__ import annotations

import pytest

from tradewind.scheduling.trigger_rules import (
    TriggerVerdict,
    UpstreamCounts,
    evaluate_trigger_rule,
)
from tradewind.states import TaskInstanceState
from tradewind.trigger_rule import TriggerRule

TI = TaskInstanceState
TR = TriggerRule
RUN, WAIT, SKIP, UF = (
    TriggerVerdict.RUN,
    TriggerVerdict.WAIT,
    TriggerVerdict.SKIP,
    TriggerVerdict.UPSTREAM_FAILED,
)

# One letter per upstream state, so a row reads like the DAG's upstream column.
LETTERS = {
    "S": TI.SUCCESS,
    "F": TI.FAILED,
    "K": TI.SKIPPED,
    "U": TI.UPSTREAM_FAILED,
    "R": TI.REMOVED,
    "N": TI.NONE,
    "C": TI.SCHEDULED,
    "Q": TI.QUEUED,
    "G": TI.RUNNING,
    "Y": TI.UP_FOR_RETRY,
}


def states(code: str) -> list[TaskInstanceState]:
    return [LETTERS[c] for c in code]


CASES = [
    # all_success: any failure -> upstream_failed at once; else any skip -> skipped at once.
    (TR.ALL_SUCCESS, "SS", RUN),
    (TR.ALL_SUCCESS, "SN", WAIT),
    (TR.ALL_SUCCESS, "SG", WAIT),
    (TR.ALL_SUCCESS, "SY", WAIT),
    (TR.ALL_SUCCESS, "FN", UF),
    (TR.ALL_SUCCESS, "UN", UF),
    (TR.ALL_SUCCESS, "KN", SKIP),
    (TR.ALL_SUCCESS, "KF", UF),  # failure wins over skip
    (TR.ALL_SUCCESS, "SR", WAIT),  # a removed upstream is never a success: waits forever
    # all_failed: any success or skip -> skipped at once (skips cascade through it).
    (TR.ALL_FAILED, "FU", RUN),
    (TR.ALL_FAILED, "FN", WAIT),
    (TR.ALL_FAILED, "FS", SKIP),
    (TR.ALL_FAILED, "KN", SKIP),
    (TR.ALL_FAILED, "FR", WAIT),  # removed is not a failure
    # all_done: every upstream finished, removed counts as finished; never skips or fails.
    (TR.ALL_DONE, "SFKUR", RUN),
    (TR.ALL_DONE, "SFN", WAIT),
    (TR.ALL_DONE, "KK", RUN),
    (TR.ALL_DONE, "SQ", WAIT),
    # one_failed: runs on the first failure; skipped once all are done without one.
    (TR.ONE_FAILED, "FN", RUN),
    (TR.ONE_FAILED, "UN", RUN),
    (TR.ONE_FAILED, "SN", WAIT),
    (TR.ONE_FAILED, "SK", SKIP),
    (TR.ONE_FAILED, "SR", SKIP),
    # one_success: runs on the first success; when all are done without one: skipped if
    # every upstream skipped, upstream_failed otherwise.
    (TR.ONE_SUCCESS, "SN", RUN),
    (TR.ONE_SUCCESS, "FN", WAIT),
    (TR.ONE_SUCCESS, "KK", SKIP),
    (TR.ONE_SUCCESS, "KF", UF),
    (TR.ONE_SUCCESS, "FU", UF),
    (TR.ONE_SUCCESS, "RR", UF),
    (TR.ONE_SUCCESS, "KR", UF),
    # none_failed: upstream_failed at the first failure; runs when all succeeded or skipped.
    (TR.NONE_FAILED, "SK", RUN),
    (TR.NONE_FAILED, "KK", RUN),  # skips do not cascade through none_failed
    (TR.NONE_FAILED, "SN", WAIT),
    (TR.NONE_FAILED, "FN", UF),
    (TR.NONE_FAILED, "UK", UF),
    (TR.NONE_FAILED, "SR", WAIT),
    # none_failed_min_one_success: like none_failed, but skipped when every upstream skipped.
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "SK", RUN),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "KK", SKIP),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "KN", WAIT),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "FK", UF),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "UN", UF),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, "KR", WAIT),
    # none_skipped: skipped at the first skip; runs when all are done and none skipped.
    (TR.NONE_SKIPPED, "SF", RUN),
    (TR.NONE_SKIPPED, "UR", RUN),
    (TR.NONE_SKIPPED, "SN", WAIT),
    (TR.NONE_SKIPPED, "KN", SKIP),
    (TR.NONE_SKIPPED, "FK", SKIP),
    # always: runs whatever its upstreams do, even before they finish.
    (TR.ALWAYS, "NN", RUN),
    (TR.ALWAYS, "FK", RUN),
]


@pytest.mark.parametrize(("rule", "code", "verdict"), CASES)
def test_rule_table(rule: TriggerRule, code: str, verdict: TriggerVerdict) -> None:
    assert evaluate_trigger_rule(rule, states(code)).verdict is verdict


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_a_task_with_no_upstream_always_runs(rule: TriggerRule) -> None:
    outcome = evaluate_trigger_rule(rule, [])
    assert outcome.verdict is RUN
    assert outcome.reason == "no upstream tasks"


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_every_rule_is_known_and_gives_a_reason(rule: TriggerRule) -> None:
    outcome = evaluate_trigger_rule(rule, states("SFKN"))
    assert outcome.reason


def test_reason_counts_the_failures() -> None:
    outcome = evaluate_trigger_rule(TR.ALL_SUCCESS, states("FSN"))
    assert outcome.reason == "1 upstream failed"
    outcome = evaluate_trigger_rule(TR.NONE_FAILED, states("FU"))
    assert outcome.reason == "2 upstream failed"


def test_reason_counts_the_skips() -> None:
    assert evaluate_trigger_rule(TR.ALL_SUCCESS, states("KKS")).reason == "2 upstream skipped"


def test_wait_reason_summarises_the_upstreams() -> None:
    outcome = evaluate_trigger_rule(TR.ALL_SUCCESS, states("SNR"))
    assert outcome.verdict is WAIT
    assert "success=1" in outcome.reason
    assert "removed=1" in outcome.reason
    assert "not done=1" in outcome.reason


def test_upstream_counts_count_removed_as_done() -> None:
    counts = UpstreamCounts.of(states("SKFURNQ"))
    assert counts.total == 7
    assert (counts.success, counts.skipped, counts.failed) == (1, 1, 1)
    assert (counts.upstream_failed, counts.removed) == (1, 1)
    assert counts.done == 5
    assert not counts.all_done
    assert counts.failures == 2
