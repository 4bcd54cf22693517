"""Dependencies between tasks: `>>`, `<<`, set_upstream/set_downstream, `chain` and
`cross_downstream`, with Airflow 2's rules for lists and for tasks of different DAGs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from tradewind.dag import DAG
from tradewind.errors import DagDefinitionError
from tradewind.xcomarg import XComArg

__all__ = ["RelationsMixin", "chain", "cross_downstream"]


def _as_tasks(obj: object) -> list[RelationsMixin]:
    """The tasks an operand of `>>` stands for: a task, an XComArg's task, or a list of those."""
    single = _as_task(obj)
    if single is not None:
        return [single]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | dict):
        return [_require_task(item) for item in obj]
    raise DagDefinitionError(
        f"Relationships can only be set between operators; received {type(obj).__name__}: {obj!r}"
    )


def _as_task(obj: object) -> RelationsMixin | None:
    if isinstance(obj, RelationsMixin):
        return obj
    if isinstance(obj, XComArg) and isinstance(obj.operator, RelationsMixin):
        return obj.operator
    return None


def _require_task(obj: object) -> RelationsMixin:
    task = _as_task(obj)
    if task is None:
        raise DagDefinitionError(
            "Relationships can only be set between operators; "
            f"received {type(obj).__name__}: {obj!r}"
        )
    return task


def _shared_dag(tasks: Sequence[RelationsMixin]) -> DAG:
    dags: dict[int, DAG] = {}
    owners: dict[int, RelationsMixin] = {}
    for task in tasks:
        if task._dag is not None:
            dags.setdefault(id(task._dag), task._dag)
            owners.setdefault(id(task._dag), task)
    if len(dags) > 1:
        described = ", ".join(
            f"{owners[key].task_id!r} (DAG {dag.dag_id!r})" for key, dag in dags.items()
        )
        raise DagDefinitionError(
            f"Tried to set relationships between tasks in more than one DAG: {described}"
        )
    if not dags:
        names = ", ".join(repr(t.task_id) for t in tasks)
        raise DagDefinitionError(
            "Tried to create relationships between tasks that don't have DAGs yet. "
            f"Set the DAG for at least one task and try again: {names}"
        )
    return next(iter(dags.values()))


class RelationsMixin:
    """Dependency wiring shared by every operator. Edges are kept as task id sets on both ends."""

    task_id: str
    upstream_task_ids: set[str]
    downstream_task_ids: set[str]
    _dag: DAG | None

    def _attach(self, dag: DAG) -> None:
        raise NotImplementedError

    @property
    def roots(self) -> list[Any]:
        """[self]: a task is its own root when it stands on the left of `>>`."""
        return [self]

    @property
    def leaves(self) -> list[Any]:
        """[self]: a task is its own leaf when it stands on the right of `>>`."""
        return [self]

    def _set_relatives(self, other: object, *, upstream: bool) -> None:
        tasks = _as_tasks(other)
        dag = _shared_dag([self, *tasks])
        if self._dag is None:
            self._attach(dag)
        for task in tasks:
            if task._dag is None:
                task._attach(dag)
            up, down = (task, self) if upstream else (self, task)
            up.downstream_task_ids.add(down.task_id)
            down.upstream_task_ids.add(up.task_id)

    def set_upstream(self, other: object) -> None:
        """Make `other` (a task, an XComArg or a list of them) run before this task."""
        self._set_relatives(other, upstream=True)

    def set_downstream(self, other: object) -> None:
        """Make `other` (a task, an XComArg or a list of them) run after this task."""
        self._set_relatives(other, upstream=False)

    def __rshift__(self, other: Any) -> Any:
        self.set_downstream(other)
        return other

    def __lshift__(self, other: Any) -> Any:
        self.set_upstream(other)
        return other

    def __rrshift__(self, other: Any) -> Any:
        # [a, b] >> self: lists have no >>, so Python asks the right-hand side.
        self.set_upstream(other)
        return self

    def __rlshift__(self, other: Any) -> Any:
        self.set_downstream(other)
        return self

    def _relative(self, task_id: str) -> RelationsMixin:
        assert self._dag is not None  # only tasks in a DAG have relatives
        return self._dag.task_dict[task_id]

    @property
    def upstream_list(self) -> list[Any]:
        """The direct upstream tasks."""
        return [self._relative(tid) for tid in sorted(self.upstream_task_ids)]

    @property
    def downstream_list(self) -> list[Any]:
        """The direct downstream tasks."""
        return [self._relative(tid) for tid in sorted(self.downstream_task_ids)]

    def get_direct_relative_ids(self, upstream: bool = False) -> set[str]:
        """The ids of the direct upstream (or downstream) tasks."""
        return set(self.upstream_task_ids if upstream else self.downstream_task_ids)

    def get_flat_relative_ids(self, upstream: bool = False) -> set[str]:
        """The ids of every ancestor (upstream=True) or every descendant, each once."""
        if self._dag is None:
            return set()
        found: set[str] = set()
        stack = [self]
        while stack:
            task = stack.pop()
            for tid in task.upstream_task_ids if upstream else task.downstream_task_ids:
                if tid not in found:
                    found.add(tid)
                    stack.append(self._relative(tid))
        return found

    def get_flat_relatives(self, upstream: bool = False) -> list[Any]:
        """Every ancestor (upstream=True) or every descendant, sorted by task id."""
        return [self._relative(tid) for tid in sorted(self.get_flat_relative_ids(upstream))]


def chain(*tasks: Any) -> None:
    """Wire each argument to the next, as Airflow's chain: a task or XComArg links to all of
    its neighbour; two lists of equal length link pairwise."""
    for up, down in itertools.pairwise(tasks):
        up_task = _as_task(up)
        if up_task is not None:
            up_task.set_downstream(down)
            continue
        down_task = _as_task(down)
        if down_task is not None:
            down_task.set_upstream(up)
            continue
        if not isinstance(up, Sequence) or not isinstance(down, Sequence):
            raise DagDefinitionError(
                f"Chain not supported between instances of {type(up).__name__} "
                f"and {type(down).__name__}"
            )
        if len(up) != len(down):
            raise DagDefinitionError(
                f"Chain not supported for different length Iterable. Got {len(up)} and {len(down)}."
            )
        for up_task, down_task in zip(up, down, strict=True):
            _require_task(up_task).set_downstream(down_task)


def cross_downstream(from_tasks: Iterable[Any], to_tasks: Any) -> None:
    """Make every task of `to_tasks` downstream of every task of `from_tasks`."""
    for task in _as_tasks(list(from_tasks)):
        task.set_downstream(to_tasks)
