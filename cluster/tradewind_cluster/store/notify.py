"""Wake-ups between processes with LISTEN/NOTIFY: an idle replica sleeps on the channel and
wakes in well under a millisecond when another process commits work for it."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.database import Database

__all__ = ["CHANNEL", "WORKERS", "Listener", "notify"]

CHANNEL = "tradewind"
WORKERS = "workers"
"""The topic of a worker registering: new slots, so cached views of free slots are stale."""


def notify(conn: Connection, topic: str) -> None:
    """Queue a wake-up for every listener; delivered when this transaction commits."""
    conn.execute(sa.text("SELECT pg_notify(:c, :t)"), {"c": CHANNEL, "t": topic})


class Listener:
    """A dedicated connection LISTENing on the channel; `wait()` returns the topics received."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._raw: Any = None

    def _ensure(self) -> Any:
        if self._raw is None:
            raw = self._db.engine.raw_connection()
            pg: Any = raw.driver_connection
            pg.set_session(autocommit=True)
            with pg.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
            self._raw = raw
        return self._raw.driver_connection

    def wait(self, timeout_s: float, also: Sequence[int] = ()) -> set[str]:
        """Block up to timeout_s for notifications (or until a file descriptor in `also` is
        readable); a broken connection is dropped and retried on the next call."""
        try:
            pg = self._ensure()
            pg.poll()
            if not pg.notifies:
                ready, _, _ = select.select([pg, *also], [], [], timeout_s)
                if pg in ready:
                    pg.poll()
            topics = {n.payload for n in pg.notifies}
            pg.notifies.clear()
            return topics
        except Exception:  # noqa: BLE001 - a broken listener must never kill the loop
            self.close()
            return set()

    def close(self) -> None:
        """Release the listening connection."""
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.invalidate()
            self._raw = None
