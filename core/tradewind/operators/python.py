"""Python callables as tasks: PythonOperator, BranchPythonOperator, ShortCircuitOperator, and
the pure helpers the worker uses to call them as Airflow does (context keyword injection)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from tradewind.baseoperator import BaseOperator
from tradewind.errors import BadInputError, DagDefinitionError
from tradewind.spec import BranchKind

__all__ = [
    "KNOWN_CONTEXT_KEYS",
    "BranchPythonOperator",
    "PythonOperator",
    "ShortCircuitOperator",
    "callable_name",
    "determine_kwargs",
    "parse_branch_result",
]

# The task context keys of Airflow 2 a callable may ask for by name.
KNOWN_CONTEXT_KEYS: frozenset[str] = frozenset(
    {
        "conf", "conn", "dag", "dag_run", "data_interval_end", "data_interval_start", "ds",
        "ds_nodash", "execution_date", "expanded_ti_count", "exception", "inlets",
        "inlet_events", "logical_date", "macros", "map_index_template", "next_ds",
        "next_ds_nodash", "next_execution_date", "outlets", "outlet_events", "params",
        "prev_data_interval_start_success", "prev_data_interval_end_success", "prev_ds",
        "prev_ds_nodash", "prev_execution_date", "prev_execution_date_success",
        "prev_start_date_success", "prev_end_date_success", "reason", "run_id", "task",
        "task_instance", "task_instance_key_str", "test_mode", "templates_dict", "ti",
        "tomorrow_ds", "tomorrow_ds_nodash", "triggering_dataset_events", "ts", "ts_nodash",
        "ts_nodash_with_tz", "try_number", "var", "yesterday_ds", "yesterday_ds_nodash",
    }
)  # fmt: skip


def callable_name(python_callable: Callable[..., Any]) -> str:
    """`module.qualname` of a callable, for display (callables are never serialized)."""
    module = getattr(python_callable, "__module__", None) or "?"
    name = getattr(python_callable, "__qualname__", None) or type(python_callable).__name__
    return f"{module}.{name}"


def determine_kwargs(
    python_callable: Callable[..., Any],
    op_args: Sequence[Any],
    op_kwargs: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    templates_dict: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments to call `python_callable(*op_args, **result)` with, as Airflow's
    PythonOperator: op_kwargs and templates_dict merged over the context; a callable with
    **kwargs gets everything, others only the names they declare."""
    merged = dict(context)
    merged.update(op_kwargs)
    merged["templates_dict"] = templates_dict
    signature = inspect.signature(python_callable)
    for name in itertools.islice(signature.parameters, len(op_args)):
        if name in merged:
            raise DagDefinitionError(
                f"The key {name!r} in args is a part of kwargs and therefore reserved."
            )
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return merged
    return {name: merged[name] for name in signature.parameters if name in merged}


def parse_branch_result(result: object, task_ids: Collection[str] | None = None) -> frozenset[str]:
    """The task ids a branch callable chose (a task_id, an iterable of them, or None), checked
    against `task_ids` when given. BadInputError describes a bad return value."""
    if result is None:
        return frozenset()
    if isinstance(result, str):
        chosen = frozenset({result})
    elif isinstance(result, Iterable):
        items = list(result)
        invalid = [item for item in items if not isinstance(item, str)]
        if invalid:
            raise BadInputError(
                "'branch_task_ids' expected all task IDs are strings. "
                f"Invalid tasks found: {invalid}."
            )
        chosen = frozenset(items)
    else:
        raise BadInputError(
            "'branch_task_ids' must be either None, a task ID, or an Iterable of IDs, "
            f"but got {type(result).__name__!r}."
        )
    if task_ids is not None and not chosen <= set(task_ids):
        raise BadInputError(
            "'branch_task_ids' must contain only valid task_ids. "
            f"Invalid tasks found: {sorted(chosen - set(task_ids))}."
        )
    return chosen


class PythonOperator(BaseOperator):
    """Call `python_callable(*op_args, **op_kwargs)` on a worker, plus the context keys it wants."""

    template_fields: ClassVar[tuple[str, ...]] = ("templates_dict", "op_args", "op_kwargs")
    ui_color: ClassVar[str] = "#ffefeb"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        templates_dict: Mapping[str, Any] | None = None,
        templates_exts: Sequence[str] | None = None,
        show_return_value_in_logs: bool = True,
        provide_context: bool | None = None,  # Airflow 1 argument, ignored as Airflow 2 does
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not callable(python_callable):
            raise DagDefinitionError(
                f"task {self.task_id!r}: `python_callable` param must be callable"
            )
        self.python_callable = python_callable
        self.op_args: Sequence[Any] = op_args or ()
        self.op_kwargs: Mapping[str, Any] = op_kwargs or {}
        self.templates_dict = templates_dict
        self.templates_exts = templates_exts
        self.show_return_value_in_logs = show_return_value_in_logs

    def execute(self, context: Mapping[str, Any]) -> Any:
        """Call the callable; XComArgs in the arguments must have been resolved first."""
        kwargs = determine_kwargs(
            self.python_callable,
            self.op_args,
            self.op_kwargs,
            context,
            templates_dict=self.templates_dict,
        )
        return self.python_callable(*self.op_args, **kwargs)

    def serialize_fields(self) -> dict[str, Any]:
        """The callable's name (not the callable itself) and the arguments to call it with."""
        return {
            "python_callable": callable_name(self.python_callable),
            "op_args": list(self.op_args),
            "op_kwargs": dict(self.op_kwargs),
            "templates_dict": None if self.templates_dict is None else dict(self.templates_dict),
            "show_return_value_in_logs": self.show_return_value_in_logs,
        }


class BranchPythonOperator(PythonOperator):
    """The callable returns the task_id (or list of task_ids) to follow; the worker skips
    every other direct downstream task."""

    branching: ClassVar[BranchKind | None] = BranchKind.BRANCH


class ShortCircuitOperator(PythonOperator):
    """A falsy return value skips downstream tasks: all of them when
    ignore_downstream_trigger_rules (default), else only the direct ones."""

    branching: ClassVar[BranchKind | None] = BranchKind.SHORT_CIRCUIT

    def __init__(self, *, ignore_downstream_trigger_rules: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_downstream_trigger_rules = ignore_downstream_trigger_rules
