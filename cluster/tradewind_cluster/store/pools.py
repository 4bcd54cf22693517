"""Pools as an operator manages them (Airflow's `pools list|set|delete`): the rows, with the slots
their task instances occupy. default_pool cannot be deleted; deleting another pool is allowed
even while it is in use, as in Airflow: running attempts go on, waiting ones are not queued."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from tradewind.errors import BadInputError
from tradewind_cluster.store.schema import pool, task_instance

__all__ = ["DEFAULT_POOL", "PoolRow", "delete_pool", "get_pool", "list_pools", "set_pool"]

DEFAULT_POOL = "default_pool"
ti = task_instance


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolRow:
    """A pool and its use: slots taken by queued and running task instances, and how many
    task instances are scheduled (waiting for a slot), queued or running in it."""

    name: str
    slots: int
    description: str | None
    occupied_slots: int
    scheduled: int
    queued: int
    running: int

    @property
    def open_slots(self) -> int:
        """Slots free now (never negative, even after slots were lowered below use)."""
        return max(0, self.slots - self.occupied_slots)


def _usage(conn: Connection, names: list[str]) -> dict[str, dict[str, int]]:
    usage = {n: {"occupied_slots": 0, "scheduled": 0, "queued": 0, "running": 0} for n in names}
    if not names:
        return usage
    rows = conn.execute(
        sa.select(ti.c.pool, ti.c.state, sa.func.count(), sa.func.sum(ti.c.pool_slots))
        .where(ti.c.pool.in_(names), ti.c.state.in_(("scheduled", "queued", "running")))
        .group_by(ti.c.pool, ti.c.state)
    ).all()
    for name, state, n, slots in rows:
        usage[name][state] = int(n)
        if state != "scheduled":
            usage[name]["occupied_slots"] += int(slots or 0)
    return usage


def list_pools(conn: Connection, *, limit: int = 1000) -> list[PoolRow]:
    """Every pool by name, with its use."""
    rows = conn.execute(sa.select(pool).order_by(pool.c.name).limit(limit)).mappings().all()
    usage = _usage(conn, [r["name"] for r in rows])
    return [
        PoolRow(name=r["name"], slots=r["slots"], description=r["description"], **usage[r["name"]])
        for r in rows
    ]


def get_pool(conn: Connection, name: str) -> PoolRow | None:
    """One pool with its use, or None."""
    row = conn.execute(sa.select(pool).where(pool.c.name == name)).mappings().first()
    if row is None:
        return None
    usage = _usage(conn, [name])[name]
    return PoolRow(name=name, slots=row["slots"], description=row["description"], **usage)


def _check(name: str, slots: int) -> str:
    if not name or not name.strip():
        raise BadInputError("Pool name shouldn't be empty")
    if slots < 0:
        raise BadInputError(
            f"pool {name!r}: slots must be 0 or more, got {slots} (Airflow's -1 for an "
            "unlimited pool is not supported: give a large number instead)"
        )
    return name


def set_pool(conn: Connection, name: str, slots: int, description: str | None) -> bool:
    """Create a pool or change its slots; the description is replaced when given, kept when
    None. Returns True when the pool was created. The critical section locks pool rows with
    SKIP LOCKED and for milliseconds only, so this upsert waits at most that long."""
    _check(name, slots)
    values: dict[str, object] = {"slots": slots}
    if description is not None:
        values["description"] = description
    row: sa.Row[tuple[bool]] | None = conn.execute(
        pg_insert(pool)
        .values(name=name, slots=slots, description=description or "")
        .on_conflict_do_update(index_elements=[pool.c.name], set_=values)
        .returning(sa.literal_column("xmax = 0").label("created"))
    ).first()
    return bool(row is not None and row.created)


def delete_pool(conn: Connection, name: str) -> PoolRow | None:
    """Delete a pool and return it with the use it had (None when it did not exist);
    BadInputError for default_pool, which Airflow never lets go."""
    if name == DEFAULT_POOL:
        raise BadInputError(f"{DEFAULT_POOL} cannot be deleted")
    found = get_pool(conn, name)
    if found is None:
        return None
    conn.execute(sa.delete(pool).where(pool.c.name == name))
    return found
