"""Scheduler membership rows: register, heartbeat, declare dead (compare-and-set), list.

Liveness is judged on the database clock so that replicas on skewed hosts agree. A replica
is declared dead by a peer with a compare-and-set on (state='alive', heartbeat_seq=seen):
if the replica heartbeated after the peer looked, the declaration matches no row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.schema import scheduler_member

__all__ = [
    "MemberRow",
    "declare_dead",
    "heartbeat",
    "list_members",
    "mark_stopped",
    "register_member",
    "stale_members",
]

m = scheduler_member


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRow:
    """A scheduler replica as the store knows it; ages are seconds on the database clock."""

    id: str
    name: str
    hostname: str
    pid: int
    grpc_address: str | None
    health_address: str | None
    metrics_address: str | None
    version: str
    state: str
    heartbeat_seq: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    loop_progress_at: datetime | None
    declared_dead_by: str | None
    dead_reason: str | None


_AGE = sa.func.extract("epoch", sa.func.clock_timestamp() - m.c.heartbeat_at).label(
    "heartbeat_age_s"
)


def _row(r: sa.RowMapping) -> MemberRow:
    data = {f: r[f] for f in MemberRow.__dataclass_fields__}
    data["heartbeat_age_s"] = float(r["heartbeat_age_s"])
    return MemberRow(**data)


def register_member(
    conn: Connection,
    *,
    member_id: str,
    name: str,
    hostname: str,
    pid: int,
    version: str,
    grpc_address: str | None = None,
    health_address: str | None = None,
    metrics_address: str | None = None,
) -> None:
    """Insert this replica's row (a fresh identity every start)."""
    conn.execute(
        sa.insert(m).values(
            id=member_id,
            name=name,
            hostname=hostname,
            pid=pid,
            version=version,
            grpc_address=grpc_address,
            health_address=health_address,
            metrics_address=metrics_address,
        )
    )


def heartbeat(conn: Connection, member_id: str, *, loop_progress_at: datetime | None) -> str | None:
    """Advance this replica's heartbeat; returns its state ('dead' means stop at once), or None
    when the row is gone."""
    values: dict[str, object] = {
        "heartbeat_at": sa.func.clock_timestamp(),
        "heartbeat_seq": m.c.heartbeat_seq + 1,
    }
    if loop_progress_at is not None:
        values["loop_progress_at"] = loop_progress_at
    row = conn.execute(
        sa.update(m)
        .where(m.c.id == member_id, m.c.state == "alive")
        .values(**values)
        .returning(m.c.state)
    ).first()
    if row is not None:
        return str(row[0])
    state = conn.execute(sa.select(m.c.state).where(m.c.id == member_id)).scalar()
    return None if state is None else str(state)


def list_members(
    conn: Connection, *, include_ended: bool = False, limit: int = 1000
) -> list[MemberRow]:
    """Members, alive first then most recent heartbeat."""
    q = sa.select(m, _AGE).order_by(m.c.state, m.c.heartbeat_at.desc()).limit(limit)
    if not include_ended:
        q = q.where(m.c.state == "alive")
    return [_row(r) for r in conn.execute(q).mappings()]


def stale_members(conn: Connection, *, threshold_s: float, limit: int = 100) -> list[MemberRow]:
    """Alive members whose heartbeat is older than threshold_s (candidates to declare dead)."""
    cutoff = sa.func.clock_timestamp() - sa.func.make_interval(0, 0, 0, 0, 0, 0, threshold_s)
    q = (
        sa.select(m, _AGE)
        .where(m.c.state == "alive", m.c.heartbeat_at < cutoff)
        .order_by(m.c.heartbeat_at)
        .limit(limit)
    )
    return [_row(r) for r in conn.execute(q).mappings()]


def declare_dead(conn: Connection, member_id: str, *, seen_seq: int, by: str, reason: str) -> bool:
    """Mark a member dead if it has not heartbeated since we saw `seen_seq` (compare-and-set)."""
    result = conn.execute(
        sa.update(m)
        .where(m.c.id == member_id, m.c.state == "alive", m.c.heartbeat_seq == seen_seq)
        .values(
            state="dead",
            declared_dead_by=by,
            dead_reason=reason,
            ended_at=sa.func.clock_timestamp(),
        )
    )
    return result.rowcount == 1


def mark_stopped(conn: Connection, member_id: str) -> None:
    """A clean shutdown: the replica leaves and its work is released at once."""
    conn.execute(
        sa.update(m)
        .where(m.c.id == member_id, m.c.state == "alive")
        .values(state="stopped", ended_at=sa.func.clock_timestamp())
    )
