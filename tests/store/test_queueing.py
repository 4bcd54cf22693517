"""The critical section on a real PostgreSQL: limits hold under concurrent replicas, pools are
worked in parallel, and tokens are committed with the queued state."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import StarvationReason, admit
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import _DAG_LOCK_SPACE, pools_with_scheduled, queue_pool

pytestmark = pytest.mark.store
NOW = datetime(2026, 2, 1, tzinfo=UTC)


def _pool(conn: sa.Connection, name: str, slots: int) -> None:
    conn.execute(sa.text("INSERT INTO pool (name, slots) VALUES (:n, :s)"), {"n": name, "s": slots})


def test_queues_up_to_pool_slots_with_new_tokens(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        _pool(conn, "p3", 3)
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        for i in range(5):
            insert_ti(conn, run, f"t{i}", state="scheduled", pool="p3", priority_weight=10 - i)

    database.transaction(setup)
    outcome = database.transaction(
        lambda c: queue_pool(c, "p3", member_id="m1", decide=admit, now=NOW)
    )
    assert outcome is not None
    assert [q.task_id for q in outcome.queued] == ["t0", "t1", "t2"]
    assert {(q.token, q.try_number) for q in outcome.queued} == {(1, 1)}
    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT ti.task_id, ti.state, ti.queued_by, a.token FROM task_instance ti "
                "LEFT JOIN task_attempt a ON a.ti_id = ti.id ORDER BY ti.task_id"
            )
        ).all()
    assert rows == [
        ("t0", "queued", "m1", 1),
        ("t1", "queued", "m1", 1),
        ("t2", "queued", "m1", 1),
        ("t3", "scheduled", None, None),
        ("t4", "scheduled", None, None),
    ]
    assert outcome.admission is not None
    assert {s.reason for s in outcome.admission.starved} == {
        StarvationReason.POOL_FULL,
        StarvationReason.POOL_HELD,
    }


def test_a_pool_held_by_another_replica_is_skipped_not_waited_for(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        _pool(conn, "busy", 4)
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        insert_ti(conn, run, "t", state="scheduled", pool="busy")

    database.transaction(setup)
    with database.engine.begin() as holder:
        holder.execute(sa.text("SELECT * FROM pool WHERE name = 'busy' FOR UPDATE"))
        outcome = database.transaction(
            lambda c: queue_pool(c, "busy", member_id="m2", decide=admit, now=NOW)
        )
    assert outcome is None


def test_a_dag_another_replica_is_admitting_for_is_skipped_the_others_queue(
    database: Database,
) -> None:
    def setup(conn: sa.Connection) -> None:
        for d in ("held", "free"):
            insert_dag(conn, d)
            insert_ti(conn, insert_run(conn, d), "t", state="scheduled")

    database.transaction(setup)
    with database.engine.begin() as holder:  # another replica's section holds DAG "held"
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(:s, hashtext('held'))"), {"s": _DAG_LOCK_SPACE}
        )
        outcome = database.transaction(
            lambda c: queue_pool(c, "default_pool", member_id="m2", decide=admit, now=NOW)
        )
    assert outcome is not None
    assert outcome.skipped_dags == {"held"}
    assert [q.dag_id for q in outcome.queued] == ["free"]


def test_the_parallelism_count_waits_for_the_holder_and_sees_what_it_queued(
    database: Database,
) -> None:
    """Two sections with a cluster-wide parallelism of 1, on different pools: the second waits
    for the first's commit and counts its task instance, so only one is queued."""

    def setup(conn: sa.Connection) -> None:
        _pool(conn, "p1", 4)
        _pool(conn, "p2", 4)
        insert_dag(conn, "d1")
        insert_dag(conn, "d2")
        insert_ti(conn, insert_run(conn, "d1"), "t", state="scheduled", pool="p1")
        insert_ti(conn, insert_run(conn, "d2"), "t", state="scheduled", pool="p2")

    database.transaction(setup)
    first_in = threading.Event()
    results: list[int] = []

    def slow_decide(cands: Any, capacity: Any) -> Any:
        first_in.set()
        time.sleep(0.3)  # holds the parallelism lock across its decision and update
        return admit(cands, capacity)

    def section(pool_name: str, decide: Any) -> None:
        out = database.transaction(
            lambda c: queue_pool(
                c, pool_name, member_id=pool_name, decide=decide, now=NOW, parallelism=1
            )
        )
        assert out is not None
        results.append(len(out.queued))

    first = threading.Thread(target=section, args=("p1", slow_decide))
    first.start()
    assert first_in.wait(5)
    section("p2", admit)
    first.join(5)
    assert sorted(results) == [0, 1]


def test_a_missing_pool_starves_with_a_clear_reason(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d")
        insert_ti(conn, run, "t", state="scheduled", pool="nope")

    database.transaction(setup)
    outcome = database.transaction(
        lambda c: queue_pool(c, "nope", member_id="m", decide=admit, now=NOW)
    )
    assert outcome is not None
    assert outcome.queued == ()
    assert outcome.admission is not None
    assert [s.message for s in outcome.admission.starved] == ["pool 'nope' does not exist"]


INVARIANTS = """
SELECT
  (SELECT count(*) FROM (
     SELECT p.name FROM pool p JOIN task_instance t ON t.pool = p.name
     WHERE t.state IN ('queued','running') GROUP BY p.name, p.slots
     HAVING sum(t.pool_slots) > p.slots) x) AS pools_over,
  (SELECT count(*) FROM (
     SELECT t.dag_id FROM task_instance t JOIN dag d USING (dag_id)
     WHERE t.state IN ('queued','running') GROUP BY t.dag_id, d.max_active_tasks
     HAVING count(*) > d.max_active_tasks) y) AS dags_over,
  (SELECT count(*) FROM (
     SELECT dag_id, task_id FROM task_instance
     WHERE state IN ('queued','running') AND max_active_tis_per_dag IS NOT NULL
     GROUP BY dag_id, task_id, max_active_tis_per_dag
     HAVING count(*) > max_active_tis_per_dag) z) AS tasks_over,
  (SELECT count(*) FROM task_instance WHERE state IN ('queued','running')) AS active
"""


def limits_exceeded(database: Database, parallelism: int) -> str | None:
    """The INVARIANTS row when a pool, a DAG, a task or the cluster is over its limit now."""
    with database.engine.connect() as conn:
        row = conn.execute(sa.text(INVARIANTS)).one()
    if row.pools_over or row.dags_over or row.tasks_over or row.active > parallelism:
        return str(row)
    return None


def test_concurrent_replicas_never_exceed_any_limit(database: Database) -> None:
    """Three replicas queue across four pools while a finisher frees slots; an invariant query
    runs after every step. DAGs span pools, so DAG-wide limits are contended across pools."""
    parallelism = 14
    rng = random.Random(7)

    def setup(conn: sa.Connection) -> None:
        for name, slots in [("a", 3), ("b", 5), ("c", 2), ("d", 8)]:
            _pool(conn, name, slots)
        for n in range(6):
            insert_dag(conn, f"dag{n}", max_active_tasks=4)
            for day in range(3):
                run = insert_run(conn, f"dag{n}", day=day)
                for t in range(6):
                    insert_ti(
                        conn,
                        run,
                        f"t{t}",
                        state="scheduled",
                        pool=rng.choice("abcd"),
                        pool_slots=rng.choice([1, 1, 2]),
                        priority_weight=rng.randint(1, 5),
                        max_active_tis_per_dag=2 if t == 0 else None,
                    )

    database.transaction(setup)
    violations: list[str] = []
    stop = threading.Event()

    def check() -> None:
        over = limits_exceeded(database, parallelism)
        if over is not None:
            violations.append(over)

    def replica(name: str) -> None:
        local = random.Random(name)
        while not stop.is_set():
            pools = database.read(lambda c: pools_with_scheduled(c))
            if not pools:
                return
            local.shuffle(pools)
            for p in pools:
                database.transaction(
                    lambda c, p=p: queue_pool(
                        c, p, member_id=name, decide=admit, now=NOW, parallelism=parallelism
                    )
                )
                check()

    def finisher() -> None:
        local = random.Random(1)
        while not stop.is_set():
            with database.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE task_instance SET state = CASE state WHEN 'queued' THEN 'running' "
                        "ELSE 'success' END WHERE id IN (SELECT id FROM task_instance "
                        "WHERE state IN ('queued','running') ORDER BY random() LIMIT :n "
                        "FOR UPDATE SKIP LOCKED)"
                    ),
                    {"n": local.randint(1, 3)},
                )
            check()
            remaining = database.read(
                lambda c: c.execute(
                    sa.text("SELECT count(*) FROM task_instance WHERE state <> 'success'")
                ).scalar_one()
            )
            if remaining == 0:
                stop.set()

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(3)]
    threads.append(threading.Thread(target=finisher))
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stop.set()
    assert violations == []
    with database.engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM task_instance WHERE state <> 'success'")
        ).scalar_one()
        attempts = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT ti_id) FROM task_attempt")
        ).one()
    assert left == 0
    assert attempts[0] == attempts[1] == 6 * 3 * 6  # every TI queued exactly once


def test_few_free_slots_weigh_few_candidates_but_a_held_back_dag_starves_no_other(
    database: Database,
) -> None:
    def setup(conn: sa.Connection) -> None:
        _pool(conn, "p", 100)
        insert_dag(conn, "busy", max_active_tasks=1)
        insert_dag(conn, "other")
        busy, other = insert_run(conn, "busy"), insert_run(conn, "other")
        insert_ti(conn, busy, "running", state="running", pool="p")
        # 40 higher-priority candidates the DAG limit holds back, then one that can go
        for i in range(40):
            insert_ti(conn, busy, f"b{i:02d}", state="scheduled", pool="p", priority_weight=100)
        insert_ti(conn, other, "o", state="scheduled", pool="p", priority_weight=1)
        insert_ti(conn, other, "o2", state="scheduled", pool="p", priority_weight=1)

    database.transaction(setup)
    # one free worker slot: the first look weighs 32 candidates, all held back by "busy"'s
    # max_active_tasks; the second look reaches "other"
    outcome = database.transaction(
        lambda c: queue_pool(
            c, "p", member_id="m", decide=admit, now=NOW, queue_open={"default": 1}
        )
    )
    assert outcome is not None
    assert [(q.dag_id, q.task_id) for q in outcome.queued] == [("other", "o")]
    assert outcome.looked == 42  # 2 of "other" and 40 of "busy"
    # with free slots to spare the first look is enough
    database.transaction(
        lambda c: c.execute(
            sa.text("UPDATE task_instance SET state = 'success' WHERE task_id = 'o'")
        )
    )
    outcome = database.transaction(
        lambda c: queue_pool(
            c, "p", member_id="m", decide=admit, now=NOW, queue_open={"default": 20}
        )
    )
    assert outcome is not None
    assert [q.task_id for q in outcome.queued] == ["o2"]
