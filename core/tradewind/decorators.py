"""The TaskFlow decorators under Airflow's module name: `from tradewind.decorators import dag,
task`. (`tradewind.dag` is the DAG module, so the `dag` decorator is not re-exported there.)"""

from __future__ import annotations

from tradewind.taskflow import dag, task

__all__ = ["dag", "task"]
