"""The hot path's statements as server-side prepared statements.

PostgreSQL plans a statement on every execution unless it is prepared. For the report's
data-modifying CTE planning takes about 0.5 ms of the server's CPU, several times what running
it takes (measured with EXPLAIN ANALYZE on this project's machine); prepared once per
connection, its generic plan is reused after the first few executions and planning costs
~0.03 ms. psycopg2 has no prepared statements of its own, so this issues PREPARE and EXECUTE.

Each connection prepares a statement the first time it runs it there (a session's prepared
statements live as long as the session; a connection that was replaced starts over). When the
server says a statement is missing, already there under that name, or no longer fits its plan
(a migration changed a table it reads), the name is forgotten (and deallocated) and the whole
transaction is retried, which prepares it afresh. Behind a pooler in transaction mode
(PgBouncer's default) a session is not a connection's own and that would happen again and
again: turn `database.prepared_statements` off there and the same statements run unprepared.

EXECUTE goes straight to the driver's cursor, not through SQLAlchemy's execution path (a result
object and its metadata per call: a trivial statement cost 70-78 us of client CPU that way,
50-61 us now, 34-40 us on a bare cursor; docs/performance.md). A failure is still handed to
SQLAlchemy, which wraps it as a DBAPIError and invalidates the connection when the server is
gone, as it does for its own statements. While anything watches SQLAlchemy's statements (event
listeners, such as an instrumentation library's, or `echo`), EXECUTE goes through SQLAlchemy so
that they see it, at its cost. Either way the result is a `Rows`: the statement's rows, read at
once (the hot path's statements return few)."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult

from tradewind.errors import RetryableError

__all__ = ["PREPARE_OPTION", "PreparedStatement", "ResultRow", "Rows"]

log = logging.getLogger(__name__)

PREPARE_OPTION = "tradewind_prepare"
"""The engine execution option that turns preparing on (Database sets it from the options)."""
_INFO_KEY = "tradewind_prepared"
# SQLAlchemy's own reading of a text statement's parameters (escapes, casts and literals as the
# plain form sees them), numbered $1, $2... as PREPARE wants them.
_DOLLAR = postgresql.psycopg2.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
_NO_PARAMETERS = {"no_parameters": True}  # the text goes to the server as it is (no % escaping)
# invalid_sql_statement_name (missing), duplicate_prepared_statement, feature_not_supported
# ("cached plan must not change result type"): the session's statement is not what we think.
_STALE_SQLSTATES = frozenset({"26000", "42P05", "0A000"})
_warned = threading.Event()


ResultRow = Any
"""A row of a `Rows`: a named tuple (by position, by column name as an attribute, `_asdict()`)."""


class Rows:
    """A statement's rows, read at once: iterate them, or take `one`, `first`, `scalar`, `all`
    or `mappings` (one dict per row)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[ResultRow]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[ResultRow]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def all(self) -> list[ResultRow]:
        """Every row."""
        return list(self._rows)

    def one(self) -> ResultRow:
        """The only row; NoResultFound or MultipleResultsFound (SQLAlchemy's) otherwise."""
        if not self._rows:
            raise sa.exc.NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound(
                "Multiple rows were found when exactly one was required"
            )
        return self._rows[0]

    def first(self) -> ResultRow | None:
        """The first row, None when there is none."""
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        """The first column of the first row, None when there is no row."""
        return self._rows[0][0] if self._rows else None

    def mappings(self) -> list[dict[str, Any]]:
        """Each row as a dict by column name."""
        return [row._asdict() for row in self._rows]


def _row_class(names: tuple[str, ...]) -> Any:
    # rename=True: a column that cannot be an attribute (?column?) becomes _0, _1...
    return collections.namedtuple("Row", names, rename=True)


class _RowType:
    """The named tuple class of a statement's rows, made once per set of column names. Threads
    share it: the names and their class are swapped together, as one tuple."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: tuple[tuple[str, ...], Any] = ((), None)

    def rows(self, names: Sequence[str], values: Sequence[Sequence[Any]]) -> list[ResultRow]:
        key = tuple(names)
        known, row_class = self._current
        if key != known or row_class is None:
            row_class = _row_class(key)
            self._current = (key, row_class)
        make = row_class._make
        return [make(v) for v in values]


def _through_sqlalchemy(conn: Connection) -> bool:
    """Whether EXECUTE must take SQLAlchemy's execution path: something watches its statements
    (event listeners on the connection, engine or dialect; echo), or the connection's
    transaction or savepoint has failed (SQLAlchemy then raises its PendingRollbackError)."""
    transaction = conn.get_transaction()
    savepoint = conn.get_nested_transaction()
    return bool(
        conn._has_events
        or conn.engine._has_events
        or conn.dialect._has_events
        or conn._echo
        or (transaction is not None and not transaction.is_active)
        or (savepoint is not None and not savepoint.is_active)
    )


class PreparedStatement:
    """A text statement with named parameters (`:name`), each given its PostgreSQL type, that
    runs as a prepared statement where the connection allows it and as plain text otherwise.
    Results are the same either way."""

    def __init__(
        self, name: str, statement: sa.TextClause | sa.TextualSelect, types: Mapping[str, str]
    ) -> None:
        compiled = statement.compile(dialect=_DOLLAR)
        order = list(compiled.positiontup or ())
        if set(order) != set(types):
            raise ValueError(
                f"prepared statement {name}: parameters {sorted(order)} but types for "
                f"{sorted(types)}"
            )
        self.name = name
        self.statement = statement
        self._order = order
        signature = f" ({', '.join(types[param] for param in order)})" if order else ""
        self._prepare = f"PREPARE {name}{signature} AS {compiled}"
        arguments = f" ({', '.join(['%s'] * len(order))})" if order else ""
        self._execute = f"EXECUTE {name}{arguments}"
        self._rows = _RowType()

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Rows:
        """Run the statement with params (every parameter, by name). RetryableError when the
        session's prepared statement turned out stale: the caller's retry prepares it again."""
        if not conn.get_execution_options().get(PREPARE_OPTION, False):
            return self._read(conn.execute(self.statement, dict(params)))
        try:
            self._prepare_here(conn)
            args = tuple(params[p] for p in self._order)
            if _through_sqlalchemy(conn):
                return self._read(conn.exec_driver_sql(self._execute, args))
            return self._run(conn, args)
        except sa.exc.DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            if code not in _STALE_SQLSTATES:
                raise
            registry = _registry(conn)
            registry.prepared.discard(self.name)
            registry.stale.add(self.name)
            if not _warned.is_set():
                _warned.set()
                log.warning(
                    "prepared statement %s was stale in this session (%s); it is prepared "
                    "again. If this repeats, a pooler in transaction mode is in between: set "
                    "database.prepared_statements = false",
                    self.name,
                    code,
                    extra={"event": "prepared_statement_stale"},
                )
            raise RetryableError(f"prepared statement {self.name} was stale ({code})") from exc

    def _read(self, result: CursorResult[Any]) -> Rows:
        if not result.returns_rows:
            return Rows([])
        return Rows(self._rows.rows(list(result.keys()), result.all()))

    def _run(self, conn: Connection, args: tuple[Any, ...]) -> Rows:
        """EXECUTE on the driver's cursor. A failure goes through SQLAlchemy's own handling,
        which raises it as a DBAPIError and invalidates the connection when the server is gone."""
        if conn.get_transaction() is None:
            conn.begin()  # as SQLAlchemy's autobegin: conn.commit() then commits this statement
        cursor = None
        try:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(self._execute, args)
            if cursor.description is None:
                return Rows([])
            names = [column[0] for column in cursor.description]
            return Rows(self._rows.rows(names, cursor.fetchall()))
        except BaseException as exc:  # as SQLAlchemy: an interrupted call loses the connection
            # Private to SQLAlchemy but the same in 2.0 and 2.1 (pyproject pins <2.2);
            # tests/store/test_prepared.py checks the wrapping and the invalidation. Only a
            # driver error is wrapped (with no statement, anything else is raised as it is,
            # e.g. psycopg2's ValueError for a NUL character, as SQLAlchemy's own path does).
            driver = isinstance(exc, conn.dialect.loaded_dbapi.Error)
            statement = self._execute if driver else None
            conn._handle_dbapi_exception(exc, statement, args, cursor, None)
            raise  # pragma: no cover - _handle_dbapi_exception always raises
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):  # a lost connection's cursor may not close
                    cursor.close()

    def _prepare_here(self, conn: Connection) -> None:
        registry = _registry(conn)
        if self.name in registry.prepared:
            return
        if self.name in registry.stale:  # whatever the session holds under the name goes
            held = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_prepared_statements WHERE name = %s", (self.name,)
            ).scalar()
            if held:
                conn.exec_driver_sql(f"DEALLOCATE {self.name}", execution_options=_NO_PARAMETERS)
            registry.stale.discard(self.name)
        conn.exec_driver_sql(self._prepare, execution_options=_NO_PARAMETERS)
        registry.prepared.add(self.name)


class _Registry:
    """The statements prepared in one server session, and those found stale there."""

    __slots__ = ("backend", "prepared", "stale")

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.prepared: set[str] = set()
        self.stale: set[str] = set()


def _registry(conn: Connection) -> _Registry:
    """This connection's registry (one thread holds a pooled connection at a time). Tied to the
    server process it was made in: a replaced connection starts with an empty one."""
    raw: Any = conn.connection.dbapi_connection
    backend = raw.get_backend_pid()
    info = conn.connection.info
    found = info.get(_INFO_KEY)
    if not isinstance(found, _Registry) or found.backend != backend:
        found = info[_INFO_KEY] = _Registry(backend)
    return found
