"""Tradewind: author workflows as Python DAGs, run them on an all-active scheduler cluster.

from tradewind import DAG, BashOperator, task
"""

from __future__ import annotations

from tradewind.baseoperator import BaseOperator
from tradewind.dag import DAG
from tradewind.errors import TradewindError
from tradewind.operators import (
    BashOperator,
    BranchPythonOperator,
    DummyOperator,
    EmptyOperator,
    PythonOperator,
    ShortCircuitOperator,
)
from tradewind.relations import chain, cross_downstream
from tradewind.states import DagRunState, TaskInstanceState
from tradewind.taskflow import task
from tradewind.trigger_rule import TriggerRule
from tradewind.weight_rule import WeightRule
from tradewind.xcomarg import XComArg

__version__ = "0.1.0"

__all__ = [
    "DAG",
    "BaseOperator",
    "BashOperator",
    "BranchPythonOperator",
    "DagRunState",
    "DummyOperator",
    "EmptyOperator",
    "PythonOperator",
    "ShortCircuitOperator",
    "TaskInstanceState",
    "TradewindError",
    "TriggerRule",
    "WeightRule",
    "XComArg",
    "__version__",
    "chain",
    "cross_downstream",
    "task",
]
