"""apply_examinations: every task decision of a pass goes in one statement, each row moving only
from the state it was decided from, with the columns its new state sets."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.support.dags import register, trigger
from tests.support.factories import T0
from tradewind import DAG, BashOperator
from tradewind.errors import InvalidTransitionError
from tradewind.scheduling.examine import RunExamination, TaskDecision
from tradewind.spec import DagSpec
from tradewind.states import TaskInstanceState as TI
from tradewind_cluster.store.database import Database, DatabaseOptions
from tradewind_cluster.store.examine import Examined, apply_examinations
from tradewind_cluster.store.runs import get_run, start_queued_runs
from tradewind_cluster.store.schema import task_instance
from tradewind_cluster.store.task_instances import tis_of_run

pytestmark = pytest.mark.store


def _started_run(database: Database, dag_id: str, pool: str) -> tuple[int, DagSpec]:
    with DAG(dag_id, schedule=None, start_date=T0) as dag:
        for name in ("a", "b", "c", "d"):
            BashOperator(task_id=name, bash_command="true", pool=pool)
    spec = register(database, dag, now=T0)
    pk = trigger(database, spec, T0)
    database.transaction(lambda c: start_queued_runs(c, spec, slots=1, now=T0))
    return pk, spec


def _examined(
    database: Database, started: tuple[int, DagSpec], decisions: list[TaskDecision]
) -> Examined:
    run_pk, spec = started

    def read(conn: sa.Connection) -> Examined:
        run_id = conn.execute(
            sa.text("SELECT run_id FROM dag_run WHERE id = :id"), {"id": run_pk}
        ).scalar_one()
        row = get_run(conn, spec.dag_id, run_id)
        assert row is not None
        return Examined(
            run=row,
            spec=spec,
            exam=RunExamination(task_decisions=tuple(decisions)),
            tis={t.task_id: t for t in tis_of_run(conn, run_pk)},
        )

    return database.read(read)


def _rows(database: Database, run_pk: int) -> dict[str, sa.RowMapping]:
    rows = database.read(
        lambda c: (
            c.execute(sa.select(task_instance).where(task_instance.c.run_pk == run_pk))
            .mappings()
            .all()
        )
    )
    return {r["task_id"]: r for r in rows}


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
def test_a_pass_moves_every_run_s_decisions_and_skips_rows_that_moved_on(
    database: Database, db_url: str, prepared: bool
) -> None:
    one_run, two_run = _started_run(database, "ex1", "p1"), _started_run(database, "ex2", "p2")
    first, second = one_run[0], two_run[0]
    items = [
        _examined(
            database,
            one_run,
            [
                TaskDecision(task_id="a", from_state=TI.NONE, to_state=TI.SCHEDULED, reason="r a"),
                TaskDecision(
                    task_id="b", from_state=TI.NONE, to_state=TI.UPSTREAM_FAILED, reason="r b"
                ),
                TaskDecision(task_id="c", from_state=TI.NONE, to_state=TI.SCHEDULED, reason="r c"),
            ],
        ),
        _examined(
            database,
            two_run,
            [
                TaskDecision(task_id="a", from_state=TI.NONE, to_state=TI.SKIPPED, reason="r 2a"),
                TaskDecision(task_id="d", from_state=TI.NONE, to_state=TI.SCHEDULED, reason="r 2d"),
            ],
        ),
    ]
    # "c" of the first run moves on after it was examined: its decision is stale.
    database.transaction(
        lambda c: c.execute(
            sa.update(task_instance)
            .where(task_instance.c.run_pk == first, task_instance.c.task_id == "c")
            .values(state="removed")
        )
    )
    retry_at = T0 + timedelta(minutes=5)
    database.transaction(
        lambda c: c.execute(
            sa.update(task_instance)
            .where(task_instance.c.run_pk == first, task_instance.c.task_id == "a")
            .values(next_retry_at=retry_at)
        )
    )
    now = T0 + timedelta(seconds=30)
    applier = Database(db_url, DatabaseOptions(prepared_statements=prepared))
    try:
        applied = applier.transaction(lambda c: apply_examinations(c, items, now))
    finally:
        applier.dispose()

    assert [dict(a.moved) for a in applied] == [
        {(TI.NONE, TI.SCHEDULED): 1, (TI.NONE, TI.UPSTREAM_FAILED): 1},
        {(TI.NONE, TI.SKIPPED): 1, (TI.NONE, TI.SCHEDULED): 1},
    ]
    assert [a.scheduled_pools for a in applied] == [frozenset({"p1"}), frozenset({"p2"})]
    one, two = _rows(database, first), _rows(database, second)
    assert (one["a"]["state"], one["a"]["reason"]) == ("scheduled", "r a")
    assert one["a"]["scheduled_at"] == now
    assert one["a"]["next_retry_at"] is None
    assert one["a"]["end_date"] is None
    assert (one["b"]["state"], one["b"]["reason"], one["b"]["end_date"]) == (
        "upstream_failed", "r b", now,
    )  # fmt: skip
    assert one["b"]["scheduled_at"] is None
    assert (one["c"]["state"], one["c"]["reason"]) == ("removed", None)  # stale: untouched
    assert (one["d"]["state"], one["d"]["reason"]) == ("none", None)
    assert (two["a"]["state"], two["a"]["end_date"]) == ("skipped", now)
    assert (two["d"]["state"], two["d"]["scheduled_at"]) == ("scheduled", now)
    assert all(one[t]["updated_at"] > now for t in ("a", "b"))  # the clock, not `now`


def test_an_illegal_decision_applies_nothing(database: Database) -> None:
    started = _started_run(database, "ex3", "p1")
    item = _examined(
        database,
        started,
        [
            TaskDecision(task_id="a", from_state=TI.NONE, to_state=TI.SCHEDULED, reason="ok"),
            TaskDecision(task_id="b", from_state=TI.NONE, to_state=TI.RUNNING, reason="no"),
        ],
    )

    def attempt(conn: sa.Connection) -> set[str]:
        """Apply, then read the states in the same transaction: nothing may be written before
        the check refuses the pass."""
        with pytest.raises(InvalidTransitionError, match="'none' -> 'running'"):
            apply_examinations(conn, [item], T0)
        rows = conn.execute(
            sa.select(task_instance.c.state).where(task_instance.c.run_pk == started[0])
        )
        return {state for (state,) in rows}

    assert database.transaction(attempt) == {"none"}
