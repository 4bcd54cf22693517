"""The trigger rules a task may declare (names as in Airflow 2)."""

from __future__ import annotations

from enum import StrEnum

from tradewind.errors import InvalidTriggerRuleError

__all__ = ["TriggerRule", "parse_trigger_rule"]


class TriggerRule(StrEnum):
    """When a task may run, judged from the states of its direct upstream tasks."""

    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ONE_FAILED = "one_failed"
    ONE_SUCCESS = "one_success"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    NONE_SKIPPED = "none_skipped"
    ALWAYS = "always"


_ALIASES = {"dummy": TriggerRule.ALWAYS}


def parse_trigger_rule(value: str | TriggerRule) -> TriggerRule:
    """Accept a TriggerRule or its name (and `dummy`, the old name of `always`)."""
    if isinstance(value, TriggerRule):
        return value
    if isinstance(value, str):
        if value in _ALIASES:
            return _ALIASES[value]
        try:
            return TriggerRule(value)
        except ValueError:
            pass
    known = ", ".join(r.value for r in TriggerRule)
    raise InvalidTriggerRuleError(f"unknown trigger rule {value!r}; expected one of: {known}")
