"""Following one DAG run until it finishes (`dags trigger --wait`): a rich progress display of
its task instances' states on stderr, so that stdout keeps only the run id and the outcome."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tradewind.states import FINISHED_TI_STATES
from tradewind_cluster.store.database import Connection, Database
from tradewind_cluster.store.listing import TaskState, find_run, task_states
from tradewind_cluster.store.snapshots import RunRow

__all__ = ["describe_states", "follow_run"]

_ORDER = (
    "success",
    "running",
    "queued",
    "scheduled",
    "up_for_retry",
    "none",
    "failed",
    "upstream_failed",
    "skipped",
    "removed",
)
_FINISHED = frozenset(s.value for s in FINISHED_TI_STATES)
_RUN_DONE = frozenset({"success", "failed"})


def describe_states(states: Sequence[TaskState]) -> str:
    """'success 3 · running 1 · none 2': the task instances per state, in a stable order."""
    counts = Counter(s.state for s in states)
    return " · ".join(f"{name} {counts[name]}" for name in _ORDER if counts[name])


def _snapshot(conn: Connection, dag_id: str, run_id: str) -> tuple[RunRow, list[TaskState]]:
    run = find_run(conn, dag_id, run_id=run_id)
    if run is None:  # pragma: no cover - runs are never deleted while followed
        raise LookupError(f"run {run_id} of DAG {dag_id} disappeared")
    return run, task_states(conn, run.id)


def follow_run(
    db: Database, dag_id: str, run_id: str, *, poll_s: float = 0.25, console: Console | None = None
) -> str:
    """Poll the run until it is success or failed; returns that state."""
    console = console or Console(stderr=True)
    columns = (
        TextColumn("[bold]{task.fields[run_state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("waiting for the run to start", total=None, run_state="queued")
        while True:
            run, states = db.read(lambda c: _snapshot(c, dag_id, run_id))
            done = sum(1 for s in states if s.state in _FINISHED)
            progress.update(
                bar,
                total=len(states) or None,
                completed=done,
                description=describe_states(states) or "waiting for the run to start",
                run_state=run.state.value,
            )
            if run.state.value in _RUN_DONE:
                return run.state.value
            time.sleep(poll_s)
