"""`tradewind dags ...` run as a user runs them, one subprocess per command, against a real
database whose DAGs are registered as a parse would register them."""

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

from tests.support.dags import register
from tradewind.serialization import dag_to_spec
from tradewind_cluster.parsing.runner import load_dag_file
from tradewind_cluster.store.database import Database

pytestmark = pytest.mark.e2e

ETL = """
from datetime import datetime
from tradewind import DAG, BashOperator

with DAG("etl", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False,
         tags=["team-a"], default_args={"owner": "ann"}) as dag:
    extract = BashOperator(task_id="extract", bash_command="echo {{ ds }}")
    a = BashOperator(task_id="transform_a", bash_command="true", owner="bob")
    b = BashOperator(task_id="transform_b", bash_command="true")
    load = BashOperator(task_id="load", bash_command="true")
    extract >> [a, b]
    [a, b] >> load
"""

Run = Callable[..., subprocess.CompletedProcess[str]]


def register_file(db_url: str, path: Path, source: str) -> list[str]:
    """Write a DAG file and register its DAGs as a parse would."""
    path.write_text(source)
    _module, dags = load_dag_file(str(path), path.read_bytes())
    db = Database(db_url)
    try:
        for dag in dags:
            dag.fileloc = str(path)
            spec = register(db, dag_to_spec(dag), now=datetime.now(UTC))
            # register() writes what scheduling needs; the parser also stores the tags.
            query(
                db_url,
                "UPDATE dag SET tags = CAST(:t AS jsonb) WHERE dag_id = :d",
                t=json.dumps(list(spec.tags)),
                d=spec.dag_id,
            )
    finally:
        db.dispose()
    return [d.dag_id for d in dags]


def cli_env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    env.update(TRADEWIND_HOME=str(home), TRADEWIND__DATABASE__URL=db_url, COLUMNS="200")
    env.update(TRADEWIND__CORE__DAGS_FOLDER=str(home / "dags"), **extra)
    return env


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Run:
    (tmp_path / "dags").mkdir()
    register_file(db_url, tmp_path / "dags" / "etl.py", ETL)
    env = cli_env(db_url, tmp_path)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", *args]
        return subprocess.run(
            cmd,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )

    return run


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_error_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def query(db_url: str, sql: str, **params: object) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


def test_list_show_and_pause(cli: Run, db_url: str) -> None:
    (row,) = as_json(cli("dags", "list", "-o", "json"))
    assert row["dag_id"] == "etl"
    assert row["owners"] == "ann, bob"
    assert (row["is_paused"], row["schedule"], row["tags"]) == (False, "@daily", ["team-a"])
    assert row["fileloc"].endswith("etl.py")
    paused = cli("dags", "pause", "etl")
    assert paused.stdout.strip() == "Dag: etl, paused: True"
    assert query(db_url, "SELECT is_paused FROM dag") == [(True,)]
    tree = cli("dags", "show", "etl")
    assert tree.returncode == 0, tree.stderr
    assert tree.stdout.splitlines() == [
        "<DAG: etl> schedule=@daily",
        "└── extract (BashOperator)",
        "    ├── transform_a (BashOperator)",
        "    │   └── load (BashOperator)",
        "    └── transform_b (BashOperator)",
        "        └── load (BashOperator)",  # reached again: shown by name only
    ]
    graph = as_json(cli("dags", "show", "etl", "-o", "json"))
    assert [t["task_id"] for t in graph] == ["extract", "transform_a", "transform_b", "load"]
    assert graph[0]["downstream"] == ["transform_a", "transform_b"]
    assert graph[3]["upstream"] == ["transform_a", "transform_b"]


def test_trigger_creates_a_queued_run_and_rejects_bad_input(cli: Run, db_url: str) -> None:
    done = cli("dags", "trigger", "etl", "-e", "2024-03-01T06:30:00", "-c", '{"who": "me"}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "manual__2024-03-01T06:30:00+00:00"
    custom = cli("dags", "trigger", "etl", "-r", "my_run", "-e", "2024-03-02")
    assert custom.stdout.strip() == "my_run"
    runs = as_json(cli("dags", "list-runs", "-d", "etl", "-o", "json"))
    assert [(r["run_id"], r["state"], r["run_type"]) for r in runs] == [
        ("my_run", "queued", "manual"),
        ("manual__2024-03-01T06:30:00+00:00", "queued", "manual"),
    ]
    stored = query(
        db_url,
        "SELECT conf, data_interval_start, data_interval_end FROM dag_run "
        "WHERE run_id = 'manual__2024-03-01T06:30:00+00:00'",
    )
    conf, start, end = stored[0]
    # A manual run of a cron DAG covers the last complete interval before its logical date.
    assert conf == {"who": "me"}
    assert (start.isoformat(), end.isoformat()) == (
        "2024-02-29T00:00:00+00:00",
        "2024-03-01T00:00:00+00:00",
    )
    again = one_error_line(cli("dags", "trigger", "etl", "-e", "2024-03-02"))
    assert "already exists" in again
    assert "my_run" in again
    assert "not valid JSON" in one_error_line(cli("dags", "trigger", "etl", "-c", "{oops"))
    assert "bad --exec-date 'yesterday'" in one_error_line(
        cli("dags", "trigger", "etl", "-e", "yesterday")
    )
    assert "DAG 'nope' not found" in one_error_line(cli("dags", "trigger", "nope"))
    assert query(db_url, "SELECT count(*) FROM dag_run")[0][0] == 2


def test_backfill_queues_each_interval_once(cli: Run) -> None:
    first = cli("dags", "backfill", "etl", "-s", "2024-01-01", "-e", "2024-01-03")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Created 3 backfill runs of DAG etl")
    second = cli("dags", "backfill", "etl", "-s", "2024-01-01T12:00:00", "-e", "2024-01-05")
    assert "Created 2 backfill runs" in second.stdout
    assert "(2 skipped" in second.stdout  # Jan 2 (the next aligned interval) to Jan 5
    runs = as_json(cli("dags", "list-runs", "-d", "etl", "--state", "queued", "-o", "json"))
    assert [r["run_id"] for r in runs] == [
        f"backfill__2024-01-0{d}T00:00:00+00:00" for d in (5, 4, 3, 2, 1)
    ]
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert "Provide a start_date" in one_error_line(cli("dags", "backfill", "etl"))


def test_list_import_errors_exits_one_when_files_are_broken(cli: Run, db_url: str) -> None:
    assert as_json(cli("dags", "list-import-errors", "-o", "json")) == []
    query(db_url, "INSERT INTO import_error (path, error) VALUES ('/dags/bad.py', 'SyntaxError')")
    done = cli("dags", "list-import-errors", "-o", "json")
    assert done.returncode == 1
    (row,) = json.loads(done.stdout)
    assert (row["filepath"], row["error"]) == ("/dags/bad.py", "SyntaxError")


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = cli_env(
        "postgresql://u:pw@127.0.0.1:1/x", tmp_path, TRADEWIND__DATABASE__RETRY_MAX_ATTEMPTS="1"
    )
    cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", "dags", "list"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert one_error_line(done, code=1).startswith("error: metadata database unreachable")
