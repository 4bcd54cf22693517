"""The built-in operators a DAG file declares tasks with."""

from __future__ import annotations

from tradewind.operators.bash import BashOperator
from tradewind.operators.empty import DummyOperator, EmptyOperator
from tradewind.operators.python import (
    BranchPythonOperator,
    PythonOperator,
    ShortCircuitOperator,
    determine_kwargs,
)

__all__ = [
    "BashOperator",
    "BranchPythonOperator",
    "DummyOperator",
    "EmptyOperator",
    "PythonOperator",
    "ShortCircuitOperator",
    "determine_kwargs",
]
