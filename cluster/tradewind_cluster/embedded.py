"""The embedded PostgreSQL (the `pgserver` wheel) used when no database URL is configured.

Every Tradewind process on the machine shares one server per data dir: the first starts it,
the others reuse it, and the last one to leave stops it. pgserver keeps the users' pids in a
file; a process killed with SIGKILL never removes its own, so dead pids are pruned first."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psutil

__all__ = ["EmbeddedPostgres", "embedded_url"]

log = logging.getLogger(__name__)

_PIDS_FILE = ".handle_pids.json"


def _to_psycopg2(uri: str) -> str:
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; Tradewind ships psycopg2.
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


class EmbeddedPostgres:
    """A handle on the shared embedded server for one data dir."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return a SQLAlchemy URL for the `postgres` database."""
        # Imported late: pgserver is heavy and only needed without an external URL. At import it
        # asks platformdirs for XDG_RUNTIME_DIR and warns when unset (it falls back to /tmp).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import PostgresServer, get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:
            self._prune_dead_pids()
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        url = _to_psycopg2(self._server.get_uri())
        log.info("embedded PostgreSQL ready in %s", self.pgdata, extra={"event": "embedded_pg"})
        return url

    def stop(self) -> None:
        """Leave the server; it stops when this was its last user."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def _prune_dead_pids(self) -> None:
        path = self.pgdata / _PIDS_FILE
        if not path.exists():
            return
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            pids = []
        alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and _alive(p)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def embedded_url(pgdata: Path) -> tuple[str, EmbeddedPostgres]:
    """Start or join the embedded server in pgdata; returns its URL and the handle to stop."""
    handle = EmbeddedPostgres(pgdata)
    return handle.start(), handle
