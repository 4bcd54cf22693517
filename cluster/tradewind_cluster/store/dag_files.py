"""DAG files and what parsing them stores: discovery upserts, the sharded parse claim (a lease
on each dag_file row), the dag / serialized_dag / import_error writes of one parsed file, and
the listings the CLI shows. Lock order: dag_file → dag; run creation locks dag only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from tradewind.schedules import DataInterval
from tradewind.scheduling.runs import due_runs
from tradewind.spec import DagSpec
from tradewind_cluster.store.schema import (
    dag,
    dag_file,
    import_error,
    lease,
    scheduler_member,
    serialized_dag,
)

__all__ = [
    "DISCOVERY_LEASE",
    "DagFileRow",
    "FileResult",
    "ImportErrorRow",
    "ParsedDag",
    "StoredFile",
    "claim_discovery",
    "claim_due_files",
    "count_active_dags",
    "count_import_errors",
    "list_dag_files",
    "list_import_errors",
    "mark_missing_files",
    "next_claimable_at",
    "rearm_file",
    "release_dead_leases",
    "schedule_values",
    "store_file_result",
    "upsert_present_files",
]

DISCOVERY_LEASE = "dag_file_discovery"
# A file defining more DAGs than this is stored over several parses; far above real files.
MAX_DAGS_PER_FILE = 10_000
_INSERT_BATCH = 1_000
_NOW = sa.func.clock_timestamp()


def _paths(values: Sequence[str]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, list(values), type_=ARRAY(sa.Text()))


# -------------------------------------------------------------------------------- snapshots
@dataclass(frozen=True, slots=True, kw_only=True)
class DagFileRow:
    """A DAG file as the store knows it; content_hash is that of its last clean parse."""

    path: str
    content_hash: str | None
    is_present: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    next_parse_at: datetime
    last_parsed_at: datetime | None
    last_parse_ms: float | None
    parsed_by: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportErrorRow:
    """The error that stopped a DAG file (or some of its DAGs) from loading."""

    path: str
    error: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedDag:
    """One DAG found in a file: its spec, the JSON stored for it, and the spec's hash."""

    spec: DagSpec
    data: Mapping[str, Any]
    spec_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FileResult:
    """What parsing one file produced; file_hash is None when the parse never finished."""

    path: str
    dags: tuple[ParsedDag, ...] = ()
    error: str | None = None
    file_hash: str | None = None
    parse_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """What storing one file's result changed."""

    new_dags: tuple[str, ...] = ()
    rewritten: tuple[str, ...] = ()  # serialized_dag rows written (new or changed spec)
    deactivated: tuple[str, ...] = ()


def _file_row(r: sa.RowMapping) -> DagFileRow:
    return DagFileRow(**{f: r[f] for f in DagFileRow.__dataclass_fields__})


# -------------------------------------------------------------------------------- discovery
def claim_discovery(conn: Connection, *, member_id: str, now: datetime, until: datetime) -> bool:
    """Take the folder-listing lease if it is free or expired: one replica lists the dags
    folder per parse interval. Concurrent claimers serialise on the lease row; one wins."""
    stmt = pg_insert(lease).values(name=DISCOVERY_LEASE, owner=member_id, expires_at=until)
    stmt = stmt.on_conflict_do_update(
        index_elements=[lease.c.name],
        set_={"owner": member_id, "expires_at": until},
        where=lease.c.expires_at.is_(None) | (lease.c.expires_at <= now),
    )
    return conn.execute(stmt.returning(lease.c.name)).first() is not None


def upsert_present_files(conn: Connection, paths: Sequence[str], *, now: datetime) -> int:
    """Record files found on disk: new paths, and paths that came back, are due at `now`.
    Known present files are not touched (nor locked). Returns how many were new or back."""
    changed = 0
    ordered = sorted(paths)
    for i in range(0, len(ordered), _INSERT_BATCH):
        batch = ordered[i : i + _INSERT_BATCH]
        inserted = conn.execute(
            pg_insert(dag_file)
            .values([{"path": p, "next_parse_at": now} for p in batch])
            .on_conflict_do_nothing()
            .returning(dag_file.c.path)
        )
        changed += len(inserted.all())
        back = conn.execute(
            sa.update(dag_file)
            .where(~dag_file.c.is_present, dag_file.c.path == sa.any_(_paths(batch)))
            .values(is_present=True, next_parse_at=now)
        )
        changed += back.rowcount
    return changed


def mark_missing_files(
    conn: Connection, present: Sequence[str], *, limit: int
) -> tuple[list[str], list[str]]:
    """Mark up to `limit` files not in `present` as gone, deactivate their DAGs and drop their
    import errors. Returns (paths, dag_ids). Lock: `FOR UPDATE OF dag_file SKIP LOCKED` (a file
    whose result is being stored is taken next time), then its dag rows."""
    gone = (
        sa.select(dag_file.c.path)
        .where(dag_file.c.is_present, dag_file.c.path != sa.all_(_paths(present)))
        .order_by(dag_file.c.path)
        .limit(limit)
        .with_for_update(of=dag_file, skip_locked=True)
        .cte("gone")
    )
    paths = list(
        conn.execute(
            sa.update(dag_file)
            .where(dag_file.c.path == gone.c.path)
            .values(is_present=False, lease_owner=None, lease_expires_at=None)
            .returning(dag_file.c.path)
        ).scalars()
    )
    if not paths:
        return [], []
    dag_ids = _deactivate(conn, dag.c.fileloc == sa.any_(_paths(paths)))
    conn.execute(sa.delete(import_error).where(import_error.c.path == sa.any_(_paths(paths))))
    return sorted(paths), dag_ids


def _deactivate(conn: Connection, which: sa.ColumnElement[bool]) -> list[str]:
    # Lock: dag rows in dag_id order, waiting (run creation holds them only briefly).
    victims = (
        sa.select(dag.c.dag_id)
        .where(which, dag.c.is_active)
        .order_by(dag.c.dag_id)
        .limit(MAX_DAGS_PER_FILE)
        .with_for_update(of=dag)
        .scalar_subquery()
    )
    result = conn.execute(
        sa.update(dag)
        .where(dag.c.dag_id.in_(victims))
        .values(is_active=False, updated_at=_NOW)
        .returning(dag.c.dag_id)
    )
    return sorted(result.scalars())


# ------------------------------------------------------------------------------------ claim
def _owner_alive() -> sa.Exists:
    member = scheduler_member
    return (
        sa.select(member.c.id)
        .where(member.c.id == dag_file.c.lease_owner, member.c.state == "alive")
        .exists()
    )


def _lease_is_free(member_id: str, now: datetime) -> sa.ColumnElement[bool]:
    return (
        dag_file.c.lease_owner.is_(None)
        | (dag_file.c.lease_expires_at <= now)
        | (dag_file.c.lease_owner == member_id)
        | ~_owner_alive()
    )


def claim_due_files(
    conn: Connection, *, member_id: str, now: datetime, lease_until: datetime, limit: int
) -> list[DagFileRow]:
    """Lease up to `limit` present files due at `now` whose lease is free, expired, ours, or
    held by a member that is not alive. Lock: `FOR UPDATE OF dag_file SKIP LOCKED`, so two
    replicas never lease the same file; commit at once so that the lease is what excludes."""
    due = (
        sa.select(dag_file.c.path)
        .where(
            dag_file.c.is_present, dag_file.c.next_parse_at <= now, _lease_is_free(member_id, now)
        )
        .order_by(dag_file.c.next_parse_at, dag_file.c.path)
        .limit(limit)
        .with_for_update(of=dag_file, skip_locked=True)
        .cte("due")
    )
    rows = conn.execute(
        sa.update(dag_file)
        .where(dag_file.c.path == due.c.path)
        .values(lease_owner=member_id, lease_expires_at=lease_until)
        .returning(*dag_file.c)
    ).mappings()
    return sorted((_file_row(r) for r in rows), key=lambda f: (f.next_parse_at, f.path))


def next_claimable_at(conn: Connection, *, member_id: str, now: datetime) -> datetime | None:
    """When `member_id` may next lease a present file: its next parse time, or the end of a
    live lease held by another member if that is later. None when no file is present. A
    parser sleeping until then wakes with its peers, so the due files are shared out."""
    claimable = sa.case(
        (_lease_is_free(member_id, now), dag_file.c.next_parse_at),
        else_=sa.func.greatest(dag_file.c.next_parse_at, dag_file.c.lease_expires_at),
    )
    return conn.execute(
        sa.select(sa.func.min(claimable)).where(dag_file.c.is_present)
    ).scalar_one_or_none()


def release_dead_leases(conn: Connection, *, member_id: str, limit: int) -> int:
    """Clear up to `limit` leases held by members that are not alive (dead, stopped, gone).
    Lock: `FOR UPDATE OF dag_file SKIP LOCKED`."""
    stale = (
        sa.select(dag_file.c.path)
        .where(
            dag_file.c.lease_owner.is_not(None),
            dag_file.c.lease_owner != member_id,
            ~_owner_alive(),
        )
        .limit(limit)
        .with_for_update(of=dag_file, skip_locked=True)
        .cte("stale")
    )
    result = conn.execute(
        sa.update(dag_file)
        .where(dag_file.c.path == stale.c.path)
        .values(lease_owner=None, lease_expires_at=None)
    )
    return int(result.rowcount)


# ------------------------------------------------------------------------------------ store
@dataclass(frozen=True, slots=True, kw_only=True)
class _Existing:
    """A dag row the file's result is about to update, with its stored spec hash."""

    values: Mapping[str, Any]
    is_active: bool
    last_automated: DataInterval | None
    spec_hash: str | None


def schedule_values(spec: DagSpec, last: DataInterval | None, now: datetime) -> dict[str, Any]:
    """The next-run columns of a dag row, resuming after `last` (None: from the start):
    create_after is `now` when a run is already due, else when the next run becomes due."""
    due = due_runs(spec, last, now, 0, 1)
    run = due.runs[0] if due.runs else due.next_run
    return {
        "next_dagrun": run.logical_date if run else None,
        "next_dagrun_interval_start": run.data_interval.start if run else None,
        "next_dagrun_interval_end": run.data_interval.end if run else None,
        "next_dagrun_create_after": now if due.runs else (run.run_after if run else None),
    }


_DAG_FIELDS = (
    "fileloc",
    "description",
    "tags",
    "schedule_label",
    "max_active_runs",
    "max_active_tasks",
)


def _dag_values(spec: DagSpec, path: str) -> dict[str, Any]:
    return {
        "fileloc": path,
        "description": spec.description,
        "tags": list(spec.tags),
        "schedule_label": spec.schedule.label,
        "max_active_runs": spec.max_active_runs,
        "max_active_tasks": spec.max_active_tasks,
    }


def _lock_leased_file(conn: Connection, path: str, member_id: str) -> bool:
    # Lock: our own dag_file row, first in this transaction's order (dag_file → dag). A lease
    # taken over by another replica (we were slow or declared dead) makes our result stale.
    row = conn.execute(
        sa.select(dag_file.c.path)
        .where(dag_file.c.path == path, dag_file.c.lease_owner == member_id)
        .with_for_update(of=dag_file)
    ).first()
    return row is not None


def _lock_dags(conn: Connection, dag_ids: Sequence[str]) -> dict[str, _Existing]:
    if not dag_ids:
        return {}
    rows = conn.execute(
        sa.select(
            *(dag.c[name] for name in ("dag_id", "is_active", *_DAG_FIELDS)),
            dag.c.last_automated_interval_start.label("start"),
            dag.c.last_automated_interval_end.label("end"),
            serialized_dag.c.spec_hash,
        )
        .select_from(dag.outerjoin(serialized_dag, serialized_dag.c.dag_id == dag.c.dag_id))
        .where(dag.c.dag_id == sa.any_(_paths(dag_ids)))
        .order_by(dag.c.dag_id)  # one lock order for every parser: no deadlock between them
        .limit(len(dag_ids))
        .with_for_update(of=dag)
    ).mappings()
    return {
        r["dag_id"]: _Existing(
            values={key: r[key] for key in _DAG_FIELDS},
            is_active=r["is_active"],
            last_automated=(
                DataInterval(start=r["start"], end=r["end"]) if r["start"] and r["end"] else None
            ),
            spec_hash=r["spec_hash"],
        )
        for r in rows
    }


def _insert_new_dags(
    conn: Connection, new: Sequence[ParsedDag], path: str, *, now: datetime, paused: bool
) -> set[str]:
    if not new:
        return set()
    values = [
        {
            "dag_id": d.spec.dag_id,
            **_dag_values(d.spec, path),
            **schedule_values(d.spec, None, now),
            "is_active": True,
            "is_paused": (
                paused if d.spec.is_paused_upon_creation is None else d.spec.is_paused_upon_creation
            ),
        }
        for d in sorted(new, key=lambda d: d.spec.dag_id)
    ]
    result = conn.execute(
        pg_insert(dag).values(values).on_conflict_do_nothing().returning(dag.c.dag_id)
    )
    return set(result.scalars())


def _update_dag(
    conn: Connection, parsed: ParsedDag, old: _Existing, path: str, now: datetime
) -> None:
    wanted = _dag_values(parsed.spec, path)
    changes: dict[str, Any] = {k: v for k, v in wanted.items() if old.values.get(k) != v}
    if not old.is_active:
        changes["is_active"] = True
    # A changed spec may have a new schedule, start or end date: resume after the last
    # automated run, as Airflow recomputes next_dagrun whenever it writes a parsed DAG.
    if not old.is_active or old.spec_hash != parsed.spec_hash:
        changes.update(schedule_values(parsed.spec, old.last_automated, now))
    if changes:
        conn.execute(
            sa.update(dag)
            .where(dag.c.dag_id == parsed.spec.dag_id)
            .values(**changes, updated_at=_NOW)
        )


def _write_serialized(
    conn: Connection, dags: Sequence[ParsedDag], path: str, file_hash: str
) -> None:
    if not dags:
        return
    values = [
        {"dag_id": d.spec.dag_id, "data": dict(d.data), "spec_hash": d.spec_hash} for d in dags
    ]
    stmt = pg_insert(serialized_dag).values(
        [{**v, "fileloc": path, "file_hash": file_hash} for v in values]
    )
    updated = {k: stmt.excluded[k] for k in ("fileloc", "data", "spec_hash", "file_hash")}
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[serialized_dag.c.dag_id], set_={**updated, "updated_at": _NOW}
        )
    )


def _write_import_error(conn: Connection, path: str, error: str | None, now: datetime) -> None:
    if error is None:
        conn.execute(sa.delete(import_error).where(import_error.c.path == path))
        return
    stmt = pg_insert(import_error).values(path=path, error=error, created_at=now)
    # As Airflow's update_import_errors: the time is that of the latest parse that failed.
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[import_error.c.path],
            set_={"error": stmt.excluded.error, "created_at": stmt.excluded.created_at},
        )
    )


def _finish_file(
    conn: Connection,
    result: FileResult,
    *,
    member_id: str,
    now: datetime,
    next_parse_at: datetime,
) -> None:
    conn.execute(
        sa.update(dag_file)
        .where(dag_file.c.path == result.path, dag_file.c.lease_owner == member_id)
        .values(
            content_hash=result.file_hash if result.error is None else None,
            last_parsed_at=now,
            last_parse_ms=result.parse_ms,
            parsed_by=member_id,
            next_parse_at=next_parse_at,
            lease_owner=None,
            lease_expires_at=None,
        )
    )


def store_file_result(
    conn: Connection,
    result: FileResult,
    *,
    member_id: str,
    now: datetime,
    next_parse_at: datetime,
    paused_at_creation: bool,
) -> StoredFile | None:
    """Apply one parsed file in the caller's transaction: upsert its DAGs (new ones paused as
    configured, with their first run scheduled), rewrite serialized_dag only where the spec hash
    changed, deactivate DAGs the file no longer defines, write or clear its import error, and
    re-arm the file. None (nothing written) when our lease on the file was taken over."""
    if not _lock_leased_file(conn, result.path, member_id):
        return None
    dags = sorted(result.dags, key=lambda d: d.spec.dag_id)[:MAX_DAGS_PER_FILE]
    ids = [d.spec.dag_id for d in dags]
    existing = _lock_dags(conn, ids)
    fresh = [d for d in dags if d.spec.dag_id not in existing]
    inserted = _insert_new_dags(conn, fresh, result.path, now=now, paused=paused_at_creation)
    # Another file inserted the same dag_id meanwhile: the last writer wins, as in Airflow.
    existing.update(
        _lock_dags(conn, [d.spec.dag_id for d in fresh if d.spec.dag_id not in inserted])
    )
    for d in dags:
        if d.spec.dag_id in existing:
            _update_dag(conn, d, existing[d.spec.dag_id], result.path, now)
    changed = [
        d
        for d in dags
        if d.spec.dag_id in inserted
        or existing[d.spec.dag_id].spec_hash != d.spec_hash
        or existing[d.spec.dag_id].values.get("fileloc") != result.path
    ]
    _write_serialized(conn, changed, result.path, result.file_hash or "")
    deactivated = _deactivate(
        conn, (dag.c.fileloc == result.path) & (dag.c.dag_id != sa.all_(_paths(ids)))
    )
    _write_import_error(conn, result.path, result.error, now)
    _finish_file(conn, result, member_id=member_id, now=now, next_parse_at=next_parse_at)
    return StoredFile(
        new_dags=tuple(sorted(inserted)),
        rewritten=tuple(d.spec.dag_id for d in changed),
        deactivated=tuple(deactivated),
    )


def rearm_file(conn: Connection, path: str, *, member_id: str, next_parse_at: datetime) -> bool:
    """Release our lease on a file whose content is unchanged since its last clean parse and
    set when it is next due; False when the lease was taken over meanwhile."""
    result = conn.execute(
        sa.update(dag_file)
        .where(dag_file.c.path == path, dag_file.c.lease_owner == member_id)
        .values(next_parse_at=next_parse_at, lease_owner=None, lease_expires_at=None)
    )
    return result.rowcount == 1


# --------------------------------------------------------------------------------- listings
def list_dag_files(
    conn: Connection, *, limit: int, include_missing: bool = False
) -> list[DagFileRow]:
    """DAG files by path, with their lease owner and last parse (for `cluster status`)."""
    q = sa.select(dag_file).order_by(dag_file.c.path).limit(limit)
    if not include_missing:
        q = q.where(dag_file.c.is_present)
    return [_file_row(r) for r in conn.execute(q).mappings()]


def list_import_errors(conn: Connection, *, limit: int) -> list[ImportErrorRow]:
    """Current import errors by path."""
    rows = conn.execute(
        sa.select(import_error).order_by(import_error.c.path).limit(limit)
    ).mappings()
    return [
        ImportErrorRow(path=r["path"], error=r["error"], created_at=r["created_at"]) for r in rows
    ]


def _bounded_count(conn: Connection, q: sa.Select[Any], cap: int) -> int:
    inner = q.limit(cap).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar_one())


def count_active_dags(conn: Connection, *, cap: int) -> int:
    """Active DAGs (the DAG bag size), counting at most `cap`."""
    return _bounded_count(conn, sa.select(dag.c.dag_id).where(dag.c.is_active), cap)


def count_import_errors(conn: Connection, *, cap: int) -> int:
    """Files with an import error, counting at most `cap`."""
    return _bounded_count(conn, sa.select(import_error.c.path), cap)
