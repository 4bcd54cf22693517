"""How a task's effective priority weight is computed from the graph."""

from __future__ import annotations

from enum import StrEnum

from tradewind.errors import DagDefinitionError

__all__ = ["WeightRule", "parse_weight_rule"]


class WeightRule(StrEnum):
    """downstream: own + every descendant; upstream: own + every ancestor; absolute: own."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    ABSOLUTE = "absolute"


def parse_weight_rule(value: str | WeightRule) -> WeightRule:
    """Accept a WeightRule or its name; anything else is a DagDefinitionError."""
    try:
        return WeightRule(value)
    except ValueError:
        known = ", ".join(r.value for r in WeightRule)
        raise DagDefinitionError(
            f"unknown weight_rule {value!r}; expected one of: {known}"
        ) from None
