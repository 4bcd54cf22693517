"""`tradewind dags trigger --wait` and `tasks clear` against a real scheduler process (local
executor): the exit status follows the run's outcome, and a cleared run is run again."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.processes import env_for, start_scheduler, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAGS = """
from datetime import datetime
from tradewind import DAG, BashOperator

for dag_id, command in (("good", "true"), ("bad", "exit 3")):
    with DAG(dag_id, schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        first = BashOperator(task_id="first", bash_command="true")
        last = BashOperator(task_id="last", bash_command=command)
        first >> last
    globals()[dag_id] = dag
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradewind-cli-wait-"))
    (path / "dags").mkdir()
    (path / "dags" / "two.py").write_text(DAGS)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def scalar(db_url: str, text: str) -> Any:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(text)).scalar()
    finally:
        engine.dispose()


def test_trigger_wait_exit_status_follows_the_run(db_url: str, workdir: Path) -> None:
    env = env_for(db_url, workdir, workdir / "dags", TRADEWIND__SCHEDULER__IDLE_SLEEP_S="0.2")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)

    scheduler = start_scheduler(env, workdir, "waiter")
    try:
        wait_until(
            lambda: scalar(db_url, "SELECT count(*) FROM serialized_dag") == 2, 30, "the parse"
        )
        good = cli("dags", "trigger", "good", "--wait")
        assert good.returncode == 0, good.stdout + good.stderr
        run_id = good.stdout.splitlines()[0]
        assert run_id.startswith("manual__")
        assert good.stdout.splitlines()[-1] == f"run {run_id} of DAG good: success"
        assert "success 2" in good.stderr  # the progress display, on stderr
        bad = cli("dags", "trigger", "bad", "--wait")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert bad.stdout.splitlines()[-1].endswith("of DAG bad: failed")

        cleared = cli("tasks", "clear", "good", "-t", "last", "-y")
        assert "Cleared 1 task instances; 1 runs queued again" in cleared.stdout, cleared.stderr
        rerun = "SELECT state FROM task_instance WHERE dag_id = 'good' AND task_id = 'last' "
        rerun += "AND try_number = 2"
        wait_until(lambda: scalar(db_url, rerun) == "success", 30, "the cleared task to rerun")
        wait_until(
            lambda: scalar(db_url, "SELECT state FROM dag_run WHERE dag_id = 'good'") == "success",
            30,
            "the cleared run to succeed again",
        )
        first = "SELECT try_number FROM task_instance WHERE dag_id = 'good' AND task_id = 'first'"
        assert scalar(db_url, first) == 1  # not cleared: not run again
    finally:
        assert scheduler.stop() == 0, scheduler.log()
