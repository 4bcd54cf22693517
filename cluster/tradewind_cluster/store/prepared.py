"""The hot path's statements as server-side prepared statements.

PostgreSQL plans a statement on every execution unless it is prepared. For the report's
data-modifying CTE planning takes about 0.5 ms of the server's CPU, several times what running
it takes (measured with EXPLAIN ANALYZE on this project's machine); prepared once per
connection, its generic plan is reused after the first few executions and planning costs
~0.03 ms. psycopg2 has no prepared statements of its own, so this issues PREPARE and EXECUTE.

Each connection prepares a statement the first time it runs it there (a session's prepared
statements live as long as the session; a connection that was replaced starts over). Behind a
pooler in transaction mode (PgBouncer's default) a session is not a connection's own: turn
`database.prepared_statements` off there and the same statements run unprepared."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult

__all__ = ["PREPARE_OPTION", "PreparedStatement"]

PREPARE_OPTION = "tradewind_prepare"
"""The engine execution option that turns preparing on (Database sets it from the options)."""
_INFO_KEY = "tradewind_prepared"
_PARAM = re.compile(r"(?<![:\w]):(\w+)\b")


class PreparedStatement:
    """A text statement with named parameters (`:name`), each given its PostgreSQL type, that
    runs as a prepared statement where the connection allows it and as plain text otherwise.
    Results are the same either way."""

    def __init__(
        self, name: str, statement: sa.TextClause | sa.TextualSelect, types: Mapping[str, str]
    ) -> None:
        text = (
            statement.text
            if isinstance(statement, sa.TextClause)
            else cast(sa.TextClause, statement.element).text
        )
        found = list(dict.fromkeys(_PARAM.findall(text)))
        if set(found) != set(types):
            raise ValueError(
                f"prepared statement {name}: parameters {sorted(found)} but types for "
                f"{sorted(types)}"
            )
        self.name = name
        self.statement = statement
        self._order = found
        numbered = {param: f"${i}" for i, param in enumerate(found, 1)}
        body = _PARAM.sub(lambda m: numbered[m.group(1)], text)
        signature = f" ({', '.join(types[param] for param in found)})" if found else ""
        self._prepare = f"PREPARE {name}{signature} AS {body}"
        arguments = f" ({', '.join(['%s'] * len(found))})" if found else ""
        self._execute = f"EXECUTE {name}{arguments}"

    def execute(
        self, conn: Connection, params: Mapping[str, Any]
    ) -> CursorResult[*tuple[Any, ...]]:
        """Run the statement with params (every parameter, by name)."""
        if not conn.get_execution_options().get(PREPARE_OPTION, False):
            return conn.execute(self.statement, dict(params))
        if self.name not in _prepared_here(conn):
            conn.exec_driver_sql(self._prepare)
            _prepared_here(conn).add(self.name)
        return conn.exec_driver_sql(self._execute, tuple(params[p] for p in self._order))


def _prepared_here(conn: Connection) -> set[str]:
    """The statements prepared in this connection's session. The pool keeps `info` across a
    reconnect, so the set is tied to the server process it was made in."""
    raw: Any = conn.connection.dbapi_connection
    backend = raw.get_backend_pid()
    info = conn.connection.info
    entry = info.get(_INFO_KEY)
    if entry is None or entry[0] != backend:
        entry = info[_INFO_KEY] = (backend, set())
    names: set[str] = entry[1]
    return names
