"""Compare-and-set: a change applies only where state (and token) are still what the caller saw."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.errors import InvalidTransitionError
from tradewind.states import TaskInstanceState as TI
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.task_instances import get_ti, set_ti_state, set_tis_state

pytestmark = pytest.mark.store


@pytest.fixture
def running_ti(database: Database) -> int:
    def _setup(conn: sa.Connection) -> int:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        return insert_ti(conn, run, "t", state="running", token=7)

    return database.transaction(_setup)


def test_current_token_applies(database: Database, running_ti: int) -> None:
    applied = database.transaction(
        lambda c: set_ti_state(c, running_ti, expect=TI.RUNNING, to=TI.SUCCESS, token=7)
    )
    assert applied is True
    row = database.read(lambda c: get_ti(c, running_ti))
    assert row is not None
    assert row.state is TI.SUCCESS


def test_stale_token_is_refused_and_changes_nothing(database: Database, running_ti: int) -> None:
    applied = database.transaction(
        lambda c: set_ti_state(c, running_ti, expect=TI.RUNNING, to=TI.FAILED, token=6)
    )
    assert applied is False
    row = database.read(lambda c: get_ti(c, running_ti))
    assert row is not None
    assert (row.state, row.token) == (TI.RUNNING, 7)


def test_wrong_expected_state_is_refused(database: Database, running_ti: int) -> None:
    applied = database.transaction(
        lambda c: set_ti_state(c, running_ti, expect=TI.QUEUED, to=TI.RUNNING, token=7)
    )
    assert applied is False


def test_illegal_transition_never_reaches_sql(database: Database, running_ti: int) -> None:
    with pytest.raises(InvalidTransitionError, match="'running' -> 'queued'"):
        database.transaction(
            lambda c: set_ti_state(c, running_ti, expect=TI.RUNNING, to=TI.QUEUED, token=7)
        )


def test_batch_moves_only_rows_still_in_the_expected_state(database: Database) -> None:
    def _setup(conn: sa.Connection) -> list[int]:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        return [
            insert_ti(conn, run, "a", state="scheduled"),
            insert_ti(conn, run, "b", state="scheduled"),
            insert_ti(conn, run, "c", state="running"),
        ]

    ids = database.transaction(_setup)
    moved = database.transaction(lambda c: set_tis_state(c, ids, expect=TI.SCHEDULED, to=TI.QUEUED))
    assert sorted(moved) == sorted(ids[:2])
