"""Tradewind: author workflows as Python DAGs, run them on an all-active scheduler cluster."""

from __future__ import annotations

from tradewind.errors import TradewindError
from tradewind.states import DagRunState, TaskInstanceState
from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule

__version__ = "0.1.0"

__all__ = [
    "DagRunState",
    "TaskInstanceState",
    "TradewindError",
    "TriggerRule",
    "WeightRule",
    "__version__",
]
