"""`tradewind pools`, `variables` and `cluster status` run as subprocesses against a real
database: Airflow's messages and exit codes, JSON for scripts, and what deleting a pool in use
does (Airflow allows it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.dags import register, trigger
from tradewind import DAG, BashOperator
from tradewind.serialization import dag_to_spec
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.members import declare_dead, register_member
from tradewind_cluster.store.pools import get_pool
from tradewind_cluster.store.runs import start_queued_runs
from tradewind_cluster.store.variables import list_variables
from tradewind_cluster.store.workers import register_worker

pytestmark = pytest.mark.e2e

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    env.update(TRADEWIND_HOME=str(tmp_path), TRADEWIND__DATABASE__URL=db_url, COLUMNS="200")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", *args]
        return subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=60)

    return run


def sql(db_url: str, text: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(text))
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pools(cli: Run, database: Database, db_url: str) -> None:
    assert ok(cli("pools", "set", "etl", "2", "ETL jobs")).strip() == "Pool etl created"
    assert ok(cli("pools", "set", "etl", "3")).strip() == "Pool etl updated"
    # Three task instances of a DAG in pool etl: one running, one queued, one scheduled.
    with DAG("pooled", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        for name in ("a", "b", "c"):
            BashOperator(task_id=name, bash_command="true", pool="etl")
    spec = register(database, dag_to_spec(dag), now=datetime.now(UTC))
    trigger(database, spec, datetime(2024, 1, 2, tzinfo=UTC))
    database.transaction(lambda c: start_queued_runs(c, spec, slots=1, now=datetime.now(UTC)))
    sql(
        db_url,
        "UPDATE task_instance SET state = CASE task_id WHEN 'a' THEN 'running' "
        "WHEN 'b' THEN 'queued' ELSE 'scheduled' END",
    )
    pools = {p["pool"]: p for p in json.loads(ok(cli("pools", "list", "-o", "json")))}
    assert set(pools) == {"default_pool", "etl"}
    assert pools["etl"] == {
        "pool": "etl",
        "slots": 3,
        "description": "ETL jobs",
        "occupied_slots": 2,
        "running": 1,
        "queued": 1,
        "scheduled": 1,
        "open_slots": 1,
    }
    refused = cli("pools", "delete", "default_pool")
    assert (refused.returncode, refused.stderr.strip()) == (
        2,
        "error: default_pool cannot be deleted",
    )
    gone = cli("pools", "delete", "etl")
    assert ok(gone).strip() == "Pool etl deleted"
    assert "2 task instances queued or running in it carry on" in gone.stderr
    assert "will not be queued again until a pool of that name exists" in gone.stderr
    assert database.read(lambda c: get_pool(c, "etl")) is None
    bad = cli("pools", "set", "x", "-1")
    assert bad.returncode == 2
    assert "slots must be 0 or more" in bad.stderr


def test_variables(cli: Run, database: Database, tmp_path: Path) -> None:
    assert ok(cli("variables", "set", "a", "plain text")).strip() == "Variable a created"
    source = {"a": "overwritten?", "b": {"nested": [1, 2]}, "c": 3}
    imported = cli("variables", "import", "-", "-a", "skip", stdin=json.dumps(source))
    assert "Imported 2 of 3 variables" in ok(imported)
    assert "Skipped 1 existing: a" in imported.stdout
    assert json.loads(ok(cli("variables", "get", "b", "-j"))) == {"nested": [1, 2]}
    out = tmp_path / "vars.json"
    assert ok(cli("variables", "export", str(out))).strip().startswith("3 variables")
    assert json.loads(out.read_text()) == {"a": "plain text", "b": {"nested": [1, 2]}, "c": 3}
    assert ok(cli("variables", "delete", "a")).strip() == "Variable a deleted"
    assert [v.key for v in database.read(lambda c: list_variables(c))] == ["b", "c"]
    # As Airflow: a missing key is one line on stderr and exit status 1.
    missing = cli("variables", "get", "a")
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        1,
        "",
        "Variable a does not exist\n",
    )
    broken = cli("variables", "import", "-", stdin="{not json")
    assert broken.returncode == 2
    assert broken.stderr.startswith("error: Invalid variables file -")


def test_cluster_status(cli: Run, database: Database, db_url: str) -> None:
    def setup(conn: sa.Connection) -> None:
        for name in ("r1", "r2"):
            register_member(
                conn,
                member_id=f"id-{name}",
                name=name,
                hostname="h",
                pid=1,
                version="0.1.0",
                grpc_address=f"h:{name}",
            )
        register_worker(
            conn,
            worker_id="w1",
            name="w1",
            hostname="h",
            grpc_address="h:9",
            queues=["spark"],
            slots=4,
            version="0.1.0",
            registered_via="test",
        )

    database.transaction(setup)
    database.transaction(lambda c: declare_dead(c, "id-r2", by="id-r1", seen_seq=0, reason="gone"))
    with DAG("q", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        BashOperator(task_id="t", bash_command="true", queue="spark")
    spec = register(database, dag_to_spec(dag), now=datetime.now(UTC))
    trigger(database, spec, datetime(2024, 1, 2, tzinfo=UTC))
    database.transaction(lambda c: start_queued_runs(c, spec, slots=1, now=datetime.now(UTC)))
    sql(
        db_url,
        "UPDATE task_instance SET state = 'queued', worker = 'w1', "
        "queued_at = clock_timestamp() - interval '30 seconds'",
    )
    sql(db_url, "UPDATE dag_file SET lease_owner = 'id-r1'")  # no files: stays empty
    doc = json.loads(ok(cli("cluster", "status", "-o", "json")))
    members = {m["name"]: m for m in doc["schedulers"]}
    assert (members["r1"]["state"], members["r1"]["live"]) == ("alive", True)
    assert members["r1"]["heartbeat_age_s"] < 5
    assert (members["r2"]["state"], members["r2"]["live"]) == ("dead", False)
    assert members["r2"]["declared_dead_by"] == "r1"
    (worker,) = doc["workers"]
    assert (worker["queues"], worker["slots"], worker["slots_in_use"]) == (["spark"], 4, 1)
    assert doc["queues"] == [{"queue": "spark", "scheduled": 0, "queued": 1, "running": 0}]
    pools = {p["pool"]: p for p in doc["pools"]}
    assert pools["default_pool"] == {
        "pool": "default_pool",
        "slots": 128,
        "used_slots": 1,
        "scheduled": 0,
        "queued": 1,
        "running": 0,
    }
    assert 29 <= doc["oldest_queued_age_s"] < 60
    table = ok(cli("cluster", "status"))
    assert "Schedulers" in table
    assert "Oldest queued attempt: " in table
