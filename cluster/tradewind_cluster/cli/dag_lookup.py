"""Finding the DAG (and its serialized spec) a command names, with one clear error when the
schedulers do not know it, and the task ids a regex with --upstream / --downstream selects."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from tradewind.errors import BadInputError
from tradewind.serialization import spec_from_dict
from tradewind.spec import DagSpec, TaskSpec
from tradewind_cluster.cli.dates import parse_date
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.listing import DagInfo, find_run, get_dag
from tradewind_cluster.store.serialized import spec_payloads
from tradewind_cluster.store.snapshots import RunRow

__all__ = [
    "as_date",
    "relatives",
    "require_dag",
    "require_run",
    "require_spec",
    "require_task",
    "select_tasks",
]


def require_dag(conn: Connection, dag_id: str, *, active: bool = True) -> DagInfo:
    """The DAG's row; BadInputError when it is unknown (or, with `active`, gone from its file)."""
    info = get_dag(conn, dag_id)
    if info is None:
        raise BadInputError(
            f"DAG {dag_id!r} not found (`tradewind dags list` shows the DAGs the schedulers "
            "have parsed)"
        )
    if active and not info.is_active:
        raise BadInputError(
            f"DAG {dag_id!r} is no longer defined by {info.fileloc} (it is inactive)"
        )
    return info


def require_spec(conn: Connection, dag_id: str, *, active: bool = True) -> tuple[DagInfo, DagSpec]:
    """The DAG's row and its deserialized spec, as the schedulers see it."""
    info = require_dag(conn, dag_id, active=active)
    row = spec_payloads(conn, [dag_id]).get(dag_id)
    if row is None:
        raise BadInputError(f"DAG {dag_id!r} has not been serialized yet; try again shortly")
    return info, spec_from_dict(row.data)


def relatives(spec: DagSpec, task_ids: Iterable[str], *, upstream: bool) -> set[str]:
    """Every task upstream (or downstream) of `task_ids`, transitively, the ids excluded."""
    found: set[str] = set()
    stack = [t for t in task_ids if t in spec.tasks]
    while stack:
        task = spec.tasks[stack.pop()]
        for other in task.upstream_task_ids if upstream else task.downstream_task_ids:
            if other not in found:
                found.add(other)
                stack.append(other)
    return found


def select_tasks(
    spec: DagSpec, regex: str | None, *, upstream: bool = False, downstream: bool = False
) -> list[str]:
    """Task ids matching `regex` anywhere in the id (Airflow's re.findall), plus their upstream
    and / or downstream relatives, in the DAG's topological order."""
    if regex is None:
        chosen = set(spec.tasks)
    else:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise BadInputError(f"bad task regex {regex!r}: {exc}") from None
        chosen = {t for t in spec.tasks if pattern.search(t)}
    extra: set[str] = set()
    if upstream:
        extra |= relatives(spec, chosen, upstream=True)
    if downstream:
        extra |= relatives(spec, chosen, upstream=False)
    chosen |= extra
    return [t for t in spec.tasks if t in chosen]


def as_date(text: str, timezone: str) -> datetime | None:
    """`text` as a date when it reads as one (a run id usually does not), else None."""
    try:
        return parse_date(text, timezone=timezone)
    except BadInputError:
        return None


def require_run(conn: Connection, dag_id: str, run_id_or_date: str, timezone: str) -> RunRow:
    """A run named by its run id or its logical date (Airflow's execution_date_or_run_id)."""
    logical = as_date(run_id_or_date, timezone)
    run = find_run(conn, dag_id, run_id=run_id_or_date, logical_date=logical)
    if run is None:
        raise BadInputError(
            f"DagRun for {dag_id} with run_id or logical date of {run_id_or_date!r} not found"
        )
    return run


def require_task(spec: DagSpec, task_id: str) -> TaskSpec:
    """The task of the spec; BadInputError naming the DAG when it has no such task."""
    task = spec.tasks.get(task_id)
    if task is None:
        raise BadInputError(f"DAG {spec.dag_id!r} has no task {task_id!r}")
    return task
