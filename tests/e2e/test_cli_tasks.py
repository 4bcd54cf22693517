"""`tradewind tasks ...` and `dags test` run as subprocesses against a real database: listing,
states, clear and mark (as Airflow: max_tries extended, runs queued again, failed downstream
cleared by a mark), logs from stored chunks, and tasks that really run in the CLI's process."""

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
from tradewind.serialization import dag_to_spec
from tradewind.spec import DagSpec
from tradewind_cluster.parsing.runner import load_dag_file
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.runs import start_queued_runs
from tradewind_cluster.store.task_logs import LogChunkIn, append_chunks
from tradewind_cluster.store.variables import set_variable

pytestmark = pytest.mark.e2e

PIPE = """
import os
from datetime import datetime
from tradewind import DAG, BashOperator, PythonOperator
from tradewind.models import Variable

def extract(ds):
    return {"rows": 3, "ds": ds}

def double(ti):
    data = ti.xcom_pull(task_ids="extract")
    path = os.path.join(os.environ["TW_TEST_OUT"], "double.txt")
    with open(path, "w") as out:
        out.write(f"{Variable.get('greeting')} {data['rows'] * 2} {data['ds']}")
    return data["rows"] * 2

def boom():
    raise ValueError("kaput")

with DAG("pipe", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False,
         params={"who": "world"}, default_args={"retries": 1}) as dag:
    e = PythonOperator(task_id="extract", python_callable=extract)
    d = PythonOperator(task_id="double", python_callable=double)
    report = BashOperator(
        task_id="report",
        bash_command="echo {{ params.who }} {{ ds }} {{ ti.xcom_pull(task_ids='double') }}",
    )
    e >> d >> report

with DAG("broken", schedule=None, start_date=datetime(2024, 1, 1)) as broken:
    PythonOperator(task_id="boom", python_callable=boom)
"""

DAY = datetime(2024, 1, 2, tzinfo=UTC)
RUN_ID = "manual__2024-01-02T00:00:00+00:00"
Run = Callable[..., subprocess.CompletedProcess[str]]


def sql(db_url: str, text: str, **params: object) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(text), params)
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.fixture
def db(database: Database) -> Database:
    return database


@pytest.fixture
def specs(db: Database, tmp_path: Path) -> dict[str, DagSpec]:
    path = tmp_path / "dags" / "pipe.py"
    path.parent.mkdir()
    path.write_text(PIPE)
    _module, dags = load_dag_file(str(path), path.read_bytes())
    found = {}
    for dag in dags:
        dag.fileloc = str(path)
        found[dag.dag_id] = register(db, dag_to_spec(dag), now=datetime.now(UTC))
    db.transaction(lambda c: set_variable(c, "greeting", "hello"))
    return found


@pytest.fixture
def cli(db_url: str, tmp_path: Path, specs: dict[str, DagSpec]) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    env.update(
        TRADEWIND_HOME=str(tmp_path),
        TRADEWIND__DATABASE__URL=db_url,
        TW_TEST_OUT=str(tmp_path),
        TRADEWIND__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        COLUMNS="200",
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", *args]
        return subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )

    return run


def started_run(db: Database, spec: DagSpec) -> int:
    """A manual run of `spec` at DAY, started (its task instances exist, all none)."""
    pk = trigger(db, spec, DAY)
    db.transaction(lambda c: start_queued_runs(c, spec, slots=1, now=datetime.now(UTC)))
    return pk


def set_ti(db_url: str, task_id: str, state: str, try_number: int, max_tries: int = 1) -> None:
    sql(
        db_url,
        "UPDATE task_instance SET state = :s, try_number = :t, max_tries = :m "
        "WHERE task_id = :task",
        s=state,
        t=try_number,
        m=max_tries,
        task=task_id,
    )


def tis(db_url: str) -> dict[str, tuple[Any, ...]]:
    rows = sql(db_url, "SELECT task_id, state, try_number, max_tries FROM task_instance")
    return {r[0]: r[1:] for r in rows}


def test_states_clear_and_mark(
    cli: Run, db: Database, db_url: str, specs: dict[str, DagSpec]
) -> None:
    started_run(db, specs["pipe"])
    set_ti(db_url, "extract", "success", 1)
    set_ti(db_url, "double", "failed", 2)
    set_ti(db_url, "report", "upstream_failed", 0)
    sql(db_url, "UPDATE dag_run SET state = 'failed'")
    listed = cli("tasks", "states-for-dag-run", "pipe", RUN_ID, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    states = {r["task_id"]: (r["state"], r["try_number"]) for r in json.loads(listed.stdout)}
    assert states == {
        "extract": ("success", 1),
        "double": ("failed", 2),
        "report": ("upstream_failed", 0),
    }

    # Without -y and with no terminal on stdin: list what would be cleared, then refuse.
    refused = cli("tasks", "clear", "pipe", "-t", "dou", "-d")
    assert refused.returncode == 2
    assert "<TaskInstance: pipe.double" in refused.stdout
    assert "<TaskInstance: pipe.report" in refused.stdout
    assert "pass -y/--yes" in refused.stderr
    assert tis(db_url)["double"][0] == "failed"

    # Marking the failed task success clears its failed downstream (Airflow's
    # set_task_instance_state) and queues the run again; the date names the run.
    marked = cli("tasks", "mark", "pipe", "double", "2024-01-02", "--state", "success")
    assert marked.returncode == 0, marked.stderr
    assert "Marked double of run manual__2024-01-02T00:00:00+00:00 success (was failed)" in (
        marked.stdout
    )
    assert "Cleared failed downstream tasks: report" in marked.stdout
    now = tis(db_url)
    assert now["double"][0] == "success"
    assert now["report"] == ("none", 0, 1)  # max_tries = try_number + retries
    assert sql(db_url, "SELECT state, start_date FROM dag_run") == [("queued", None)]

    # Clearing: finished ones go back to none with max_tries = try_number + retries; a
    # running one is made unwanted and waits (up_for_retry) until its worker stopped it.
    set_ti(db_url, "report", "running", 1)
    sql(db_url, "UPDATE dag_run SET state = 'running'")
    cleared = cli("tasks", "clear", "pipe", "-t", "^(double|report)$", "-y")
    assert cleared.returncode == 0, cleared.stderr
    assert "Cleared 2 task instances; 1 runs queued again" in cleared.stdout
    now = tis(db_url)
    assert now["double"] == ("none", 2, 3)
    assert now["report"] == ("up_for_retry", 1, 2)
    assert now["extract"] == ("success", 1, 1)
    (wait,) = sql(
        db_url,
        "SELECT next_retry_at - clock_timestamp() FROM task_instance WHERE task_id = 'report'",
    )
    assert 3 < wait[0].total_seconds() <= 6  # worker lease + margin
    assert sql(db_url, "SELECT state FROM dag_run") == [("queued",)]
    assert sql(db_url, "SELECT check_runs FROM dag WHERE dag_id = 'pipe'") == [(True,)]

    tasks = json.loads(cli("tasks", "list", "pipe", "-o", "json").stdout)
    assert [t["task_id"] for t in tasks] == ["double", "extract", "report"]
    assert "DagRun for pipe with run_id or logical date of 'nope' not found" in (
        cli("tasks", "mark", "pipe", "double", "nope", "--state", "failed").stderr
    )


def test_logs_of_a_try(cli: Run, db: Database, db_url: str, specs: dict[str, DagSpec]) -> None:
    started_run(db, specs["pipe"])
    set_ti(db_url, "extract", "success", 1)
    (ti_id,) = sql(db_url, "SELECT id FROM task_instance WHERE task_id = 'extract'")[0]
    sql(
        db_url,
        "INSERT INTO task_attempt (ti_id, dag_id, run_id, task_id, try_number, token, "
        "state) VALUES (:t, 'pipe', :r, 'extract', 1, 7, 'success')",
        t=ti_id,
        r=RUN_ID,
    )
    chunks = [
        LogChunkIn(ti_id=ti_id, token=7, try_number=1, seq=i, data=f"line {i}\n") for i in range(3)
    ]
    db.transaction(lambda c: append_chunks(c, chunks))
    logs = cli("tasks", "logs", "pipe", "extract", RUN_ID)
    assert (logs.returncode, logs.stdout) == (0, "line 0\nline 1\nline 2\n")
    followed = cli("tasks", "logs", "pipe", "extract", RUN_ID, "--follow")
    assert followed.stdout == "line 0\nline 1\nline 2\n"  # the try has ended: it stops
    bad = cli("tasks", "logs", "pipe", "extract", RUN_ID, "--try", "3")
    assert bad.returncode == 2
    assert "there is no try 3" in bad.stderr


def test_tasks_really_run_in_process(cli: Run, tmp_path: Path) -> None:
    one = cli("tasks", "test", "pipe", "extract", "2024-01-02")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip().endswith("Task extract: success")
    rendered = cli("tasks", "render", "pipe", "report", "2024-01-02")
    assert rendered.returncode == 0, rendered.stderr
    assert "# property: bash_command" in rendered.stdout
    assert "echo world 2024-01-02 None" in rendered.stdout  # no run: no XCom to pull
    whole = cli("dags", "test", "pipe", "2024-01-02")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    # Python callables ran here, passed an XCom and read a Variable from the store.
    assert (tmp_path / "double.txt").read_text() == "hello 6 2024-01-02"
    assert "report: success" in whole.stdout
    assert "world 2024-01-02 6" in whole.stdout  # the bash task's output
    assert "run success" in whole.stdout
    failing = cli("dags", "test", "broken")
    assert failing.returncode == 1
    assert "boom: failed" in failing.stdout
    assert "ValueError: kaput" in failing.stdout
