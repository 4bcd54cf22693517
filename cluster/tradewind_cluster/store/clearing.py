"""Clearing and marking task instances by hand (Airflow's `tasks clear` and mark success/failed).

Clearing sets task instances back to none with max_tries = try_number + retries, as Airflow's
clear_task_instances, and their runs back to queued so the schedulers start and examine them
again. An attempt that is queued or running is not reset to none at once: its task instance
becomes up_for_retry (Airflow: restarting) until the worker has certainly stopped it — its
next heartbeat is told the attempt is unwanted, and a partitioned worker kills it when its
lease runs out — so two attempts of one task instance never run at once.

Lock order: dag (check_runs) → dag_run (FOR UPDATE, ordered by id) → task_instance
(FOR UPDATE, ordered by id); every change is a compare-and-set on the locked state."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.errors import BadInputError, StaleError
from tradewind.states import DagRunState, TaskInstanceState, can_transition
from tradewind_cluster.store.notify import notify
from tradewind_cluster.store.schema import dag, dag_run, task_instance

__all__ = [
    "ClearResult",
    "ClearTarget",
    "MarkResult",
    "clear_task_instances",
    "find_clear_targets",
    "mark_task_instance",
]

ti = task_instance
_ACTIVE = ("queued", "running")
_RESETTABLE = frozenset(
    {"none", "scheduled", "up_for_retry", "success", "failed", "skipped", "upstream_failed"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearTarget:
    """A task instance a clear would touch, as it was when listed."""

    ti_id: int
    run_pk: int
    dag_id: str
    run_id: str
    task_id: str
    logical_date: datetime
    state: str
    try_number: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearResult:
    """How many task instances went back to none, how many in-flight attempts were made
    unwanted (up_for_retry until stopped), and how many runs went back to queued."""

    reset: int
    restarting: int
    runs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkResult:
    """What marking one task instance did."""

    previous: str
    changed: bool
    cleared_downstream: tuple[str, ...]
    run_state: str


def find_clear_targets(
    conn: Connection,
    dag_id: str,
    *,
    task_ids: Sequence[str],
    start: datetime | None = None,
    end: datetime | None = None,
    states: Sequence[str] | None = None,
    run_pk: int | None = None,
    limit: int = 10_000,
) -> list[ClearTarget]:
    """Task instances of `task_ids` whose logical date is within [start, end] (inclusive, as
    Airflow), optionally only in `states` or of one run; removed ones are never cleared."""
    if not task_ids:
        return []
    q = sa.select(
        ti.c.id,
        ti.c.run_pk,
        ti.c.dag_id,
        ti.c.run_id,
        ti.c.task_id,
        ti.c.logical_date,
        ti.c.state,
        ti.c.try_number,
    ).where(ti.c.dag_id == dag_id, ti.c.task_id.in_(list(task_ids)), ti.c.state != "removed")
    if start is not None:
        q = q.where(ti.c.logical_date >= start)
    if end is not None:
        q = q.where(ti.c.logical_date <= end)
    if states is not None:
        q = q.where(ti.c.state.in_(list(states)))
    if run_pk is not None:
        q = q.where(ti.c.run_pk == run_pk)
    rows = conn.execute(q.order_by(ti.c.logical_date, ti.c.task_id).limit(limit)).mappings()
    return [
        ClearTarget(
            ti_id=r["id"],
            run_pk=r["run_pk"],
            dag_id=r["dag_id"],
            run_id=r["run_id"],
            task_id=r["task_id"],
            logical_date=r["logical_date"],
            state=r["state"],
            try_number=r["try_number"],
        )
        for r in rows
    ]


def _flag_dags(conn: Connection, dag_ids: Sequence[str]) -> None:
    # First in the lock order: the dag row, so that schedulers start the queued runs.
    conn.execute(
        sa.update(dag).where(dag.c.dag_id.in_(sorted(set(dag_ids)))).values(check_runs=True)
    )


def _lock_runs(conn: Connection, run_pks: Sequence[int]) -> None:
    # Waits (briefly) for an examiner holding a run: a clear must not be skipped.
    conn.execute(
        sa.select(dag_run.c.id)
        .where(dag_run.c.id.in_(sorted(set(run_pks))))
        .order_by(dag_run.c.id)
        .with_for_update(of=dag_run)
    ).all()


def _lock_tis(conn: Connection, ti_ids: Sequence[int]) -> dict[int, tuple[str, str, int]]:
    rows = conn.execute(
        sa.select(ti.c.id, ti.c.state, ti.c.task_id, ti.c.run_pk)
        .where(ti.c.id.in_(sorted(set(ti_ids))))
        .order_by(ti.c.id)
        .with_for_update(of=ti)
    ).all()
    return {r.id: (r.state, r.task_id, r.run_pk) for r in rows}


def _reset_values(
    state: str, retries: int, now: datetime, restart_after: timedelta
) -> dict[str, object]:
    values: dict[str, object] = {
        "max_tries": ti.c.try_number + retries,
        "updated_at": now,
        "followed": None,
    }
    if state in _ACTIVE:
        values.update(
            state=TaskInstanceState.UP_FOR_RETRY.value,
            next_retry_at=now + restart_after,
            reason="cleared while queued or running: restarts once its worker has stopped it",
        )
    else:
        values.update(state=TaskInstanceState.NONE.value, next_retry_at=None, reason="cleared")
    return values


def _apply_clear(
    conn: Connection,
    locked: Mapping[int, tuple[str, str, int]],
    *,
    retries: Mapping[str, int],
    now: datetime,
    restart_after: timedelta,
) -> tuple[int, int, set[int]]:
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for ti_id, (state, task_id, _run) in locked.items():
        if state in _ACTIVE or state in _RESETTABLE:
            groups[(state, retries.get(task_id, 0))].append(ti_id)
    reset = restarting = 0
    runs: set[int] = set()
    for (state, n), ids in sorted(groups.items()):
        done = conn.execute(
            sa.update(ti)
            .where(ti.c.id.in_(ids), ti.c.state == state)
            .values(**_reset_values(state, n, now, restart_after))
            .returning(ti.c.run_pk)
        ).all()
        runs.update(r.run_pk for r in done)
        if state in _ACTIVE:
            restarting += len(done)
        else:
            reset += len(done)
    return reset, restarting, runs


def _queue_runs(conn: Connection, run_pks: set[int], now: datetime) -> int:
    # Airflow's clear sets the runs back to queued: the schedulers start them again within
    # max_active_runs, and the run's state is decided afresh.
    if not run_pks:
        return 0
    result = conn.execute(
        sa.update(dag_run)
        .where(dag_run.c.id.in_(sorted(run_pks)))
        .values(
            state=DagRunState.QUEUED.value,
            queued_at=now,
            start_date=None,
            end_date=None,
            examine_after=None,
        )
    )
    return int(result.rowcount)


def clear_task_instances(
    conn: Connection,
    targets: Sequence[ClearTarget],
    *,
    retries: Mapping[str, int],
    now: datetime,
    restart_after: timedelta,
) -> ClearResult:
    """Clear the listed task instances (see the module docstring); `retries` maps task id to
    its task's retries, `restart_after` is how long a worker may still run an unwanted attempt
    (its lease plus margin). Task instances that moved on since they were listed are cleared
    in the state they are in now."""
    if not targets:
        return ClearResult(reset=0, restarting=0, runs=0)
    _flag_dags(conn, [t.dag_id for t in targets])
    _lock_runs(conn, [t.run_pk for t in targets])
    locked = _lock_tis(conn, [t.ti_id for t in targets])
    reset, restarting, runs = _apply_clear(
        conn, locked, retries=retries, now=now, restart_after=restart_after
    )
    queued = _queue_runs(conn, runs, now)
    notify(conn, "runs")
    return ClearResult(reset=reset, restarting=restarting, runs=queued)


def _revive_run(conn: Connection, run_pk: int, now: datetime) -> str:
    """Have the run examined again: at once when running, and a finished run goes back to
    running so that its state follows its task instances again."""
    row = conn.execute(
        sa.update(dag_run)
        .where(dag_run.c.id == run_pk, dag_run.c.state != DagRunState.QUEUED.value)
        .values(
            state=DagRunState.RUNNING.value,
            examine_after=now,
            start_date=sa.case(
                (dag_run.c.state == DagRunState.RUNNING.value, dag_run.c.start_date), else_=now
            ),
            end_date=None,
        )
        .returning(dag_run.c.state)
    ).first()
    notify(conn, "examine")
    return DagRunState.RUNNING.value if row is not None else DagRunState.QUEUED.value


def _check_mark(task_id: str, state: str, to: TaskInstanceState) -> None:
    if not can_transition(TaskInstanceState(state), to):
        raise BadInputError(f"task instance {task_id!r} is {state}: it cannot be marked {to}")


def mark_task_instance(
    conn: Connection,
    target: ClearTarget,
    *,
    to: TaskInstanceState,
    downstream: Sequence[ClearTarget],
    retries: Mapping[str, int],
    now: datetime,
    restart_after: timedelta,
) -> MarkResult:
    """Set one task instance to success or failed (compare-and-set on the state it was listed
    in: StaleError when it moved meanwhile). As Airflow's set_task_instance_state, its failed
    and upstream_failed downstream task instances in `downstream` are cleared (their run goes
    back to queued); otherwise the run is examined again. A running attempt of the marked task
    instance is killed by its worker at its next heartbeat."""
    if target.state == to.value:
        return MarkResult(previous=target.state, changed=False, cleared_downstream=(), run_state="")
    _check_mark(target.task_id, target.state, to)
    _flag_dags(conn, [target.dag_id])
    _lock_runs(conn, [target.run_pk])
    locked = _lock_tis(conn, [target.ti_id, *(d.ti_id for d in downstream)])
    moved = conn.execute(
        sa.update(ti)
        .where(ti.c.id == target.ti_id, ti.c.state == target.state)
        .values(
            state=to.value,
            end_date=now,
            next_retry_at=None,
            updated_at=now,
            reason=f"marked {to} by hand",
        )
        .returning(ti.c.id)
    ).first()
    if moved is None:
        now_state = locked.get(target.ti_id, ("gone",))[0]
        raise StaleError(
            f"task instance {target.task_id!r} of run {target.run_id!r} moved from "
            f"{target.state} to {now_state} meanwhile; nothing was changed"
        )
    failed = {
        i: row
        for i, row in locked.items()
        if i != target.ti_id and row[0] in ("failed", "upstream_failed")
    }
    _, _, runs = _apply_clear(conn, failed, retries=retries, now=now, restart_after=restart_after)
    if runs:
        _queue_runs(conn, runs, now)
        notify(conn, "runs")
        run_state = DagRunState.QUEUED.value
    else:
        run_state = _revive_run(conn, target.run_pk, now)
    cleared = tuple(sorted(locked[i][1] for i in failed))
    return MarkResult(
        previous=target.state, changed=True, cleared_downstream=cleared, run_state=run_state
    )
