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
again: turn `database.prepared_statements` off there and the same statements run unprepared."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult

from tradewind.errors import RetryableError

__all__ = ["PREPARE_OPTION", "PreparedStatement"]

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

    def execute(
        self, conn: Connection, params: Mapping[str, Any]
    ) -> CursorResult[*tuple[Any, ...]]:
        """Run the statement with params (every parameter, by name). RetryableError when the
        session's prepared statement turned out stale: the caller's retry prepares it again."""
        if not conn.get_execution_options().get(PREPARE_OPTION, False):
            return conn.execute(self.statement, dict(params))
        try:
            self._prepare_here(conn)
            return conn.exec_driver_sql(self._execute, tuple(params[p] for p in self._order))
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
