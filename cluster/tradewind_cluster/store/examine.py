"""The store side of examining runs: lock the runs whose state may have moved, read their task
instances, and apply the core's RunExamination as compare-and-set updates.

Lock: `FOR UPDATE OF dag_run SKIP LOCKED` — one replica examines a run at a time; task
instances are then updated with state in the WHERE clause (dag_run → task_instance)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.examine import RunExamination
from tradewind.spec import DagSpec
from tradewind.states import FINISHED_TI_STATES, DagRunState, TaskInstanceState
from tradewind_cluster.store.rows import to_run_row, to_ti_row
from tradewind_cluster.store.runs import finish_run, insert_task_instances
from tradewind_cluster.store.schema import dag, dag_run, task_instance
from tradewind_cluster.store.snapshots import RunRow, TaskInstanceRow
from tradewind_cluster.store.task_instances import set_tis_state

__all__ = [
    "AppliedExamination",
    "apply_examination",
    "claim_runs_to_examine",
    "flag_dags_for_run_check",
    "previous_states",
    "tis_by_run",
]

ti = task_instance
_TI = TaskInstanceState
# A safety net: a running run is looked at again at least this often even with no event.
RECHECK_AFTER = timedelta(seconds=30)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedExamination:
    """What applying one examination changed."""

    moved: Mapping[tuple[TaskInstanceState, TaskInstanceState], int]
    scheduled_pools: frozenset[str]
    run_state: DagRunState | None  # the new state when the run finished


def claim_runs_to_examine(conn: Connection, *, now: datetime, limit: int) -> list[RunRow]:
    """Lock running runs due for examination, oldest request first (SKIP LOCKED)."""
    rows = conn.execute(
        sa.select(dag_run)
        .where(dag_run.c.state == "running", dag_run.c.examine_after <= now)
        .order_by(dag_run.c.examine_after)
        .limit(limit)
        .with_for_update(of=dag_run, skip_locked=True)
    ).mappings()
    return [to_run_row(r) for r in rows]


def tis_by_run(conn: Connection, run_pks: Sequence[int]) -> dict[int, list[TaskInstanceRow]]:
    """The task instances of each run (bounded by the DAGs' sizes)."""
    out: dict[int, list[TaskInstanceRow]] = defaultdict(list)
    if run_pks:
        for r in conn.execute(sa.select(ti).where(ti.c.run_pk.in_(run_pks))).mappings():
            row = to_ti_row(r)
            out[row.run_pk].append(row)
    return out


def previous_states(
    conn: Connection, run: RunRow, task_ids: Sequence[str]
) -> dict[str, TaskInstanceState]:
    """For depends_on_past: each task's state in the run before this one (by logical date).
    No previous run, or no instance of the task in it, passes (Airflow's default
    ignore_first_depends_on_past): such tasks are left out of the mapping."""
    if not task_ids:
        return {}
    prev = conn.execute(
        sa.select(dag_run.c.id)
        .where(dag_run.c.dag_id == run.dag_id, dag_run.c.logical_date < run.logical_date)
        .order_by(dag_run.c.logical_date.desc())
        .limit(1)
    ).scalar()
    if prev is None:
        return {}
    rows = conn.execute(
        sa.select(ti.c.task_id, ti.c.state).where(ti.c.run_pk == prev, ti.c.task_id.in_(task_ids))
    )
    return {task_id: _TI(state) for task_id, state in rows}


def _values_for(to: TaskInstanceState, now: datetime, reason: str) -> dict[str, object]:
    values: dict[str, object] = {"reason": reason}
    if to is _TI.SCHEDULED:
        values.update(scheduled_at=now, next_retry_at=None)
    elif to in FINISHED_TI_STATES:
        values["end_date"] = now
    return values


def apply_examination(
    conn: Connection,
    run: RunRow,
    spec: DagSpec,
    exam: RunExamination,
    tis: Sequence[TaskInstanceRow],
    now: datetime,
) -> AppliedExamination:
    """Apply one examination in the order RunExamination documents; stale rows are skipped."""
    if exam.to_create:
        insert_task_instances(conn, spec, [run], exam.to_create)
    by_task = {t.task_id: t for t in tis}
    if exam.to_restore:
        ids = [by_task[t].id for t in exam.to_restore if t in by_task]
        set_tis_state(conn, ids, expect=_TI.REMOVED, to=_TI.NONE)
    groups: dict[tuple[_TI, _TI, str], list[int]] = defaultdict(list)
    for d in exam.task_decisions:
        row = by_task.get(d.task_id)
        if row is not None:
            groups[(d.from_state, d.to_state, d.reason)].append(row.id)
    moved: dict[tuple[_TI, _TI], int] = defaultdict(int)
    scheduled_pools: set[str] = set()
    for (src, dst, reason), ids in groups.items():
        done = set_tis_state(conn, ids, expect=src, to=dst, values=_values_for(dst, now, reason))
        moved[(src, dst)] += len(done)
        if dst is _TI.SCHEDULED:
            scheduled_pools.update(by_task[t].pool for t in by_task if by_task[t].id in done)
    run_state: DagRunState | None = None
    if exam.run_decision is not None and finish_run(
        conn, run.id, to=exam.run_decision.to_state, now=now
    ):
        run_state = exam.run_decision.to_state
    else:
        _rearm(conn, run, spec, now)
    return AppliedExamination(
        moved=dict(moved), scheduled_pools=frozenset(scheduled_pools), run_state=run_state
    )


def _rearm(conn: Connection, run: RunRow, spec: DagSpec, now: datetime) -> None:
    """Next examination: the earliest pending retry or the run's timeout, at the latest the
    safety recheck; finished tasks re-arm it to now through their own reports."""
    deadline = now + RECHECK_AFTER
    if spec.dagrun_timeout is not None and run.start_date is not None:
        # examine_run times out strictly after the deadline: look a microsecond later
        deadline = min(deadline, run.start_date + spec.dagrun_timeout + timedelta(microseconds=1))
    next_retry = conn.execute(
        sa.select(sa.func.min(ti.c.next_retry_at)).where(
            ti.c.run_pk == run.id, ti.c.state == _TI.UP_FOR_RETRY.value
        )
    ).scalar()
    if next_retry is not None:
        deadline = min(deadline, next_retry)
    conn.execute(
        sa.update(dag_run)
        .where(dag_run.c.id == run.id, dag_run.c.state == "running")
        .values(examine_after=sa.func.greatest(deadline, now), last_examined_at=now)
    )


def flag_dags_for_run_check(conn: Connection, dag_ids: Sequence[str]) -> None:
    """A run finished: its DAG may start a queued run or create one max_active_runs held back.
    Runs in its own short transaction, after the run's, so no dag_run lock is held here."""
    if dag_ids:
        conn.execute(
            sa.update(dag).where(dag.c.dag_id.in_(sorted(set(dag_ids)))).values(check_runs=True)
        )
