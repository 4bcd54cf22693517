"""TaskFlow: `@task` turns a function into a task factory whose calls return XComArgs, and
`@dag` turns a function into a DAG factory, with Airflow 2's task id and argument rules."""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, overload

from tradewind.dag import DAG, get_current_dag
from tradewind.errors import BadInputError, DagDefinitionError
from tradewind.operators.python import (
    KNOWN_CONTEXT_KEYS,
    BranchPythonOperator,
    PythonOperator,
    ShortCircuitOperator,
)
from tradewind.xcomarg import XComArg

__all__ = ["dag", "get_unique_task_id", "split_multiple_outputs", "task"]


def get_unique_task_id(task_id: str, dag: DAG | None) -> str:
    """`task_id`, or `task_id__N` with the next free N when the DAG already has it."""
    if dag is None or task_id not in dag.task_dict:
        return task_id
    core = re.split(r"__\d+$", task_id)[0]
    pattern = re.compile(rf"{re.escape(core)}__(\d+)")
    suffixes = [int(m.group(1)) for tid in dag.task_dict if (m := pattern.fullmatch(tid))]
    return f"{core}__{max(suffixes, default=0) + 1}"


def split_multiple_outputs(value: object) -> dict[str, Any]:
    """The XComs a multiple_outputs task pushes besides its return value: one per dict key."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadInputError(
            f"Returned output was type {type(value).__name__} expected dictionary "
            "for multiple_outputs"
        )
    for key in value:
        if not isinstance(key, str):
            raise BadInputError(
                "Returned dictionary keys must be strings when using multiple_outputs, "
                f"found {key!r} ({type(key).__name__}) instead"
            )
    return dict(value)


def _check_call(
    function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """Fail at DAG parse time, as Airflow does, when the call cannot bind to the function."""
    name = getattr(function, "__name__", repr(function))
    signature = inspect.signature(function)
    for param in signature.parameters.values():
        if param.name in KNOWN_CONTEXT_KEYS and param.default not in (None, param.empty):
            raise DagDefinitionError(
                f"{name}: context key parameter {param.name} can't have a default other than None"
            )
    # Context keys are supplied at run time; None stands in for them here.
    params = [
        p.replace(default=None) if p.name in KNOWN_CONTEXT_KEYS else p
        for p in signature.parameters.values()
    ]
    try:
        signature = signature.replace(parameters=params)
        signature.bind(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise DagDefinitionError(f"cannot call task function {name}: {exc}") from None


def _infer_multiple_outputs(function: Callable[..., Any]) -> bool:
    """True when the function is annotated to return a mapping (dict, Dict[...], TypedDict)."""
    if "return" not in getattr(function, "__annotations__", {}):
        return False
    try:
        return_type = typing.get_type_hints(function).get("return", Any)
    except Exception:  # noqa: BLE001 - an unresolvable annotation just means "no"
        return False
    origin = typing.get_origin(return_type) or return_type
    return isinstance(origin, type) and issubclass(origin, Mapping)


class _PythonDecoratedOperator(PythonOperator):
    """The operator behind `@task`: a PythonOperator whose task id is made unique."""

    custom_operator_name: ClassVar[str | None] = "@task"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        task_id: str,
        **kwargs: Any,
    ) -> None:
        _check_call(python_callable, op_args or (), op_kwargs or {})
        dag_ = kwargs.get("dag") or get_current_dag()
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            task_id=get_unique_task_id(task_id, dag_),
            **kwargs,
        )

    def serialize_fields(self) -> dict[str, Any]:
        """PythonOperator's fields plus multiple_outputs."""
        return {**super().serialize_fields(), "multiple_outputs": self.multiple_outputs}


class _BranchPythonDecoratedOperator(_PythonDecoratedOperator, BranchPythonOperator):
    custom_operator_name: ClassVar[str | None] = "@task.branch"


class _ShortCircuitDecoratedOperator(_PythonDecoratedOperator, ShortCircuitOperator):
    custom_operator_name: ClassVar[str | None] = "@task.short_circuit"


class TaskDecorator:
    """A function decorated with `@task`: calling it inside a DAG creates a task."""

    def __init__(
        self,
        function: Callable[..., Any],
        operator_class: type[_PythonDecoratedOperator],
        task_kwargs: Mapping[str, Any],
        multiple_outputs: bool | None,
    ) -> None:
        if not callable(function):
            raise DagDefinitionError(f"@task needs a callable, got {function!r}")
        functools.update_wrapper(self, function)
        self.function = function
        self.operator_class = operator_class
        self.task_kwargs = dict(task_kwargs)
        self.multiple_outputs = (
            _infer_multiple_outputs(function) if multiple_outputs is None else multiple_outputs
        )

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        """Create the task with these arguments; the result is a reference to its return value."""
        task_kwargs = dict(self.task_kwargs)
        task_kwargs.setdefault("task_id", self.function.__name__)
        operator = self.operator_class(
            python_callable=self.function,
            op_args=list(args),
            op_kwargs=kwargs,
            multiple_outputs=self.multiple_outputs,
            **task_kwargs,
        )
        return XComArg(operator)

    def override(self, **kwargs: Any) -> TaskDecorator:
        """The same task function with some task arguments replaced (Airflow 2.5+)."""
        multiple_outputs = kwargs.pop("multiple_outputs", self.multiple_outputs)
        merged = {**self.task_kwargs, **kwargs}
        return TaskDecorator(self.function, self.operator_class, merged, multiple_outputs)


_Decorate = Callable[[Callable[..., Any]], TaskDecorator]


class _TaskDecoratorCollection:
    """`task`: `@task`, `@task(...)`, `@task.python`, `@task.branch`, `@task.short_circuit`."""

    def _make(
        self,
        operator_class: type[_PythonDecoratedOperator],
        python_callable: Callable[..., Any] | None,
        multiple_outputs: bool | None,
        kwargs: dict[str, Any],
    ) -> TaskDecorator | _Decorate:
        if python_callable is None:
            return lambda f: TaskDecorator(f, operator_class, kwargs, multiple_outputs)
        return TaskDecorator(python_callable, operator_class, kwargs, multiple_outputs)

    @overload
    def __call__(
        self, python_callable: Callable[..., Any], *, multiple_outputs: bool | None = None
    ) -> TaskDecorator: ...
    @overload
    def __call__(
        self, python_callable: None = None, *, multiple_outputs: bool | None = None, **kwargs: Any
    ) -> _Decorate: ...
    def __call__(
        self,
        python_callable: Callable[..., Any] | None = None,
        *,
        multiple_outputs: bool | None = None,
        **kwargs: Any,
    ) -> TaskDecorator | _Decorate:
        return self._make(_PythonDecoratedOperator, python_callable, multiple_outputs, kwargs)

    def python(
        self,
        python_callable: Callable[..., Any] | None = None,
        *,
        multiple_outputs: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Same as `@task`."""
        return self._make(_PythonDecoratedOperator, python_callable, multiple_outputs, kwargs)

    def branch(
        self,
        python_callable: Callable[..., Any] | None = None,
        *,
        multiple_outputs: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A BranchPythonOperator task: the function returns the task id(s) to follow."""
        return self._make(_BranchPythonDecoratedOperator, python_callable, multiple_outputs, kwargs)

    def short_circuit(
        self,
        python_callable: Callable[..., Any] | None = None,
        *,
        multiple_outputs: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A ShortCircuitOperator task: a falsy return value skips downstream tasks."""
        return self._make(_ShortCircuitDecoratedOperator, python_callable, multiple_outputs, kwargs)


task = _TaskDecoratorCollection()


def _dag_factory(
    function: Callable[..., Any], dag_id: str, dag_kwargs: dict[str, Any]
) -> Callable[..., DAG]:
    @functools.wraps(function)
    def factory(*args: Any, **kwargs: Any) -> DAG:
        bound = inspect.signature(function).bind(*args, **kwargs)
        bound.apply_defaults()
        # As in Airflow, the function's arguments become DAG params (here: plain values).
        params = {**dict(dag_kwargs.get("params") or {}), **bound.arguments}
        with DAG(dag_id or function.__name__, **{**dag_kwargs, "params": params}) as built:
            if function.__doc__ and not built.doc_md:
                built.doc_md = function.__doc__
            function(*bound.args, **bound.kwargs)
        built.fileloc = sys._getframe(1).f_code.co_filename
        return built

    return factory


def dag(dag_id: str | Callable[..., Any] = "", **dag_kwargs: Any) -> Any:
    """`@dag(...)` (or bare `@dag`): calling the decorated function builds and returns the DAG,
    named after the function unless dag_id is given."""
    if callable(dag_id):
        return _dag_factory(dag_id, "", dag_kwargs)
    return lambda function: _dag_factory(function, dag_id, dag_kwargs)
