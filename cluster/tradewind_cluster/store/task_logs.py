"""Task logs shipped by workers in numbered chunks per try. Appending is idempotent on
(ti_id, try_number, seq), so a worker may resend a batch it is unsure of; a chunk is kept only
when its attempt token exists and belongs to that try."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.schema import task_attempt, task_log

__all__ = [
    "LogChunkIn",
    "LogChunkRow",
    "ShipResult",
    "append_chunks",
    "list_tries",
    "read_log",
    "read_log_text",
]

lg = task_log
_REPLACEMENT = "\ufffd"  # PostgreSQL text cannot hold NUL; a log must not be lost over one


@dataclass(frozen=True, slots=True, kw_only=True)
class LogChunkIn:
    """One chunk as a worker ships it, named by the attempt (ti_id, token) that wrote it."""

    ti_id: int
    token: int
    try_number: int
    seq: int
    data: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogChunkRow:
    """One stored chunk."""

    try_number: int
    seq: int
    data: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipResult:
    """Chunks now stored (new or already there) and the reasons others were dropped."""

    stored: int
    dropped: tuple[str, ...] = ()


def _known_tries(conn: Connection, chunks: Sequence[LogChunkIn]) -> dict[tuple[int, int], int]:
    refs = sorted({(c.ti_id, c.token) for c in chunks})
    rows = conn.execute(
        sa.select(task_attempt.c.ti_id, task_attempt.c.token, task_attempt.c.try_number).where(
            sa.tuple_(task_attempt.c.ti_id, task_attempt.c.token).in_(refs)
        )
    ).all()
    return {(r[0], r[1]): r[2] for r in rows}


# Every log-shipping call inserts a batch: one prebuilt statement of array parameters.
_APPEND = sa.text(
    """
    INSERT INTO task_log (ti_id, try_number, seq, data)
    SELECT * FROM unnest(CAST(:ti_id AS bigint[]), CAST(:try_number AS integer[]),
                         CAST(:seq AS integer[]), CAST(:data AS text[]))
    ON CONFLICT (ti_id, try_number, seq) DO NOTHING
    """
)


def append_chunks(conn: Connection, chunks: Sequence[LogChunkIn]) -> ShipResult:
    """Store chunks whose attempt exists and whose try number is that attempt's; resent chunks
    are counted as stored without being written twice."""
    if not chunks:
        return ShipResult(stored=0)
    tries = _known_tries(conn, chunks)
    keep: dict[tuple[int, int, int], str] = {}
    dropped: list[str] = []
    for c in chunks:
        known = tries.get((c.ti_id, c.token))
        if known is None:
            dropped.append(f"unknown attempt {c.ti_id}/{c.token}")
        elif known != c.try_number:
            dropped.append(f"attempt {c.ti_id}/{c.token} is try {known}, not try {c.try_number}")
        elif c.seq < 0:
            dropped.append(f"attempt {c.ti_id}/{c.token}: negative sequence number {c.seq}")
        else:
            keep[(c.ti_id, c.try_number, c.seq)] = c.data.replace("\x00", _REPLACEMENT)
    if keep:
        rows = sorted(keep.items())
        conn.execute(
            _APPEND,
            {
                "ti_id": [t for (t, _, _), _ in rows],
                "try_number": [n for (_, n, _), _ in rows],
                "seq": [q for (_, _, q), _ in rows],
                "data": [data for _, data in rows],
            },
        )
    stored = sum(1 for c in chunks if (c.ti_id, c.try_number, c.seq) in keep)
    return ShipResult(stored=stored, dropped=tuple(dropped))


def read_log(
    conn: Connection, ti_id: int, try_number: int, *, after_seq: int = -1, limit: int = 1000
) -> list[LogChunkRow]:
    """Chunks of one try in order, after `after_seq` (to page or follow a log)."""
    rows = conn.execute(
        sa.select(lg.c.try_number, lg.c.seq, lg.c.data, lg.c.created_at)
        .where(lg.c.ti_id == ti_id, lg.c.try_number == try_number, lg.c.seq > after_seq)
        .order_by(lg.c.seq)
        .limit(limit)
    ).mappings()
    return [LogChunkRow(**r) for r in rows]


def read_log_text(conn: Connection, ti_id: int, try_number: int, *, limit: int = 10_000) -> str:
    """One try's log as text (its first `limit` chunks)."""
    return "".join(c.data for c in read_log(conn, ti_id, try_number, limit=limit))


def list_tries(conn: Connection, ti_id: int, *, limit: int = 1000) -> list[int]:
    """Try numbers of a task instance that have a log, in order."""
    rows = conn.execute(
        sa.select(lg.c.try_number)
        .where(lg.c.ti_id == ti_id)
        .group_by(lg.c.try_number)
        .order_by(lg.c.try_number)
        .limit(limit)
    )
    return [r[0] for r in rows]
