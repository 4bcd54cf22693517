"""Trigger-rule evaluation: from the states of a task's direct upstream task instances, whether
it runs, waits, is skipped or is upstream_failed, exactly as Airflow 2's TriggerRuleDep decides
with flag_upstream_failed on (the scheduler's setting) for an unmapped task."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tradewind.states import FINISHED_TI_STATES, TaskInstanceState
from tradewind.trigger_rule import TriggerRule

__all__ = ["TriggerOutcome", "TriggerVerdict", "UpstreamCounts", "evaluate_trigger_rule"]

_TI = TaskInstanceState


class TriggerVerdict(StrEnum):
    """What a trigger rule says about a task that has not started yet."""

    RUN = "run"  # the rule is met: schedule the task
    WAIT = "wait"  # not met yet, but it still may be: leave the task as it is
    SKIP = "skip"  # it can no longer be met because of skips: the task is skipped
    UPSTREAM_FAILED = "upstream_failed"  # it can no longer be met because of failures


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerOutcome:
    """A verdict and the reason behind it, e.g. UPSTREAM_FAILED, "1 upstream failed"."""

    verdict: TriggerVerdict
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamCounts:
    """How many direct upstream task instances are in each finished state.

    `done` counts every finished upstream, removed ones included (Airflow counts a removed
    upstream as done but neither a success nor a failure)."""

    total: int
    success: int
    skipped: int
    failed: int
    upstream_failed: int
    removed: int
    done: int

    @classmethod
    def of(cls, states: Sequence[TaskInstanceState]) -> UpstreamCounts:
        """Count `states`, one entry per direct upstream task."""
        counts = Counter(states)
        return cls(
            total=len(states),
            success=counts[_TI.SUCCESS],
            skipped=counts[_TI.SKIPPED],
            failed=counts[_TI.FAILED],
            upstream_failed=counts[_TI.UPSTREAM_FAILED],
            removed=counts[_TI.REMOVED],
            done=sum(n for state, n in counts.items() if state in FINISHED_TI_STATES),
        )

    @property
    def all_done(self) -> bool:
        """Every upstream has finished (success, failed, skipped, upstream_failed or removed)."""
        return self.done >= self.total

    @property
    def failures(self) -> int:
        """Upstreams that failed or are upstream_failed."""
        return self.failed + self.upstream_failed

    def summary(self) -> str:
        """The counts as text for reasons, e.g. "success=1, failed=1, not done=2"."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("success", self.success),
                ("skipped", self.skipped),
                ("failed", self.failed),
                ("upstream_failed", self.upstream_failed),
                ("removed", self.removed),
                ("not done", self.total - self.done),
            )
            if value
        ]
        return ", ".join(parts)


def _run(reason: str) -> TriggerOutcome:
    return TriggerOutcome(verdict=TriggerVerdict.RUN, reason=reason)


def _wait(c: UpstreamCounts, need: str) -> TriggerOutcome:
    return TriggerOutcome(verdict=TriggerVerdict.WAIT, reason=f"{need} ({c.summary()})")


def _skip(reason: str) -> TriggerOutcome:
    return TriggerOutcome(verdict=TriggerVerdict.SKIP, reason=reason)


def _upstream_failed(reason: str) -> TriggerOutcome:
    return TriggerOutcome(verdict=TriggerVerdict.UPSTREAM_FAILED, reason=reason)


def _failed_text(c: UpstreamCounts) -> str:
    return f"{c.failures} upstream failed"


def _skipped_text(c: UpstreamCounts) -> str:
    return f"{c.skipped} upstream skipped"


# Each rule first checks whether the task can no longer run (Airflow's flag_upstream_failed
# branch, which may act before every upstream is done), then whether the rule is met. Removed
# upstreams count as done but satisfy neither "success" nor "failed" counts, so rules that need
# every upstream to succeed (or fail) wait forever on one; Airflow's deadlock check then ends
# the run.


def _all_success(c: UpstreamCounts) -> TriggerOutcome:
    if c.failures:
        return _upstream_failed(_failed_text(c))
    if c.skipped:
        return _skip(_skipped_text(c))
    if c.success >= c.total:
        return _run(f"all {c.total} upstream succeeded")
    return _wait(c, "waiting for every upstream to succeed")


def _all_failed(c: UpstreamCounts) -> TriggerOutcome:
    if c.success or c.skipped:
        return _skip(f"{c.success + c.skipped} upstream succeeded or skipped")
    if c.failures >= c.total:
        return _run(f"all {c.total} upstream failed")
    return _wait(c, "waiting for every upstream to fail")


def _all_done(c: UpstreamCounts) -> TriggerOutcome:
    if c.all_done:
        return _run(f"all {c.total} upstream done")
    return _wait(c, "waiting for every upstream to finish")


def _one_failed(c: UpstreamCounts) -> TriggerOutcome:
    if c.failures:
        return _run(_failed_text(c))
    if c.all_done:
        return _skip("every upstream done and none failed")
    return _wait(c, "waiting for an upstream to fail")


def _one_success(c: UpstreamCounts) -> TriggerOutcome:
    if c.success:
        return _run(f"{c.success} upstream succeeded")
    if c.all_done and c.done == c.skipped:
        return _skip("every upstream skipped")
    if c.all_done:
        return _upstream_failed(f"every upstream done and none succeeded ({c.summary()})")
    return _wait(c, "waiting for an upstream to succeed")


def _none_failed(c: UpstreamCounts) -> TriggerOutcome:
    if c.failures:
        return _upstream_failed(_failed_text(c))
    if c.success + c.skipped >= c.total:
        return _run(f"all {c.total} upstream succeeded or skipped")
    return _wait(c, "waiting for every upstream to succeed or skip")


def _none_failed_min_one_success(c: UpstreamCounts) -> TriggerOutcome:
    if c.failures:
        return _upstream_failed(_failed_text(c))
    if c.skipped >= c.total:
        return _skip("every upstream skipped")
    if c.success + c.skipped >= c.total:
        return _run(f"{c.success} upstream succeeded, the rest skipped")
    return _wait(c, "waiting for every upstream to succeed or skip")


def _none_skipped(c: UpstreamCounts) -> TriggerOutcome:
    if c.skipped:
        return _skip(_skipped_text(c))
    if c.all_done:
        return _run(f"all {c.total} upstream done and none skipped")
    return _wait(c, "waiting for every upstream to finish")


def _always(c: UpstreamCounts) -> TriggerOutcome:
    return _run("trigger rule always")


_RULES: dict[TriggerRule, Callable[[UpstreamCounts], TriggerOutcome]] = {
    TriggerRule.ALL_SUCCESS: _all_success,
    TriggerRule.ALL_FAILED: _all_failed,
    TriggerRule.ALL_DONE: _all_done,
    TriggerRule.ONE_FAILED: _one_failed,
    TriggerRule.ONE_SUCCESS: _one_success,
    TriggerRule.NONE_FAILED: _none_failed,
    TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS: _none_failed_min_one_success,
    TriggerRule.NONE_SKIPPED: _none_skipped,
    TriggerRule.ALWAYS: _always,
}


def evaluate_trigger_rule(
    rule: TriggerRule, upstream_states: Sequence[TaskInstanceState]
) -> TriggerOutcome:
    """Judge `rule` against the states of the direct upstream task instances (one per task).

    A task with no upstream always runs. Pass the state of an upstream whose task instance does
    not exist yet as NONE."""
    if not upstream_states:
        return _run("no upstream tasks")
    return _RULES[rule](UpstreamCounts.of(upstream_states))
