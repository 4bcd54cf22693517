"""XComArg: a reference to another task's XCom passed as an operator argument. It wires the
dependency when the DAG is built; the worker swaps it for the pulled value at run time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tradewind.errors import DagDefinitionError

if TYPE_CHECKING:
    from tradewind.baseoperator import BaseOperator

__all__ = [
    "XCOMARG_MARKER",
    "XCOM_RETURN_KEY",
    "XComArg",
    "XComPull",
    "encode_xcomargs",
    "iter_xcomargs",
    "resolve_xcomargs",
]

XCOM_RETURN_KEY = "return_value"
XCOMARG_MARKER = "__xcomarg__"

XComPull = Callable[[str, str], Any]
"""pull(task_id, key) -> the XCom value, as the worker reads it for the running DAG run."""


class XComArg:
    """The XCom `key` (default: the return value) of `operator`, resolved at run time."""

    __slots__ = ("key", "operator")

    def __init__(self, operator: BaseOperator, key: str = XCOM_RETURN_KEY) -> None:
        self.operator = operator
        self.key = key

    def __getitem__(self, key: str) -> XComArg:
        """`task_output["name"]`: the XCom pushed under `name` (e.g. by multiple_outputs)."""
        if not isinstance(key, str):
            raise DagDefinitionError(
                f"XComArg only supports str lookup, received {type(key).__name__}"
            )
        return XComArg(self.operator, key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, XComArg):
            return NotImplemented
        return self.operator is other.operator and self.key == other.key

    def __hash__(self) -> int:
        return hash((id(self.operator), self.key))

    def __repr__(self) -> str:
        return f"XComArg({self.operator!r}, key={self.key!r})"

    def __iter__(self) -> Iterator[Any]:
        # Without this, Python would iterate by calling __getitem__(0), (1)... forever.
        raise TypeError("an XComArg is resolved at run time and cannot be iterated in a DAG file")

    @property
    def task_id(self) -> str:
        """The id of the task whose XCom this refers to."""
        return self.operator.task_id

    @property
    def roots(self) -> list[BaseOperator]:
        """The operator, so an XComArg can stand on either side of `>>`."""
        return [self.operator]

    @property
    def leaves(self) -> list[BaseOperator]:
        """The operator, so an XComArg can stand on either side of `>>`."""
        return [self.operator]

    def set_upstream(self, other: object) -> None:
        """Make `other` upstream of the referenced operator."""
        self.operator.set_upstream(other)

    def set_downstream(self, other: object) -> None:
        """Make `other` downstream of the referenced operator."""
        self.operator.set_downstream(other)

    def __rshift__(self, other: Any) -> Any:
        self.operator.set_downstream(other)
        return other

    def __lshift__(self, other: Any) -> Any:
        self.operator.set_upstream(other)
        return other

    def __rrshift__(self, other: Any) -> XComArg:
        self.operator.set_upstream(other)
        return self

    def __rlshift__(self, other: Any) -> XComArg:
        self.operator.set_downstream(other)
        return self

    def to_reference(self) -> dict[str, dict[str, str]]:
        """The JSON form stored in serialized operator arguments."""
        return {XCOMARG_MARKER: {"task_id": self.operator.task_id, "key": self.key}}


def iter_xcomargs(value: object) -> Iterator[XComArg]:
    """Every XComArg inside `value`, looking through lists, tuples, sets and dict values."""
    if isinstance(value, XComArg):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_xcomargs(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from iter_xcomargs(item)


def encode_xcomargs(value: Any) -> Any:
    """`value` with every XComArg replaced by its JSON reference (tuples become lists)."""
    if isinstance(value, XComArg):
        return value.to_reference()
    if isinstance(value, dict):
        return {key: encode_xcomargs(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_xcomargs(item) for item in value]
    return value


def _reference(value: Mapping[Any, Any]) -> tuple[str, str] | None:
    if len(value) != 1 or XCOMARG_MARKER not in value:
        return None
    body = value[XCOMARG_MARKER]
    if (
        isinstance(body, Mapping)
        and isinstance(body.get("task_id"), str)
        and isinstance(body.get("key"), str)
    ):
        return body["task_id"], body["key"]
    return None


def resolve_xcomargs(value: Any, pull: XComPull) -> Any:
    """`value` with every XComArg, or JSON reference to one, replaced by `pull(task_id, key)`."""
    if isinstance(value, XComArg):
        return pull(value.operator.task_id, value.key)
    if isinstance(value, Mapping):
        ref = _reference(value)
        if ref is not None:
            return pull(*ref)
        return {key: resolve_xcomargs(item, pull) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_xcomargs(item, pull) for item in value]
    if isinstance(value, tuple):
        return tuple(resolve_xcomargs(item, pull) for item in value)
    return value
