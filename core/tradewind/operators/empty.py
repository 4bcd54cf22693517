"""EmptyOperator: a task that does nothing; the scheduler marks it success without a worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tradewind.baseoperator import BaseOperator
from tradewind.spec import TaskKind

__all__ = ["DummyOperator", "EmptyOperator"]


class EmptyOperator(BaseOperator):
    """Does nothing; useful to group or join branches."""

    ui_color: ClassVar[str] = "#e8f7e4"

    @property
    def task_kind(self) -> TaskKind:
        """EMPTY (no worker needed) unless a subclass gives it an execute() of its own."""
        return TaskKind.EMPTY if type(self).execute is EmptyOperator.execute else TaskKind.CALLABLE

    def execute(self, context: Mapping[str, Any]) -> None:
        """Nothing to do."""
        return None


class DummyOperator(EmptyOperator):
    """The name EmptyOperator had before Airflow 2.4, kept so older DAG files load."""
