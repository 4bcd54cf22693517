"""The store side of examining runs: lock the runs whose state may have moved, read their task
instances, and apply the core's RunExamination as compare-and-set updates.

Lock: `FOR UPDATE OF dag_run SKIP LOCKED` — one replica examines a run at a time; task
instances are then updated with state in the WHERE clause (dag_run → task_instance)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind.scheduling.examine import RunExamination
from tradewind.spec import DagSpec
from tradewind.states import FINISHED_TI_STATES, DagRunState, TaskInstanceState
from tradewind_cluster.store.prepared import PreparedStatement
from tradewind_cluster.store.rows import to_run_row
from tradewind_cluster.store.runs import finish_run, insert_task_instances
from tradewind_cluster.store.schema import dag, dag_run, task_instance
from tradewind_cluster.store.snapshots import RunRow
from tradewind_cluster.store.task_instances import check_legal, set_tis_state

__all__ = [
    "AppliedExamination",
    "Claimed",
    "ExamineRow",
    "Examined",
    "ExaminedTI",
    "apply_examinations",
    "claim_runs_with_tis",
    "flag_dags_for_run_check",
    "previous_states",
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


class ExamineRow(NamedTuple):
    """What examining a run reads of each of its task instances: the columns the core judges
    on, and what applying and tracing a decision need (id, pool, try_number)."""

    id: int
    task_id: str
    state: TaskInstanceState
    try_number: int
    max_tries: int
    next_retry_at: datetime | None
    followed: tuple[str, ...] | None
    pool: str


class ExaminedTI(Protocol):
    """A task instance as applying an examination uses it (an ExamineRow or a full row)."""

    @property
    def id(self) -> int: ...
    @property
    def task_id(self) -> str: ...
    @property
    def pool(self) -> str: ...


_EXAMINE_COLUMNS = ExamineRow._fields
_STATES = {s.value: s for s in TaskInstanceState}


def _examine_row(values: Sequence[Any]) -> ExamineRow:
    ti_id, task_id, state, try_number, max_tries, retry_at, followed, pool = values
    return ExamineRow(
        ti_id,
        task_id,
        _STATES[state],
        try_number,
        max_tries,
        retry_at,
        None if followed is None else tuple(followed),
        pool,
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    """Runs locked for examination, with their DAGs' spec hashes and their task instances."""

    runs: list[RunRow]
    spec_hashes: dict[str, str]  # dag_id -> hash of its stored spec (DAGs never parsed: none)
    tis: dict[int, dict[str, ExamineRow]]  # run pk -> task id -> its task instance


_RUN_COLUMNS = tuple(c.name for c in dag_run.c)
_CLAIM = PreparedStatement(
    "tw_examine_claim",
    sa.text(
        f"""
    SELECT {", ".join(_RUN_COLUMNS)} FROM dag_run
    WHERE state = 'running' AND examine_after <= :now
    ORDER BY examine_after
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
    ),
    {"now": "timestamptz", "limit": "integer"},
)
# Read by a statement of its own, after the claim: a statement's snapshot is taken when it
# starts, before its locks are granted, so task instances read in the claiming statement could
# miss a report committed in between (the run row itself is re-read at its newest, the task
# instances are not). The pass would decide on that stale view and re-arm the run for the 30 s
# recheck over the report's "examine now": a fan-out's join waited 28 s that way in a bench run.
_HASHES_AND_TIS = PreparedStatement(
    "tw_examine_read",
    sa.text(
        f"""
    SELECT r.id, r.dag_id, sd.spec_hash, {", ".join(f"ti.{c}" for c in _EXAMINE_COLUMNS)}
    FROM dag_run AS r
    LEFT JOIN serialized_dag AS sd ON sd.dag_id = r.dag_id
    LEFT JOIN task_instance AS ti ON ti.run_pk = r.id
    WHERE r.id = ANY(CAST(:pks AS bigint[]))
    """
    ),
    {"pks": "bigint[]"},
)


def claim_runs_with_tis(conn: Connection, *, now: datetime, limit: int) -> Claimed:
    """Lock running runs due for examination, oldest request first (SKIP LOCKED); then read
    their DAGs' spec hashes and their task instances (one statement, under the locks)."""
    runs = [
        to_run_row(dict(zip(_RUN_COLUMNS, row, strict=True)))
        for row in _CLAIM.execute(conn, {"now": now, "limit": limit})
    ]
    hashes: dict[str, str] = {}
    tis: dict[int, dict[str, ExamineRow]] = defaultdict(dict)
    if runs:
        for row in _HASHES_AND_TIS.execute(conn, {"pks": [r.id for r in runs]}):
            if row[2] is not None:
                hashes[row[1]] = row[2]
            if row[3] is not None:  # a run with no task instance yet has one row of NULLs
                found = _examine_row(row[3:])
                tis[row[0]][found.task_id] = found
    return Claimed(runs=runs, spec_hashes=hashes, tis=dict(tis))


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Examined:
    """One run's examination, ready to apply."""

    run: RunRow
    spec: DagSpec
    exam: RunExamination
    tis: Mapping[str, ExaminedTI]  # by task id


def apply_examinations(
    conn: Connection, items: Sequence[Examined], now: datetime
) -> list[AppliedExamination]:
    """Apply a pass's examinations, in the order RunExamination documents, set-based across
    runs: one statement for all the pass's task decisions, one to re-arm every run left running.
    Stale rows are skipped (state in the WHERE clause). Results are in `items`' order."""
    for it in items:
        if it.exam.to_create:
            insert_task_instances(conn, it.spec, [it.run], it.exam.to_create)
    restore = [
        it.tis[task_id].id for it in items for task_id in it.exam.to_restore if task_id in it.tis
    ]
    if restore:
        set_tis_state(conn, restore, expect=_TI.REMOVED, to=_TI.NONE)
    moved, scheduled_pools = _move(conn, items, now)
    run_states: list[DagRunState | None] = [None] * len(items)
    rearm: list[tuple[int, datetime]] = []
    for i, it in enumerate(items):
        decision = it.exam.run_decision
        if decision is not None and finish_run(conn, it.run.id, to=decision.to_state, now=now):
            run_states[i] = decision.to_state
        else:
            rearm.append((it.run.id, _deadline(it.run, it.spec, now)))
    _rearm(conn, rearm, now)
    return [
        AppliedExamination(
            moved=dict(moved[i]),
            scheduled_pools=frozenset(scheduled_pools[i]),
            run_state=run_states[i],
        )
        for i in range(len(items))
    ]


# Every task decision of a pass in one statement: each row moves from its decided state only
# (a row that moved on is stale and skipped), and gets the columns its new state sets.
_MOVE = PreparedStatement(
    "tw_examine_move",
    sa.text(
        """
    UPDATE task_instance t SET
        state = m.dst, reason = m.reason, updated_at = clock_timestamp(),
        scheduled_at = CASE WHEN m.dst = 'scheduled' THEN :now ELSE t.scheduled_at END,
        next_retry_at = CASE WHEN m.dst = 'scheduled' THEN NULL ELSE t.next_retry_at END,
        end_date = CASE WHEN m.dst = ANY(CAST(:finished AS text[])) THEN :now ELSE t.end_date END
    FROM unnest(CAST(:ids AS bigint[]), CAST(:srcs AS text[]), CAST(:dsts AS text[]),
                CAST(:reasons AS text[])) AS m(id, src, dst, reason)
    WHERE t.id = m.id AND t.state = m.src
    RETURNING t.id
    """
    ),
    {
        "now": "timestamptz",
        "finished": "text[]",
        "ids": "bigint[]",
        "srcs": "text[]",
        "dsts": "text[]",
        "reasons": "text[]",
    },
)
_FINISHED = sorted(state.value for state in FINISHED_TI_STATES)


def _move(
    conn: Connection, items: Sequence[Examined], now: datetime
) -> tuple[list[dict[tuple[_TI, _TI], int]], list[set[str]]]:
    """The task decisions of every run, in one statement; per run, how many moved and the
    pools of those scheduled."""
    decided: dict[int, tuple[int, str, _TI, _TI]] = {}  # ti id -> (index in items, pool, move)
    ids: list[int] = []
    srcs: list[str] = []
    dsts: list[str] = []
    reasons: list[str] = []
    for i, it in enumerate(items):
        for d in it.exam.task_decisions:
            row = it.tis.get(d.task_id)
            if row is not None:
                check_legal(d.from_state, d.to_state)
                decided[row.id] = (i, row.pool, d.from_state, d.to_state)
                ids.append(row.id)
                srcs.append(d.from_state.value)
                dsts.append(d.to_state.value)
                reasons.append(d.reason)
    moved: list[dict[tuple[_TI, _TI], int]] = [defaultdict(int) for _ in items]
    pools: list[set[str]] = [set() for _ in items]
    if not ids:
        return moved, pools
    params = {
        "now": now, "finished": _FINISHED, "ids": ids, "srcs": srcs, "dsts": dsts,
        "reasons": reasons,
    }  # fmt: skip
    for (ti_id,) in _MOVE.execute(conn, params):
        i, pool, src, dst = decided[ti_id]
        moved[i][(src, dst)] += 1
        if dst is _TI.SCHEDULED:
            pools[i].add(pool)
    return moved, pools


def _deadline(run: RunRow, spec: DagSpec, now: datetime) -> datetime:
    """The latest next examination of a run: the safety recheck, or its timeout if sooner."""
    deadline = now + RECHECK_AFTER
    if spec.dagrun_timeout is not None and run.start_date is not None:
        # examine_run times out strictly after the deadline: look a microsecond later
        deadline = min(deadline, run.start_date + spec.dagrun_timeout + timedelta(microseconds=1))
    return deadline


_REARM = PreparedStatement(
    "tw_examine_rearm",
    sa.text(
        """
    UPDATE dag_run SET
        examine_after = greatest(
            least(
                d.deadline,
                (SELECT min(t.next_retry_at) FROM task_instance t
                 WHERE t.run_pk = d.id AND t.state = 'up_for_retry')
            ),
            :now
        ),
        last_examined_at = :now
    FROM unnest(CAST(:ids AS bigint[]), CAST(:deadlines AS timestamptz[])) AS d(id, deadline)
    WHERE dag_run.id = d.id AND dag_run.state = 'running'
    """
    ),
    {"ids": "bigint[]", "deadlines": "timestamptz[]", "now": "timestamptz"},
)


def _rearm(conn: Connection, runs: Sequence[tuple[int, datetime]], now: datetime) -> None:
    """Next examination of each run: the earliest pending retry or its deadline (the run's
    timeout, at the latest the safety recheck), in one statement; finished tasks re-arm a run
    to now through their own reports."""
    if runs:
        _REARM.execute(
            conn, {"ids": [r for r, _ in runs], "deadlines": [d for _, d in runs], "now": now}
        )


def flag_dags_for_run_check(conn: Connection, dag_ids: Sequence[str]) -> None:
    """A run finished: its DAG may start a queued run or create one max_active_runs held back.
    Runs in its own short transaction, after the run's, so no dag_run lock is held here."""
    if dag_ids:
        conn.execute(
            sa.update(dag).where(dag.c.dag_id.in_(sorted(set(dag_ids)))).values(check_runs=True)
        )
