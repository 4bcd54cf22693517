"""XCom rows: pushed under the current token of a running attempt (size-limited), pulled by
(dag_id, run_id, task_ids, key) as Airflow's XCom.get_many does, and deleted for a task
instance when its next try starts. Values are opaque strings made by the XCom backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from tradewind_cluster.store.schema import task_instance, xcom
from tradewind_cluster.store.workers import attempt_scope

__all__ = [
    "XComPushResult",
    "XComRow",
    "check_value",
    "delete_task_xcoms",
    "list_xcoms",
    "newest_xcom",
    "pull_xcoms",
    "push_xcom",
    "replace_task_xcoms",
    "store_returned",
]

x = xcom
ti = task_instance
MAX_KEY_LENGTH = 512  # Airflow's xcom.key column


@dataclass(frozen=True, slots=True, kw_only=True)
class XComRow:
    """One stored XCom; `value` is what the backend's serialize_value produced."""

    dag_id: str
    run_id: str
    task_id: str
    key: str
    value: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class XComPushResult:
    """Whether a push was stored, and why not."""

    accepted: bool
    reason: str = ""


def _row(r: sa.RowMapping) -> XComRow:
    return XComRow(**{f: r[f] for f in XComRow.__dataclass_fields__})


def _check_value(key: str, value: str, max_bytes: int) -> str | None:
    if not key:
        return "XCom key must be a non-empty string"
    if len(key) > MAX_KEY_LENGTH:
        return f"XCom key is {len(key)} characters long, over the limit of {MAX_KEY_LENGTH}"
    if "\x00" in value or "\x00" in key:
        return f"XCom {key!r} contains a NUL character, which the store cannot hold"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return (
            f"XCom {key!r} is {size} bytes, over core.max_xcom_bytes ({max_bytes}); "
            "keep large data out of XCom or configure core.xcom_backend"
        )
    return None


def push_xcom(
    conn: Connection, ti_id: int, token: int, *, key: str, value: str, max_bytes: int
) -> XComPushResult:
    """Store (or replace, as Airflow's XCom.set) `key` for the attempt's task instance, only
    while that attempt runs under the current token."""
    problem = _check_value(key, value, max_bytes)
    if problem is not None:
        return XComPushResult(accepted=False, reason=problem)
    # Lock the task instance so the push cannot interleave with a token change.
    row = conn.execute(
        sa.select(ti.c.dag_id, ti.c.run_id, ti.c.task_id)
        .where(ti.c.id == ti_id, ti.c.token == token, ti.c.state == "running")
        .with_for_update()
    ).first()
    if row is None:
        return XComPushResult(accepted=False, reason=_refusal(conn, ti_id, token))
    values = {"value": value, "created_at": sa.func.clock_timestamp()}
    conn.execute(
        pg_insert(x)
        .values(dag_id=row.dag_id, run_id=row.run_id, task_id=row.task_id, key=key, **values)
        .on_conflict_do_update(
            index_elements=[x.c.dag_id, x.c.run_id, x.c.task_id, x.c.key], set_=values
        )
    )
    return XComPushResult(accepted=True)


def store_returned(
    conn: Connection, ti_id: int, token: int, values: Sequence[tuple[str, str]]
) -> int:
    """Store the values an attempt returned, in the transaction that recorded its success (the
    caller checked the token there and the sizes before): one INSERT ... SELECT per key."""
    stored = 0
    for key, value in values:
        source = sa.select(
            ti.c.dag_id,
            ti.c.run_id,
            ti.c.task_id,
            sa.literal(key, sa.String),
            sa.literal(value, sa.Text),
            sa.func.clock_timestamp(),
        ).where(ti.c.id == ti_id, ti.c.token == token)
        insert = pg_insert(x).from_select(
            [x.c.dag_id, x.c.run_id, x.c.task_id, x.c.key, x.c.value, x.c.created_at], source
        )
        stored += conn.execute(
            insert.on_conflict_do_update(
                index_elements=[x.c.dag_id, x.c.run_id, x.c.task_id, x.c.key],
                set_={"value": insert.excluded.value, "created_at": insert.excluded.created_at},
            )
        ).rowcount
    return stored


_REPLACE = sa.text(
    """
    WITH gone AS (
        DELETE FROM xcom
        WHERE dag_id = :dag_id AND run_id = :run_id AND task_id = :task_id
          AND key <> ALL(CAST(:keys AS text[]))
    )
    INSERT INTO xcom (dag_id, run_id, task_id, key, value, created_at)
    SELECT :dag_id, :run_id, :task_id, v.key, v.value, clock_timestamp()
    FROM unnest(CAST(:keys AS text[]), CAST(:values AS text[])) AS v(key, value)
    ON CONFLICT (dag_id, run_id, task_id, key)
    DO UPDATE SET value = excluded.value, created_at = excluded.created_at
    """
)


def replace_task_xcoms(
    conn: Connection, *, dag_id: str, run_id: str, task_id: str, values: Sequence[tuple[str, str]]
) -> None:
    """One statement: delete the task instance's XComs except `values`' keys, and store
    `values` (empty for a failed try that its report also started). A key given twice keeps
    its last value (one INSERT may not touch a row twice)."""
    kept = dict(values)
    conn.execute(
        _REPLACE,
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "keys": list(kept),
            "values": list(kept.values()),
        },
    )


def check_value(key: str, value: str, max_bytes: int) -> str | None:
    """Why the store cannot keep this XCom (bad key, NUL, over max_bytes), or None."""
    return _check_value(key, value, max_bytes)


def _refusal(conn: Connection, ti_id: int, token: int) -> str:
    scope = attempt_scope(conn, ti_id, token)
    if scope is None:
        return f"unknown task instance {ti_id}"
    if not scope.is_current:
        return scope.stale_reason()
    return f"task instance is {scope.ti_state}, not running"


def pull_xcoms(
    conn: Connection,
    *,
    dag_id: str,
    run_id: str,
    task_ids: Sequence[str] | None,
    key: str | None,
    limit: int = 1000,
) -> list[XComRow]:
    """XComs of one run matching the filters (None or "" for key, None for task_ids: no filter),
    ordered by the order of task_ids (else task id), then newest first. Airflow's xcom_pull
    with no task_ids wants the newest match: take `newest_xcom` for that."""
    q = sa.select(x).where(x.c.dag_id == dag_id, x.c.run_id == run_id)
    if key:
        q = q.where(x.c.key == key)
    if task_ids is not None:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return []
        q = q.where(x.c.task_id.in_(ids)).order_by(
            sa.case({tid: i for i, tid in enumerate(ids)}, value=x.c.task_id)
        )
    else:
        q = q.order_by(x.c.task_id)
    q = q.order_by(x.c.created_at.desc(), x.c.id.desc()).limit(limit)
    return [_row(r) for r in conn.execute(q).mappings()]


def newest_xcom(conn: Connection, *, dag_id: str, run_id: str, key: str | None) -> XComRow | None:
    """The most recent XCom of the run with that key (any key for None or ""), as Airflow's
    xcom_pull(task_ids=None) returns."""
    q = sa.select(x).where(x.c.dag_id == dag_id, x.c.run_id == run_id)
    if key:
        q = q.where(x.c.key == key)
    row = conn.execute(q.order_by(x.c.created_at.desc(), x.c.id.desc()).limit(1)).mappings().first()
    return None if row is None else _row(row)


def list_xcoms(conn: Connection, *, dag_id: str, run_id: str, limit: int = 1000) -> list[XComRow]:
    """Every XCom of one run, by task then key (for the CLI and tests)."""
    q = (
        sa.select(x)
        .where(x.c.dag_id == dag_id, x.c.run_id == run_id)
        .order_by(x.c.task_id, x.c.key)
        .limit(limit)
    )
    return [_row(r) for r in conn.execute(q).mappings()]


def delete_task_xcoms(
    conn: Connection, *, dag_id: str, run_id: str, task_id: str, limit: int = 10_000
) -> list[XComRow]:
    """Delete the XComs of one task instance (Airflow's XCom.clear); returns what was deleted
    so a backend can purge what it keeps elsewhere."""
    doomed = (
        sa.select(x.c.id)
        .where(x.c.dag_id == dag_id, x.c.run_id == run_id, x.c.task_id == task_id)
        .limit(limit)
        .scalar_subquery()
    )
    rows = conn.execute(sa.delete(x).where(x.c.id.in_(doomed)).returning(*x.c)).mappings()
    return [_row(r) for r in rows]
