"""What task code calls while it runs, as Airflow's `airflow.models` offers it: `Variable.get` and
`get_current_context()`. Core only declares them; the worker's task process installs the source
that reaches a scheduler (`install_task_runtime`), so nothing here does I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from tradewind.errors import BadInputError

__all__ = [
    "Variable",
    "VariableSource",
    "clear_task_runtime",
    "get_current_context",
    "install_task_runtime",
]


class VariableSource(Protocol):
    """Reads one Variable's stored text; None when no Variable has that key."""

    def get_variable(self, key: str) -> str | None:
        """The value stored under `key`, or None."""
        ...


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


_NO_DEFAULT: Any = _NoDefault()


class _TaskRuntime:
    """The one slot a task process fills before user code runs (a process runs one task)."""

    variables: VariableSource | None = None
    context: Mapping[str, Any] | None = None


def install_task_runtime(
    *, variables: VariableSource | None = None, context: Mapping[str, Any] | None = None
) -> None:
    """Called by the worker's task process: where Variables come from, and the running context."""
    _TaskRuntime.variables = variables
    _TaskRuntime.context = context


def clear_task_runtime() -> None:
    """Forget the installed runtime (tests, and a task process after its task)."""
    _TaskRuntime.variables = None
    _TaskRuntime.context = None


def get_current_context() -> Mapping[str, Any]:
    """The template context of the running task (Airflow's `get_current_context()`)."""
    if _TaskRuntime.context is None:
        raise BadInputError(
            "Current context was requested but no context was found! "
            "get_current_context() works only inside a running task"
        )
    return _TaskRuntime.context


class Variable:
    """Key/value settings stored by the cluster, read from task code or templates."""

    @classmethod
    def get(
        cls,
        key: str,
        default_var: Any = _NO_DEFAULT,
        deserialize_json: bool = False,
        *,
        default: Any = _NO_DEFAULT,
    ) -> Any:
        """The Variable's value (parsed JSON with deserialize_json), else the default;
        KeyError when it does not exist and no default was given (as Airflow 2)."""
        fallback = default_var if default is _NO_DEFAULT else default
        source = _TaskRuntime.variables
        if source is None:
            if fallback is not _NO_DEFAULT:
                return fallback
            raise KeyError(
                f"Variable {key} does not exist: Variables are read from a scheduler by a "
                "running task; they are not available while a DAG file is parsed (give a "
                "default, or read it inside the task)"
            )
        text = source.get_variable(key)
        if text is None:
            if fallback is not _NO_DEFAULT:
                return fallback
            raise KeyError(f"Variable {key} does not exist")
        if not deserialize_json:
            return text
        try:
            return json.loads(text)
        except ValueError as exc:
            raise BadInputError(f"Variable {key} does not hold valid JSON: {exc}") from None

    @classmethod
    def set(cls, key: str, value: Any, serialize_json: bool = False) -> None:
        """Not available to tasks: Variables are changed through the cluster's CLI."""
        raise BadInputError(
            f"Variable.set({key!r}) is not available inside a Tradewind task: workers hold no "
            "database access; set Variables through the tradewind CLI"
        )
