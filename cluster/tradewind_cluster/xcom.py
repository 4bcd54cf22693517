"""Pluggable XCom backends (Airflow's core.xcom_backend): how a task's value becomes the string
the store keeps and back. Workers serialize and deserialize; schedulers clear a task instance's
XComs when its next try starts. Importing this module pulls in no database code."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tradewind.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from tradewind_cluster.store.database import Connection

__all__ = [
    "XCOM_RETURN_KEY",
    "BaseXComBackend",
    "DatabaseXComBackend",
    "XComLike",
    "XComRecord",
    "load_xcom_backend",
]

XCOM_RETURN_KEY = "return_value"
"""The key of a task's return value, as in Airflow."""


class XComLike(Protocol):
    """What a backend reads from a stored XCom (the store's XComRow and XComRecord both fit)."""

    @property
    def dag_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def value(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class XComRecord:
    """A stored XCom as a worker receives it from PullXCom."""

    dag_id: str
    run_id: str
    task_id: str
    key: str
    value: str


class BaseXComBackend:
    """Subclass and set core.xcom_backend to its dotted path. Instances are made once per
    process with no arguments, and must be safe to share between threads."""

    def serialize_value(
        self, value: Any, *, key: str, dag_id: str, run_id: str, task_id: str
    ) -> str:
        """Turn a pushed value into the string the store keeps (called by the scheduler service
        for each push a worker makes; the worker sends the value as JSON)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement serialize_value")

    def deserialize_value(self, xcom: XComLike) -> Any:
        """Turn a stored XCom back into the value a task pulls (called by the scheduler service;
        the worker receives it as JSON)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement deserialize_value")

    def orm_deserialize_value(self, xcom: XComLike) -> Any:
        """A cheap form of the value for listings (CLI, UI); backends that keep values
        elsewhere override it to avoid fetching them. Defaults to deserialize_value."""
        return self.deserialize_value(xcom)

    def purge(self, xcom: XComLike) -> None:
        """Called for each XCom `clear` deletes: remove what the backend keeps elsewhere."""

    def clear(self, conn: Connection, *, dag_id: str, run_id: str, task_id: str) -> int:
        """Delete one task instance's XComs (purging each); returns how many there were."""
        from tradewind_cluster.store.xcom import delete_task_xcoms

        rows = delete_task_xcoms(conn, dag_id=dag_id, run_id=run_id, task_id=task_id)
        for row in rows:
            self.purge(row)
        return len(rows)


class DatabaseXComBackend(BaseXComBackend):
    """The default: values are JSON text kept in the metadata database."""

    def serialize_value(
        self, value: Any, *, key: str, dag_id: str, run_id: str, task_id: str
    ) -> str:
        """JSON text of the value; BadInputError names the task and key for non-JSON values."""
        try:
            return json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise BadInputError(
                f"XCom {key!r} of task {task_id!r} (DAG {dag_id!r}) is not JSON serializable "
                f"({exc}); push JSON values or configure core.xcom_backend"
            ) from None

    def deserialize_value(self, xcom: XComLike) -> Any:
        """The value parsed back from JSON."""
        return json.loads(xcom.value)


def load_xcom_backend(path: str) -> BaseXComBackend:
    """Import `package.module.Class` and make the backend; ConfigError names the class when it
    cannot be imported, is not a BaseXComBackend subclass or cannot be created."""
    module_name, _, attr = path.rpartition(".")
    where = f"core.xcom_backend {path!r}"
    if not module_name or not attr:
        raise ConfigError(f"{where} is not a dotted path like package.module.Class")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is a config error
        raise ConfigError(
            f"{where}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    if not isinstance(cls, type) or not issubclass(cls, BaseXComBackend):
        raise ConfigError(
            f"{where}: {attr} is not a subclass of tradewind_cluster.xcom.BaseXComBackend"
        )
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - as above: report it, do not crash at start-up
        raise ConfigError(
            f"{where}: {attr}() could not be created: {type(exc).__name__}: {exc}"
        ) from None
