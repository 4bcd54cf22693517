"""Reading what the store recorded once a run is over (runs, task instances, attempts, members,
workers), the database's own counters, and the offset between the database and local clocks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

__all__ = [
    "AttemptRecord",
    "MemberRecord",
    "PgCounters",
    "RunRecord",
    "StoreSnapshot",
    "TiRecord",
    "WorkerRecord",
    "clock_offset_s",
    "epoch",
    "read_pg_counters",
    "read_store",
]


def epoch(value: datetime | None) -> float | None:
    """A timestamptz as seconds since the epoch (database clock)."""
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One dag_run row."""

    id: int
    dag_id: str
    run_id: str
    logical_date: float
    run_type: str
    state: str
    queued_at: float | None
    start_date: float | None
    end_date: float | None
    scheduled_at: float | None  # run_after, else the data interval's end: when it was due


@dataclass(frozen=True, slots=True, kw_only=True)
class TiRecord:
    """One task_instance row."""

    id: int
    dag_id: str
    run_id: str
    task_id: str
    state: str
    try_number: int
    max_tries: int
    token: int
    pool: str
    start_date: float | None
    end_date: float | None
    worker: str | None
    queued_by: str | None
    scheduled_at: float | None = None  # the last time it was scheduled


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One task_attempt row: one fencing token handed out."""

    id: int
    ti_id: int
    token: int
    try_number: int
    state: str
    queued_at: float | None
    start_date: float | None
    end_date: float | None
    worker: str | None
    queued_by: str | None
    dispatched_at: float | None = None  # when the dispatch step began for it


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRecord:
    """One scheduler_member row."""

    id: str
    name: str
    pid: int
    state: str
    started_at: float | None
    ended_at: float | None
    declared_dead_by: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """One worker row."""

    id: str
    name: str
    state: str
    slots: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSnapshot:
    """Everything the measures and invariants read from the store."""

    runs: tuple[RunRecord, ...]
    tis: tuple[TiRecord, ...]
    attempts: tuple[AttemptRecord, ...]
    members: tuple[MemberRecord, ...]
    workers: tuple[WorkerRecord, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PgCounters:
    """Cumulative counters of this database; statements is None without pg_stat_statements."""

    transactions: int
    statements: int | None


def _rows(conn: sa.Connection, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(sql)).mappings()]


def _runs(conn: sa.Connection) -> tuple[RunRecord, ...]:
    return tuple(
        RunRecord(
            id=r["id"],
            dag_id=r["dag_id"],
            run_id=r["run_id"],
            logical_date=r["logical_date"].timestamp(),
            run_type=r["run_type"],
            state=r["state"],
            queued_at=epoch(r["queued_at"]),
            start_date=epoch(r["start_date"]),
            end_date=epoch(r["end_date"]),
            scheduled_at=epoch(r["run_after"] or r["data_interval_end"]),
        )
        for r in _rows(conn, "SELECT * FROM dag_run ORDER BY id")
    )


def _tis(conn: sa.Connection) -> tuple[TiRecord, ...]:
    return tuple(
        TiRecord(
            id=r["id"],
            dag_id=r["dag_id"],
            run_id=r["run_id"],
            task_id=r["task_id"],
            state=r["state"],
            try_number=r["try_number"],
            max_tries=r["max_tries"],
            token=r["token"],
            pool=r["pool"],
            start_date=epoch(r["start_date"]),
            end_date=epoch(r["end_date"]),
            worker=r["worker"],
            queued_by=r["queued_by"],
            scheduled_at=epoch(r["scheduled_at"]),
        )
        for r in _rows(conn, "SELECT * FROM task_instance ORDER BY id")
    )


def _attempts(conn: sa.Connection) -> tuple[AttemptRecord, ...]:
    return tuple(
        AttemptRecord(
            id=r["id"],
            ti_id=r["ti_id"],
            token=r["token"],
            try_number=r["try_number"],
            state=r["state"],
            queued_at=epoch(r["queued_at"]),
            start_date=epoch(r["start_date"]),
            end_date=epoch(r["end_date"]),
            worker=r["worker"],
            queued_by=r["queued_by"],
            dispatched_at=epoch(r["dispatched_at"]),
        )
        for r in _rows(conn, "SELECT * FROM task_attempt ORDER BY id")
    )


def _members(conn: sa.Connection) -> tuple[MemberRecord, ...]:
    return tuple(
        MemberRecord(
            id=r["id"],
            name=r["name"],
            pid=r["pid"],
            state=r["state"],
            started_at=epoch(r["started_at"]),
            ended_at=epoch(r["ended_at"]),
            declared_dead_by=r["declared_dead_by"],
        )
        for r in _rows(conn, "SELECT * FROM scheduler_member ORDER BY started_at")
    )


def _workers(conn: sa.Connection) -> tuple[WorkerRecord, ...]:
    return tuple(
        WorkerRecord(id=r["id"], name=r["name"], state=r["state"], slots=r["slots"])
        for r in _rows(conn, "SELECT id, name, state, slots FROM worker ORDER BY registered_at")
    )


def read_store(engine: sa.Engine) -> StoreSnapshot:
    """Read every row the report needs, in one repeatable-read transaction."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return StoreSnapshot(
                runs=_runs(conn),
                tis=_tis(conn),
                attempts=_attempts(conn),
                members=_members(conn),
                workers=_workers(conn),
            )


def _statements(conn: sa.Connection) -> int | None:
    try:
        with conn.begin_nested():
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            value = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar()
    except sa.exc.DBAPIError:  # not installed, or not in shared_preload_libraries
        return None
    return int(value or 0)


def read_pg_counters(engine: sa.Engine) -> PgCounters:
    """Transactions (pg_stat_database) and statements (pg_stat_statements, when loaded)."""
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        xacts = conn.execute(
            sa.text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        ).scalar()
        statements = _statements(conn)
    return PgCounters(transactions=int(xacts or 0), statements=statements)


def clock_offset_s(engine: sa.Engine) -> float:
    """Database clock minus local clock, in seconds (the best of a few round trips)."""
    best: tuple[float, float] | None = None
    with engine.connect() as conn:
        for _ in range(5):
            before = time.time()
            db_now = conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar()
            after = time.time()
            rtt = after - before
            offset = float(db_now or 0) - (before + after) / 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
    assert best is not None
    return best[1]
