"""The metadata store: the only package that speaks SQL. It returns frozen snapshots and
applies decisions; lock order everywhere is dag → dag_run → task_instance → pool."""

from __future__ import annotations

from tradewind_cluster.store.database import Database, DatabaseOptions, is_transient
from tradewind_cluster.store.migrate import SchemaStatus, check, reset, upgrade

__all__ = [
    "Database",
    "DatabaseOptions",
    "SchemaStatus",
    "check",
    "is_transient",
    "reset",
    "upgrade",
]
