"""Hot statements as server-side prepared statements: the same results as the plain text, one
PREPARE per session, a fresh one after the session was replaced, and off on request."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tradewind_cluster.store.database import Database, DatabaseOptions
from tradewind_cluster.store.prepared import PreparedStatement

pytestmark = pytest.mark.store

_STATEMENT = PreparedStatement(
    "tw_test_sum",
    sa.text("SELECT CAST(:a AS bigint) + :b AS total, :tags AS tags, CAST(:a AS text) AS again"),
    {"a": "bigint", "b": "bigint", "tags": "text[]"},
)


def _prepared(conn: sa.Connection) -> list[str]:
    rows = conn.exec_driver_sql("SELECT name FROM pg_prepared_statements ORDER BY name")
    return [r[0] for r in rows]


def _run(conn: sa.Connection, a: int, tags: list[str]) -> tuple[int, list[str], str]:
    row = _STATEMENT.execute(conn, {"a": a, "b": 2, "tags": tags}).one()
    return row.total, row.tags, row.again


def test_a_statement_is_prepared_once_per_session_with_the_same_results(
    database: Database,
) -> None:
    with database.autocommit_engine.connect() as conn:
        assert _prepared(conn) == []
        assert _run(conn, 40, ["x", "y"]) == (42, ["x", "y"], "40")
        assert _run(conn, 1, []) == (3, [], "1")  # an empty array, a NULL-free second run
        assert _prepared(conn) == ["tw_test_sum"]
    with database.engine.connect() as conn:  # a rolled-back transaction keeps the statement
        with conn.begin() as tx:
            assert _run(conn, 2, ["z"]) == (4, ["z"], "2")
            tx.rollback()
        assert _run(conn, 5, ["z"]) == (7, ["z"], "5")
        assert _prepared(conn) == ["tw_test_sum"]


def test_a_replaced_session_prepares_again(database: Database, db_url: str) -> None:
    with database.autocommit_engine.connect() as conn:
        assert _run(conn, 1, []) == (3, [], "1")
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    killer = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    with killer.connect() as other:
        other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    killer.dispose()
    # The pool hands out the same connection, now dead: the store's retry gets a new session,
    # which has none of the old session's statements, and prepares again.
    assert database.statement(lambda c: _run(c, 7, ["a"])) == (9, ["a"], "7")
    assert database.read(_prepared) == ["tw_test_sum"]


def test_off_runs_the_plain_statement(db_url: str) -> None:
    db = Database(db_url, DatabaseOptions(prepared_statements=False))
    try:
        with db.autocommit_engine.connect() as conn:
            assert _run(conn, 40, ["x"]) == (42, ["x"], "40")
            assert _prepared(conn) == []
    finally:
        db.dispose()


def test_a_statement_without_parameters(database: Database) -> None:
    bare = PreparedStatement("tw_test_bare", sa.text("SELECT 41 + 1 AS answer"), {})
    assert database.read(lambda c: bare.execute(c, {}).scalar()) == 42
    assert "tw_test_bare" in database.read(_prepared)


def test_the_loops_own_reads_answer_through_their_prepared_statements(
    database: Database,
) -> None:
    """Each runs on every pass (or every idle wait), prepared: they must answer."""
    from datetime import UTC, datetime

    from tradewind_cluster.store import dags, queueing

    now = datetime.now(UTC)
    assert database.read(lambda c: dags.next_due_at(c)) is None  # no DAG, no run
    assert database.read(lambda c: dags.any_due_dags(c, now=now)) is False
    assert database.read(lambda c: queueing.pools_with_scheduled(c)) == []
    assert {"tw_next_due_at", "tw_any_due_dags", "tw_pools_with_scheduled"} <= set(
        database.read(_prepared)
    )


def test_every_parameter_needs_its_type() -> None:
    with pytest.raises(ValueError, match=r"parameters \['a', 'b'\] but types for \['a'\]"):
        PreparedStatement("tw_bad", sa.text("SELECT :a + :b"), {"a": "int"})
