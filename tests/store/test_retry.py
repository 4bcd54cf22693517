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
