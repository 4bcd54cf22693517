"""Exceptions task code raises to steer its own outcome, under the names Airflow 2 gives them."""

from __future__ import annotations

from tradewind.errors import TradewindError

__all__ = ["AirflowSkipException", "SkipTask"]


class AirflowSkipException(TradewindError):  # noqa: N818 - Airflow's name, for ported DAGs
    """Raised by task code: the task instance ends SKIPPED instead of failing."""


SkipTask = AirflowSkipException
"""The Tradewind name for AirflowSkipException."""
