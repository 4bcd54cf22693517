"""A transaction whose connection is killed mid-way is retried as a whole and applied once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tradewind.errors import SchemaError
from tradewind_cluster.store.database import Database, is_transient

pytestmark = pytest.mark.store


def test_terminated_backend_mid_transaction_completes_exactly_once(database: Database) -> None:
    calls: list[int] = []

    def work(conn: sa.Connection) -> int:
        calls.append(1)
        conn.execute(sa.text("INSERT INTO variable (key, val) VALUES ('once', 'x')"))
        if len(calls) == 1:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with database.engine.connect() as killer:
                killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                killer.commit()
        conn.execute(sa.text("UPDATE variable SET val = 'y' WHERE key = 'once'"))
        return len(calls)

    assert database.transaction(work) == 2
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT val FROM variable WHERE key = 'once'")).all()
    assert rows == [("y",)]


def test_non_transient_errors_are_not_retried(database: Database) -> None:
    calls: list[int] = []

    def work(conn: sa.Connection) -> None:
        calls.append(1)
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(SchemaError, match="run `tradewind db upgrade`") as info:
        database.transaction(work)
    assert isinstance(info.value.__cause__, sa.exc.ProgrammingError)
    assert not is_transient(info.value.__cause__)
    assert calls == [1]


def test_read_runs_without_a_transaction_and_leaves_the_connection_transactional(
    database: Database,
) -> None:
    def xids(conn: sa.Connection) -> tuple[object, object]:
        first = conn.execute(sa.text("SELECT txid_current()")).scalar()  # assigns an id
        return first, conn.execute(sa.text("SELECT pg_current_xact_id_if_assigned()")).scalar()

    # each statement of a read commits on its own: the second runs in a new transaction
    first, second = database.read(xids)
    assert first is not None
    assert second is None
    # in a transaction both statements share one
    first, second = database.transaction(xids)
    assert str(first) == str(second)

    def write(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO variable (key, val) VALUES ('tx', 'x')"))
        raise RuntimeError("roll back")

    # the pooled connection goes back to transactions: a failed write leaves nothing behind
    with pytest.raises(RuntimeError):
        database.transaction(write)
    assert (
        database.read(lambda c: c.execute(sa.text("SELECT count(*) FROM variable")).scalar()) == 0
    )


def test_a_backend_killed_while_pooled_is_replaced_without_pre_ping(database: Database) -> None:
    pid = database.read(lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    other = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
    with other.connect() as killer:
        killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        killer.commit()
    other.dispose()
    backend = database.transaction(
        lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    )
    assert backend != pid
