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


def _pinned(database: Database) -> Database:
    """The same database through a one-connection autocommit pool: every call meets the
    session whose statements a test tampers with."""
    pinned = Database(database.url, DatabaseOptions(pool_size=1, max_overflow=0))
    pinned.read(lambda c: c.exec_driver_sql("SELECT 1"))
    return pinned


def test_a_statement_dropped_from_the_session_is_prepared_again(database: Database) -> None:
    db = _pinned(database)
    try:
        assert db.statement(lambda c: _run(c, 1, [])) == (3, [], "1")
        db.read(lambda c: c.exec_driver_sql("DEALLOCATE tw_test_sum"))  # behind its back
        assert db.statement(lambda c: _run(c, 2, ["b"])) == (4, ["b"], "2")  # retried
        assert "tw_test_sum" in db.read(_prepared)
    finally:
        db.dispose()


def test_a_name_the_session_already_holds_is_replaced(database: Database) -> None:
    db = _pinned(database)
    try:
        db.read(lambda c: c.exec_driver_sql("PREPARE tw_test_sum AS SELECT 'someone else'"))
        assert db.statement(lambda c: _run(c, 5, ["x"])) == (7, ["x"], "5")
    finally:
        db.dispose()


def test_a_statement_whose_table_changed_shape_is_prepared_again(database: Database) -> None:
    """A migration that adds a column, while a scheduler holds a statement reading `*` of
    that table: PostgreSQL refuses the old plan; the statement is deallocated and prepared."""
    db = _pinned(database)
    star = PreparedStatement(
        "tw_test_star", sa.text("SELECT * FROM tw_shape WHERE a = :a"), {"a": "int"}
    )
    try:
        db.read(
            lambda c: c.exec_driver_sql(
                "CREATE TABLE tw_shape (a int); INSERT INTO tw_shape VALUES (1)"
            )
        )
        assert db.statement(lambda c: list(star.execute(c, {"a": 1}).one())) == [1]
        db.read(lambda c: c.exec_driver_sql("ALTER TABLE tw_shape ADD COLUMN b int DEFAULT 2"))
        assert db.statement(lambda c: list(star.execute(c, {"a": 1}).one())) == [1, 2]
    finally:
        db.dispose()


def test_parameters_are_read_as_sqlalchemy_reads_them(database: Database) -> None:
    """Casts, string literals, escaped colons and percent signs: the prepared text is what
    the plain statement sends, with $n for each parameter."""
    odd = PreparedStatement(
        "tw_test_odd",
        sa.text(r"SELECT CAST(:a AS int), 'x:y', :a, 'a%' LIKE 'a%', '\:not' WHERE :b"),
        {"a": "int", "b": "boolean"},
    )
    assert odd._prepare == (
        "PREPARE tw_test_odd (int, boolean) AS "
        "SELECT CAST($1 AS int), 'x:y', $1, 'a%' LIKE 'a%', ':not' WHERE $2"
    )
    row = database.read(lambda c: tuple(odd.execute(c, {"a": 4, "b": True}).one()))
    assert row == (4, "x:y", 4, True, ":not")


def test_every_parameter_needs_its_type() -> None:
    with pytest.raises(ValueError, match=r"parameters \['a', 'b'\] but types for \['a'\]"):
        PreparedStatement("tw_bad", sa.text("SELECT :a + :b"), {"a": "int"})


_ROWS = PreparedStatement(
    "tw_test_rows",
    sa.text(
        "SELECT n, n * 2 AS twice, CAST(:tag AS text) AS tag"
        " FROM generate_series(1, CAST(:upto AS int)) AS n ORDER BY n"
    ),
    {"tag": "text", "upto": "integer"},
)


@pytest.mark.parametrize("way", ["prepared", "plain", "observed"])
def test_rows_read_the_same_whichever_way_the_statement_ran(
    database: Database, db_url: str, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prepared on the driver's cursor, plain text through SQLAlchemy, or prepared through
    SQLAlchemy while a listener watches its statement events (which then sees EXECUTE)."""
    prepared = way != "plain"
    if way == "prepared":  # EXECUTE must not take SQLAlchemy's path (PREPARE may)
        through = sa.engine.Connection.exec_driver_sql

        def refuse_execute(self, statement, *args, **kwargs):  # type: ignore[no-untyped-def]
            assert not statement.startswith("EXECUTE"), statement
            return through(self, statement, *args, **kwargs)

        monkeypatch.setattr(sa.engine.Connection, "exec_driver_sql", refuse_execute)
    db = database if prepared else Database(db_url, DatabaseOptions(prepared_statements=False))
    seen: list[str] = []

    def watch(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        seen.append(statement)

    if way == "observed":
        sa.event.listen(db.autocommit_engine, "before_cursor_execute", watch)
    try:
        three = db.read(lambda c: _ROWS.execute(c, {"tag": "t", "upto": 3}))
        none = db.read(lambda c: _ROWS.execute(c, {"tag": "t", "upto": 0}))
        assert db.read(_prepared) == (["tw_test_rows"] if prepared else [])
    finally:
        if way == "observed":
            sa.event.remove(db.autocommit_engine, "before_cursor_execute", watch)
        if not prepared:
            db.dispose()
    executes = [s for s in seen if s.startswith("EXECUTE tw_test_rows")]
    assert len(executes) == (2 if way == "observed" else 0)
    assert [tuple(r) for r in three] == [(1, 2, "t"), (2, 4, "t"), (3, 6, "t")]
    assert len(three) == 3
    first = three.first()
    assert (first.n, first.twice, first.tag) == (1, 2, "t")
    assert first._asdict() == {"n": 1, "twice": 2, "tag": "t"}
    assert three.scalar() == 1
    assert three.mappings()[2] == {"n": 3, "twice": 6, "tag": "t"}
    assert [r.twice for r in three.all()] == [2, 4, 6]
    with pytest.raises(sa.exc.MultipleResultsFound):
        three.one()
    assert (none.first(), none.scalar(), none.all(), none.mappings()) == (None, None, [], [])
    with pytest.raises(sa.exc.NoResultFound):
        none.one()


def test_a_statement_that_returns_no_rows(database: Database) -> None:
    database.read(lambda c: c.exec_driver_sql("CREATE TABLE tw_no_rows (a int)"))
    try:
        insert = PreparedStatement(
            "tw_test_insert", sa.text("INSERT INTO tw_no_rows VALUES (:a)"), {"a": "integer"}
        )
        assert database.statement(lambda c: insert.execute(c, {"a": 1}).all()) == []
        count = database.read(lambda c: c.exec_driver_sql("SELECT count(*) FROM tw_no_rows"))
        assert count.scalar() == 1
    finally:
        database.read(lambda c: c.exec_driver_sql("DROP TABLE tw_no_rows"))


def test_a_server_error_is_raised_as_sqlalchemy_raises_it(database: Database) -> None:
    divide = PreparedStatement(
        "tw_test_divide", sa.text("SELECT 1 / CAST(:d AS int) AS q"), {"d": "integer"}
    )
    with database.engine.connect() as conn:
        with pytest.raises(sa.exc.DataError) as raised, conn.begin():
            divide.execute(conn, {"d": 0})
        assert getattr(raised.value.orig, "pgcode", None) == "22012"  # division_by_zero
        assert "EXECUTE tw_test_divide" in str(raised.value.statement)
        assert not conn.invalidated
        with conn.begin():  # the failed transaction was rolled back; the session goes on
            assert divide.execute(conn, {"d": 2}).scalar() == 0


def test_a_lost_session_invalidates_the_connection(database: Database, db_url: str) -> None:
    with database.engine.connect() as conn:
        assert _run(conn, 1, []) == (3, [], "1")
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        conn.rollback()
        killer = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
        with killer.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        killer.dispose()
        with pytest.raises(sa.exc.DBAPIError) as raised:
            _run(conn, 2, [])
        assert raised.value.connection_invalidated
        assert conn.invalidated
        conn.rollback()
        # The connection reconnects on its next use: a new session, which prepares afresh.
        assert _run(conn, 5, ["b"]) == (7, ["b"], "5")
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid


def test_a_statement_outside_a_transaction_is_committed_by_commit(database: Database) -> None:
    """As SQLAlchemy's autobegin: the statement opens the connection's transaction, and
    conn.commit() commits it (without it, the pool's reset would roll it back)."""
    database.read(lambda c: c.exec_driver_sql("CREATE TABLE tw_autobegin (a int)"))
    try:
        insert = PreparedStatement(
            "tw_test_autobegin", sa.text("INSERT INTO tw_autobegin VALUES (:a)"), {"a": "integer"}
        )
        with database.engine.connect() as conn:
            insert.execute(conn, {"a": 1})  # the first run prepares (through SQLAlchemy)
            conn.commit()
            insert.execute(conn, {"a": 2})  # then straight on the driver's cursor
            assert conn.in_transaction()
            conn.commit()
            insert.execute(conn, {"a": 3})  # never committed: rolled back on close
        rows = database.read(lambda c: c.exec_driver_sql("SELECT array_agg(a) FROM tw_autobegin"))
        assert rows.scalar() == [1, 2]
    finally:
        database.read(lambda c: c.exec_driver_sql("DROP TABLE tw_autobegin"))


def test_a_failed_transaction_answers_as_sqlalchemy_does(database: Database) -> None:
    """After a COMMIT that failed, SQLAlchemy wants a rollback first (PendingRollbackError);
    a prepared statement says the same, then runs once the connection rolled back."""
    database.read(
        lambda c: c.exec_driver_sql(
            "CREATE TABLE tw_deferred (a int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
        )
    )
    try:
        with database.engine.connect() as conn:
            assert _run(conn, 1, []) == (3, [], "1")
            conn.commit()
            conn.exec_driver_sql("INSERT INTO tw_deferred VALUES (1), (1)")
            with pytest.raises(sa.exc.IntegrityError):
                conn.commit()  # the deferred unique check fails at COMMIT
            with pytest.raises(sa.exc.PendingRollbackError):
                _run(conn, 2, [])
            conn.rollback()
            assert _run(conn, 2, []) == (4, [], "2")
    finally:
        database.read(lambda c: c.exec_driver_sql("DROP TABLE tw_deferred"))


def test_a_driver_refusal_is_raised_as_it_is(database: Database) -> None:
    """psycopg2 refuses a NUL character before anything reaches the server: a ValueError, as
    SQLAlchemy's own path raises it, and the connection stays usable."""
    with database.autocommit_engine.connect() as conn:
        assert _run(conn, 1, []) == (3, [], "1")
        with pytest.raises(ValueError, match="NUL"):
            _run(conn, 1, ["a\x00b"])
        assert not conn.invalidated
        assert _run(conn, 2, ["c"]) == (4, ["c"], "2")


def test_with_echo_the_statement_goes_through_sqlalchemy(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLAlchemy's echo logs every statement it runs: a prepared one included."""
    engine = sa.create_engine(db_url, echo=True).execution_options(tradewind_prepare=True)
    try:
        with caplog.at_level("INFO", logger="sqlalchemy.engine"), engine.connect() as conn:
            assert _run(conn, 40, ["x"]) == (42, ["x"], "40")
            assert _run(conn, 1, []) == (3, [], "1")  # prepared by then: EXECUTE alone
    finally:
        engine.dispose()
    assert sum("EXECUTE tw_test_sum" in r.getMessage() for r in caplog.records) == 2
