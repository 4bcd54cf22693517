"""SKIP LOCKED claims split rows between concurrent sessions with no overlap; run uniqueness."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.support.factories import T0, insert_dag, insert_run, insert_ti
from tradewind.states import TaskInstanceState
from tradewind_cluster.store.dags import any_due_dags, claim_due_dags
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.examine import ExamineRow, claim_runs_with_tis

pytestmark = pytest.mark.store


def test_two_sessions_claim_disjoint_sets_covering_all_due_dags(database: Database) -> None:
    def _setup(conn: sa.Connection) -> None:
        for i in range(20):
            insert_dag(conn, f"due_{i:02d}", due=T0)
        insert_dag(conn, "later", due=T0 + timedelta(days=9))
        insert_dag(conn, "paused", due=T0, is_paused=True)

    database.transaction(_setup)
    now = T0 + timedelta(hours=1)
    first_locked = threading.Event()
    release = threading.Event()
    claimed: dict[str, list[str]] = {}

    def first() -> None:
        with database.engine.begin() as conn:
            claimed["a"] = [d.dag_id for d in claim_due_dags(conn, now=now, limit=8)]
            first_locked.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert first_locked.wait(10)
    with database.engine.begin() as conn:
        claimed["b"] = [d.dag_id for d in claim_due_dags(conn, now=now, limit=100)]
    release.set()
    t.join(10)

    assert len(claimed["a"]) == 8
    assert set(claimed["a"]).isdisjoint(claimed["b"])
    assert set(claimed["a"]) | set(claimed["b"]) == {f"due_{i:02d}" for i in range(20)}


def test_the_probe_finds_due_work_exactly_where_the_claim_would(database: Database) -> None:
    """The loop skips the claim's transaction when the probe finds nothing: the probe must
    never miss a DAG the claim would take (a run due, or queued runs waiting to start)."""
    now = T0 + timedelta(hours=1)

    def probe_and_claim() -> tuple[bool, list[str]]:
        due = database.read(lambda c: any_due_dags(c, now=now))
        got = database.transaction(lambda c: claim_due_dags(c, now=now, limit=100))
        return due, [d.dag_id for d in got]

    database.transaction(lambda c: insert_dag(c, "later", due=T0 + timedelta(days=9)))
    database.transaction(lambda c: insert_dag(c, "paused", due=T0, is_paused=True))
    database.transaction(lambda c: insert_dag(c, "inactive", due=T0, is_active=False))
    database.transaction(lambda c: insert_dag(c, "unscheduled", due=None))
    assert probe_and_claim() == (False, [])
    database.transaction(
        lambda c: c.execute(
            sa.text("UPDATE dag SET check_runs = true WHERE dag_id = 'unscheduled'")
        )
    )
    assert probe_and_claim() == (True, ["unscheduled"])
    database.transaction(lambda c: c.execute(sa.text("UPDATE dag SET check_runs = false")))
    database.transaction(lambda c: insert_dag(c, "due", due=now))
    assert probe_and_claim() == (True, ["due"])


def test_one_run_per_logical_date_and_per_run_id(database: Database) -> None:
    database.transaction(lambda c: insert_dag(c, "d"))
    database.transaction(lambda c: insert_run(c, "d", day=0, run_id="r1"))
    with pytest.raises(sa.exc.IntegrityError, match="uq_dag_run_dag_id_logical_date"):
        database.transaction(lambda c: insert_run(c, "d", day=0, run_id="r2"))
    with pytest.raises(sa.exc.IntegrityError, match="uq_dag_run_dag_id_run_id"):
        database.transaction(lambda c: insert_run(c, "d", day=1, run_id="r1"))


def test_an_examine_claim_locks_due_runs_with_their_hashes_and_task_instances(
    database: Database,
) -> None:
    now = T0 + timedelta(hours=1)

    ti_a: list[int] = []

    def setup(conn: sa.Connection) -> dict[str, int]:
        insert_dag(conn, "parsed")
        insert_dag(conn, "unparsed")
        conn.execute(
            sa.text(
                "INSERT INTO serialized_dag (dag_id, fileloc, data, spec_hash, file_hash)"
                " VALUES ('parsed', '/dags/parsed.py', '{}', 'h1', 'f1')"
            )
        )
        pks = {
            "two_tis": insert_run(conn, "parsed", day=0),
            "no_tis": insert_run(conn, "parsed", day=1),
            "unparsed": insert_run(conn, "unparsed", day=0),
            "later": insert_run(conn, "parsed", day=2),
            "done": insert_run(conn, "parsed", day=3, state="success"),
        }
        ti_a.append(insert_ti(conn, pks["two_tis"], "a"))
        insert_ti(
            conn,
            pks["two_tis"],
            "b",
            state="up_for_retry",
            try_number=1,
            max_tries=3,
            next_retry_at=now,
            followed=["c"],
            pool="p1",
        )
        insert_ti(conn, pks["unparsed"], "a")
        for name, pk in pks.items():
            due = now + timedelta(hours=1) if name == "later" else now - timedelta(minutes=1)
            conn.execute(
                sa.text("UPDATE dag_run SET examine_after = :t WHERE id = :id"),
                {"t": due, "id": pk},
            )
        return pks

    pks = database.transaction(setup)
    with database.engine.begin() as holder:  # another replica examines one run
        holder.execute(
            sa.text("SELECT id FROM dag_run WHERE id = :id FOR UPDATE"), {"id": pks["two_tis"]}
        )
        while_held = database.transaction(lambda c: claim_runs_with_tis(c, now=now, limit=10))
    assert {r.id for r in while_held.runs} == {pks["no_tis"], pks["unparsed"]}
    claimed = database.transaction(lambda c: claim_runs_with_tis(c, now=now, limit=10))
    assert {r.id for r in claimed.runs} == {pks["two_tis"], pks["no_tis"], pks["unparsed"]}
    assert claimed.spec_hashes == {"parsed": "h1"}  # a DAG never parsed has none
    assert sorted(t.task_id for t in claimed.tis[pks["two_tis"]].values()) == ["a", "b"]
    assert pks["no_tis"] not in claimed.tis
    assert [t.task_id for t in claimed.tis[pks["unparsed"]].values()] == ["a"]
    by_task = claimed.tis[pks["two_tis"]]
    assert by_task["a"] == ExamineRow(
        ti_a[0], "a", TaskInstanceState.NONE, 0, 0, None, None, "default_pool"
    )
    b = by_task["b"]
    assert (b.state, b.try_number, b.max_tries, b.next_retry_at) == (
        TaskInstanceState.UP_FOR_RETRY,
        1,
        3,
        now,
    )
    assert (b.followed, b.pool) == (("c",), "p1")
    limited = database.transaction(lambda c: claim_runs_with_tis(c, now=now, limit=1))
    assert len(limited.runs) == 1  # the limit counts runs, not rows
