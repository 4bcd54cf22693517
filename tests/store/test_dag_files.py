"""The parse step's SQL: file leases (SKIP LOCKED, expiry, dead owners), discovery sync, and
what storing one file's result writes to dag, serialized_dag, import_error and dag_file."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.factories import T0
from tradewind.dag import DAG
from tradewind.operators import EmptyOperator
from tradewind.serialization import dag_to_spec, spec_hash, spec_to_dict
from tradewind_cluster.store import dag_files as df
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.schema import dag, dag_file, import_error, serialized_dag

pytestmark = pytest.mark.store

NOW = T0 + timedelta(days=10)
LEASE = NOW + timedelta(seconds=65)


def parsed(dag_id: str, path: str, *, tasks: int = 1, **kwargs: Any) -> df.ParsedDag:
    """A ParsedDag as the processor builds it from the runner's output."""
    kwargs.setdefault("schedule", "@daily")
    kwargs.setdefault("start_date", datetime(2026, 1, 1, tzinfo=UTC))
    with DAG(dag_id, **kwargs) as built:
        for i in range(tasks):
            EmptyOperator(task_id=f"t{i}")
    built.fileloc = path
    spec = dag_to_spec(built)
    return df.ParsedDag(spec=spec, data=spec_to_dict(spec), spec_hash=spec_hash(spec))


def add_files(database: Database, *paths: str, due: datetime = NOW) -> None:
    database.transaction(lambda c: df.upsert_present_files(c, list(paths), now=due))


def register(database: Database, *member_ids: str) -> None:
    def _do(conn: sa.Connection) -> None:
        for m in member_ids:
            members.register_member(conn, member_id=m, name=m, hostname="h", pid=1, version="test")

    database.transaction(_do)


def claim(database: Database, member: str, *, now: datetime = NOW, limit: int = 100) -> list[str]:
    rows = database.transaction(
        lambda c: df.claim_due_files(
            c, member_id=member, now=now, lease_until=now + timedelta(seconds=65), limit=limit
        )
    )
    return [r.path for r in rows]


def store(
    database: Database, result: df.FileResult, member: str = "a", *, now: datetime = NOW
) -> df.StoredFile | None:
    return database.transaction(
        lambda c: df.store_file_result(
            c,
            result,
            member_id=member,
            now=now,
            next_parse_at=now + timedelta(seconds=30),
            paused_at_creation=True,
        )
    )


def rows(database: Database, table: sa.Table, **where: object) -> list[sa.RowMapping]:
    q = sa.select(table)
    for key, value in where.items():
        q = q.where(table.c[key] == value)
    return database.read(lambda c: list(c.execute(q).mappings()))


def one(database: Database, table: sa.Table, **where: object) -> sa.RowMapping:
    (found,) = rows(database, table, **where)
    return found


# ------------------------------------------------------------------------------------ claims
def test_claim_leases_due_present_files_only(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/due.py")
    add_files(database, "/d/later.py", due=NOW + timedelta(seconds=1))
    add_files(database, "/d/gone.py")
    database.transaction(lambda c: df.mark_missing_files(c, ["/d/due.py", "/d/later.py"], limit=10))

    assert claim(database, "a") == ["/d/due.py"]
    row = one(database, dag_file, path="/d/due.py")
    assert row["lease_owner"] == "a"
    assert row["lease_expires_at"] == LEASE


def test_a_live_lease_excludes_others_until_it_expires(database: Database) -> None:
    register(database, "a", "b")
    add_files(database, "/d/x.py")
    assert claim(database, "a") == ["/d/x.py"]
    assert claim(database, "b") == []
    assert claim(database, "a") == ["/d/x.py"]  # our own lease: a restart of the same step
    assert claim(database, "b", now=LEASE - timedelta(microseconds=1)) == []
    assert claim(database, "b", now=LEASE) == ["/d/x.py"]


def test_leases_of_a_member_that_is_not_alive_are_taken_over_at_once(database: Database) -> None:
    register(database, "a", "b")
    add_files(database, "/d/x.py", "/d/y.py")
    assert claim(database, "a") == ["/d/x.py", "/d/y.py"]
    assert claim(database, "b") == []
    seq = database.read(lambda c: members.list_members(c)[0].heartbeat_seq)
    assert database.transaction(
        lambda c: members.declare_dead(c, "a", seen_seq=seq, by="b", reason="test")
    )
    assert claim(database, "b") == ["/d/x.py", "/d/y.py"]
    # The dead member's late result is refused: its lease is gone.
    assert store(database, df.FileResult(path="/d/x.py", file_hash="h"), "a") is None
    assert one(database, dag_file, path="/d/x.py")["last_parsed_at"] is None


def test_concurrent_claims_split_files_with_no_overlap(database: Database) -> None:
    register(database, "a", "b")
    add_files(database, *[f"/d/f{i:02d}.py" for i in range(20)])
    locked, release = threading.Event(), threading.Event()
    claimed: dict[str, list[str]] = {}

    def first() -> None:
        with database.engine.begin() as conn:
            got = df.claim_due_files(conn, member_id="a", now=NOW, lease_until=LEASE, limit=8)
            claimed["a"] = [r.path for r in got]
            locked.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert locked.wait(10)
    claimed["b"] = claim(database, "b")  # a's rows are still locked, uncommitted: skipped
    release.set()
    t.join(10)
    assert len(claimed["a"]) == 8
    assert len(claimed["b"]) == 12
    assert set(claimed["a"]).isdisjoint(claimed["b"])


def test_release_dead_leases_clears_only_leases_of_members_not_alive(database: Database) -> None:
    register(database, "a", "b")
    add_files(database, "/d/x.py", "/d/y.py")
    claim(database, "a", limit=1)
    claim(database, "ghost")  # no member row at all
    released = database.transaction(lambda c: df.release_dead_leases(c, member_id="b", limit=10))
    assert released == 1
    assert one(database, dag_file, path="/d/x.py")["lease_owner"] == "a"
    assert one(database, dag_file, path="/d/y.py")["lease_owner"] is None


def test_next_claimable_at_is_the_earliest_time_a_file_can_be_leased(database: Database) -> None:
    def next_at(member: str, now: datetime = NOW) -> datetime | None:
        return database.read(lambda c: df.next_claimable_at(c, member_id=member, now=now))

    register(database, "a", "b")
    assert next_at("a") is None  # no file at all
    add_files(database, "/d/only.py")
    assert claim(database, "b") == ["/d/only.py"]
    assert next_at("a") == LEASE  # the only file is b's until its lease ends
    assert next_at("b") == NOW
    database.transaction(lambda c: df.mark_missing_files(c, [], limit=10))
    assert next_at("a") is None  # gone: nothing present
    add_files(database, "/d/x.py", due=NOW + timedelta(seconds=3))
    add_files(database, "/d/y.py", due=NOW + timedelta(seconds=7))
    add_files(database, "/d/gone.py", due=NOW - timedelta(seconds=1))
    database.transaction(lambda c: df.mark_missing_files(c, ["/d/x.py", "/d/y.py"], limit=10))
    assert next_at("a") == NOW + timedelta(seconds=3)  # a missing file is never due

    # b leases x: a can lease it only when b's lease ends, so y is a's next; x stays b's own.
    now = NOW + timedelta(seconds=3)
    assert claim(database, "b", now=now, limit=1) == ["/d/x.py"]
    assert next_at("a", now) == NOW + timedelta(seconds=7)
    assert next_at("b", now) == NOW + timedelta(seconds=3)

    # A lease held by a member that is not alive does not delay anyone.
    seq = database.read(lambda c: {m.id: m.heartbeat_seq for m in members.list_members(c)})["b"]
    assert database.transaction(
        lambda c: members.declare_dead(c, "b", seen_seq=seq, by="a", reason="test")
    )
    assert next_at("a", now) == NOW + timedelta(seconds=3)


# --------------------------------------------------------------------------------- discovery
def test_discovery_lease_has_one_holder_per_interval(database: Database) -> None:
    until = NOW + timedelta(seconds=30)

    def take(member: str, now: datetime) -> bool:
        return database.transaction(
            lambda c: df.claim_discovery(c, member_id=member, now=now, until=now + (until - NOW))
        )

    assert take("a", NOW)
    assert not take("b", NOW)
    assert not take("a", NOW + timedelta(seconds=29))
    assert take("b", until)


def test_missing_files_deactivate_their_dags_and_drop_their_errors(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py", "/d/y.py")
    claim(database, "a")
    store(database, df.FileResult(path="/d/x.py", dags=(parsed("dx", "/d/x.py"),), file_hash="h"))
    store(database, df.FileResult(path="/d/y.py", error="boom", file_hash="h"))

    removed, dag_ids = database.transaction(lambda c: df.mark_missing_files(c, [], limit=10))
    assert (removed, dag_ids) == (["/d/x.py", "/d/y.py"], ["dx"])
    assert one(database, dag, dag_id="dx")["is_active"] is False
    assert rows(database, import_error) == []
    assert claim(database, "a", now=NOW + timedelta(days=1)) == []

    # The file comes back: due at once again.
    back = NOW + timedelta(hours=1)
    assert database.transaction(lambda c: df.upsert_present_files(c, ["/d/x.py"], now=back)) == 1
    assert claim(database, "a", now=back) == ["/d/x.py"]


def test_mark_missing_files_is_bounded(database: Database) -> None:
    add_files(database, *[f"/d/f{i}.py" for i in range(5)])
    removed, _ = database.transaction(lambda c: df.mark_missing_files(c, ["/d/f0.py"], limit=3))
    assert len(removed) == 3
    removed, _ = database.transaction(lambda c: df.mark_missing_files(c, ["/d/f0.py"], limit=3))
    assert len(removed) == 1


# ------------------------------------------------------------------------------------- store
def test_a_new_dag_gets_its_row_spec_and_first_run(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py")
    claim(database, "a")
    p = parsed("dx", "/d/x.py", tags=["t1"], description="hello", max_active_runs=3)
    stored = store(database, df.FileResult(path="/d/x.py", dags=(p,), file_hash="fh", parse_ms=12))

    assert stored == df.StoredFile(new_dags=("dx",), rewritten=("dx",))
    row = one(database, dag, dag_id="dx")
    assert row["fileloc"] == "/d/x.py"
    assert row["is_active"] is True
    assert row["is_paused"] is True  # dags_are_paused_at_creation
    assert row["tags"] == ["t1"]
    assert row["description"] == "hello"
    assert row["schedule_label"] == "@daily"
    assert row["max_active_runs"] == 3
    # Runs are due since 2026-01-01: the DAG is claimable for run creation now.
    assert row["next_dagrun_create_after"] == NOW
    assert row["next_dagrun"] == datetime(2026, 1, 1, tzinfo=UTC)
    sd = one(database, serialized_dag, dag_id="dx")
    assert sd["spec_hash"] == p.spec_hash
    assert sd["file_hash"] == "fh"
    assert sd["data"] == p.data
    f = one(database, dag_file, path="/d/x.py")
    assert (f["lease_owner"], f["parsed_by"], f["content_hash"]) == (None, "a", "fh")
    assert f["last_parsed_at"] == NOW
    assert f["last_parse_ms"] == 12
    assert f["next_parse_at"] == NOW + timedelta(seconds=30)


def test_first_run_in_the_future_and_pause_override(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py")
    claim(database, "a")
    start = NOW + timedelta(days=2)
    p = parsed("dx", "/d/x.py", start_date=start, is_paused_upon_creation=False)
    store(database, df.FileResult(path="/d/x.py", dags=(p,), file_hash="fh"))
    row = one(database, dag, dag_id="dx")
    assert row["is_paused"] is False
    assert row["next_dagrun"] == start
    assert row["next_dagrun_create_after"] == start + timedelta(days=1)


def reparse(database: Database, result: df.FileResult, at: datetime) -> df.StoredFile | None:
    assert claim(database, "a", now=at) == [result.path]
    return store(database, result, now=at)


def test_unchanged_spec_is_not_rewritten_and_a_changed_one_is(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py")
    claim(database, "a")
    p = parsed("dx", "/d/x.py")
    store(database, df.FileResult(path="/d/x.py", dags=(p,), file_hash="h1"))
    before = one(database, serialized_dag, dag_id="dx")["updated_at"]
    dag_before = one(database, dag, dag_id="dx")["updated_at"]

    later = NOW + timedelta(minutes=1)
    again = reparse(database, df.FileResult(path="/d/x.py", dags=(p,), file_hash="h2"), later)
    assert again == df.StoredFile()
    assert one(database, serialized_dag, dag_id="dx")["updated_at"] == before
    assert one(database, dag, dag_id="dx")["updated_at"] == dag_before

    changed = parsed("dx", "/d/x.py", tasks=2)
    later2 = later + timedelta(minutes=1)
    stored = reparse(
        database, df.FileResult(path="/d/x.py", dags=(changed,), file_hash="h3"), later2
    )
    assert stored == df.StoredFile(rewritten=("dx",))
    sd = one(database, serialized_dag, dag_id="dx")
    assert sd["updated_at"] > before
    assert sd["spec_hash"] == changed.spec_hash


def test_a_changed_schedule_resumes_after_the_last_automated_run(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py")
    claim(database, "a")
    store(database, df.FileResult(path="/d/x.py", dags=(parsed("dx", "/d/x.py"),), file_hash="h"))
    last_end = NOW - timedelta(hours=1)
    database.transaction(
        lambda c: c.execute(
            sa.update(dag)
            .where(dag.c.dag_id == "dx")
            .values(
                last_automated_interval_start=last_end - timedelta(days=1),
                last_automated_interval_end=last_end,
                next_dagrun_create_after=None,
            )
        )
    )
    weekly = parsed("dx", "/d/x.py", schedule=timedelta(days=7))
    later = NOW + timedelta(minutes=1)
    reparse(database, df.FileResult(path="/d/x.py", dags=(weekly,), file_hash="h2"), later)
    row = one(database, dag, dag_id="dx")
    assert row["schedule_label"] == "7 days, 0:00:00"
    assert row["next_dagrun"] == last_end
    assert row["next_dagrun_create_after"] == last_end + timedelta(days=7)
    assert row["is_paused"] is True  # a re-parse never touches is_paused


def test_dags_the_file_stops_defining_are_deactivated(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py")
    claim(database, "a")
    both = (parsed("d1", "/d/x.py"), parsed("d2", "/d/x.py"))
    store(database, df.FileResult(path="/d/x.py", dags=both, file_hash="h"))
    later = NOW + timedelta(minutes=1)
    stored = reparse(database, df.FileResult(path="/d/x.py", dags=both[:1], file_hash="h2"), later)
    assert stored == df.StoredFile(deactivated=("d2",))
    assert one(database, dag, dag_id="d2")["is_active"] is False
    assert one(database, dag, dag_id="d1")["is_active"] is True

    # Back in the file: active again, not a new DAG, its serialized form not rewritten.
    later2 = later + timedelta(minutes=1)
    stored = reparse(database, df.FileResult(path="/d/x.py", dags=both, file_hash="h"), later2)
    assert stored == df.StoredFile()
    assert one(database, dag, dag_id="d2")["is_active"] is True


def test_import_error_written_refreshed_and_cleared(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py")
    claim(database, "a")
    store(database, df.FileResult(path="/d/x.py", dags=(parsed("dx", "/d/x.py"),), file_hash="h"))
    t1 = NOW + timedelta(minutes=1)
    reparse(database, df.FileResult(path="/d/x.py", error="SyntaxError: nope", file_hash="h2"), t1)
    err = one(database, import_error, path="/d/x.py")
    assert (err["error"], err["created_at"]) == ("SyntaxError: nope", t1)
    assert one(database, dag, dag_id="dx")["is_active"] is False
    assert one(database, dag_file, path="/d/x.py")["content_hash"] is None

    t2 = t1 + timedelta(minutes=1)
    reparse(database, df.FileResult(path="/d/x.py", error="SyntaxError: nope", file_hash="h2"), t2)
    assert one(database, import_error, path="/d/x.py")["created_at"] == t2  # as Airflow

    listed = database.read(lambda c: df.list_import_errors(c, limit=10))
    assert [e.path for e in listed] == ["/d/x.py"]
    assert database.read(lambda c: df.count_import_errors(c, cap=10)) == 1

    t3 = t2 + timedelta(minutes=1)
    fixed = df.FileResult(path="/d/x.py", dags=(parsed("dx", "/d/x.py"),), file_hash="h")
    reparse(database, fixed, t3)
    assert rows(database, import_error) == []
    assert one(database, dag, dag_id="dx")["is_active"] is True
    assert database.read(lambda c: df.count_active_dags(c, cap=10)) == 1


def test_a_dag_moving_to_another_file_follows_the_last_writer(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py", "/d/y.py")
    claim(database, "a")
    store(database, df.FileResult(path="/d/x.py", dags=(parsed("dx", "/d/x.py"),), file_hash="h"))
    moved = parsed("dx", "/d/y.py")
    stored = store(database, df.FileResult(path="/d/y.py", dags=(moved,), file_hash="h"))
    assert stored == df.StoredFile(rewritten=("dx",))
    assert one(database, dag, dag_id="dx")["fileloc"] == "/d/y.py"
    assert one(database, serialized_dag, dag_id="dx")["fileloc"] == "/d/y.py"
    # The old file no longer defining it does not deactivate it: it lives in y.py now.
    t1 = NOW + timedelta(minutes=1)
    assert claim(database, "a", now=t1) == ["/d/x.py", "/d/y.py"]
    assert store(database, df.FileResult(path="/d/x.py", file_hash="h"), now=t1) == df.StoredFile()
    assert one(database, dag, dag_id="dx")["is_active"] is True


def test_rearm_and_listings(database: Database) -> None:
    register(database, "a")
    add_files(database, "/d/x.py", "/d/y.py")
    claim(database, "a", limit=1)
    listed = database.read(lambda c: df.list_dag_files(c, limit=10))
    assert [(f.path, f.lease_owner) for f in listed] == [("/d/x.py", "a"), ("/d/y.py", None)]
    later = NOW + timedelta(seconds=30)
    assert database.transaction(
        lambda c: df.rearm_file(c, "/d/x.py", member_id="a", next_parse_at=later)
    )
    assert not database.transaction(
        lambda c: df.rearm_file(c, "/d/x.py", member_id="a", next_parse_at=later)
    )
    row = one(database, dag_file, path="/d/x.py")
    assert (row["lease_owner"], row["next_parse_at"]) == (None, later)
