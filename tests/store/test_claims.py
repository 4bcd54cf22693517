"""SKIP LOCKED claims split rows between concurrent sessions with no overlap; run uniqueness."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.support.factories import T0, insert_dag, insert_run
from tradewind_cluster.store.dags import claim_due_dags
from tradewind_cluster.store.database import Database

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


def test_one_run_per_logical_date_and_per_run_id(database: Database) -> None:
    database.transaction(lambda c: insert_dag(c, "d"))
    database.transaction(lambda c: insert_run(c, "d", day=0, run_id="r1"))
    with pytest.raises(sa.exc.IntegrityError, match="uq_dag_run_dag_id_logical_date"):
        database.transaction(lambda c: insert_run(c, "d", day=0, run_id="r2"))
    with pytest.raises(sa.exc.IntegrityError, match="uq_dag_run_dag_id_run_id"):
        database.transaction(lambda c: insert_run(c, "d", day=1, run_id="r1"))
