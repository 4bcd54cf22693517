"""Tradewind: author workflows as Python DAGs, run them on an all-active scheduler cluster.

from tradewind import DAG, BashOperator, task
"""

from __future__ import annotations

from tradewind.baseoperator import BaseOperator
from tradewind.dag import DAG
from tradewind.errors import TradewindError
from tradewind.exceptions import AirflowSkipException
from tradewind.models import Variable, get_current_context
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
    "AirflowSkipException",
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
    "Variable",
    "WeightRule",
    "XComArg",
    "__version__",
    "chain",
    "cross_downstream",
    "get_current_context",
    "task",
]
