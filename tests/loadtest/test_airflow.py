"""The Airflow side of the comparison, without Airflow: the DAG files it is given, the bash
command's ledger lines as Airflow renders it, its environment, what it refuses, and how its
task instances and the ledger become results. `make bench-airflow` runs the real thing."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest

from loadtest.airflow import (
    AirflowOptions,
    _AirflowTi,
    _kill,
    _results,
    _scheduler,
    _tree_cpu_s,
    airflow_env,
    default_timeout_s,
    run_airflow,
)
from loadtest.cli import EXIT_USAGE, main
from loadtest.dagfiles import AIRFLOW, TRADEWIND, bash_command, write_dag_files
from loadtest.ledger import read_ledger
from loadtest.sampler import start_ticks
from loadtest.scenarios import Profile, Scenario, plan_for
from tradewind.errors import BadInputError

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def test_the_same_dags_are_written_for_each_api(tmp_path: Path) -> None:
    plan = plan_for(Scenario.CHAIN, Profile.TINY, workers=2)
    ledger = tmp_path / "ledger.log"
    sources = {}
    for name, flavour in (("airflow", AIRFLOW), ("tradewind", TRADEWIND)):
        ids = write_dag_files(plan, tmp_path / name, ledger, now=NOW, flavour=flavour)
        sources[name] = (tmp_path / name / f"{ids[0]}.py").read_text()
        compile(sources[name], f"{name}.py", "exec")
    assert "from airflow import DAG" in sources["airflow"]
    assert "from airflow.operators.bash import BashOperator" in sources["airflow"]
    assert "tradewind" not in sources["airflow"]
    assert "from tradewind import DAG, BashOperator, PythonOperator" in sources["tradewind"]
    # Tradewind's own command is as it was; only the imports and the try template differ.
    assert (
        "{{run_id}} ${TRADEWIND_TI_ID:--} ${TRADEWIND_ATTEMPT_TOKEN:--} "
        "${TRADEWIND_TRY_NUMBER:--} {{try_number}} $$"
    ) in sources["tradewind"]
    assert (
        sources["airflow"]
        .replace(AIRFLOW.imports, TRADEWIND.imports)
        .replace(AIRFLOW.try_template, TRADEWIND.try_template)
        == sources["tradewind"]
    )


def test_the_bash_task_as_airflow_renders_it_writes_run_and_try(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.log"
    command = bash_command(ledger, "lt_chain_0000", 0.0, flavour=AIRFLOW)
    assert "{{ti.try_number}}" in command  # Airflow 2 has no try_number in its template context
    # As Airflow's BashOperator renders it: Jinja, with the task instance as `ti`.
    ti = SimpleNamespace(try_number=2)
    rendered = jinja2.Template(command).render(run_id="manual__x", ti=ti)
    subprocess.run(["bash", "-c", rendered.replace("__TASK__", "t0003")], check=True)
    (execution,) = read_ledger(ledger).executions
    assert (execution.dag_id, execution.task_id) == ("lt_chain_0000", "t0003")
    assert (execution.run_id, execution.try_number) == ("manual__x", 2)
    assert execution.end is not None
    assert execution.end >= execution.start


def test_airflow_runs_the_local_executor_with_defaults_and_no_tradewind_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRADEWIND__SCHEDULER__EAGER_DISPATCH", "true")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "4")
    env = airflow_env(tmp_path / "home", "postgresql+psycopg2://u@/db", tmp_path / "dags")
    assert not [k for k in env if k.startswith("TRADEWIND")]
    assert {k: v for k, v in env.items() if k.startswith("AIRFLOW")} == {
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://u@/db",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }


def test_what_airflow_cannot_run_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python = tmp_path / "python"
    assert main(["airflow", "chain", "--airflow-python", str(python)]) == EXIT_USAGE
    assert "--airflow-python" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a scenario Airflow runs
        main(["airflow", "failover", "--airflow-python", "/bin/true"])
    cron = plan_for(Scenario.CRON, Profile.TINY, workers=2)
    with pytest.raises(BadInputError, match="only chain, tree, fanout"):
        run_airflow(AirflowOptions(plan=cron, airflow_python=Path("/bin/true"), out_dir=tmp_path))
    assert not list(tmp_path.iterdir())


def _ledger_line(event: str, at: float, task: str, pid: int) -> str:
    return f"{event} {at:.6f} lt_chain_0000 {task} manual__x - - - 1 {pid}\n"


def test_results_from_airflows_task_instances_and_the_ledger(tmp_path: Path) -> None:
    plan = plan_for(Scenario.CHAIN, Profile.TINY, workers=2, dags=1, size=3)
    (tmp_path / "ledger.log").write_text(
        _ledger_line("start", 100.0, "t0000", 1)
        + _ledger_line("end", 100.1, "t0000", 1)
        + _ledger_line("start", 101.1, "t0001", 2)
        + _ledger_line("end", 101.2, "t0001", 2)
        + _ledger_line("start", 103.2, "t0002", 3)
        + _ledger_line("end", 103.3, "t0002", 3)
    )

    def ti(task: str, start: float, end: float, state: str = "success") -> _AirflowTi:
        return _AirflowTi(
            dag_id="lt_chain_0000",
            run_id="manual__x",
            task_id=task,
            state=state,
            start_date=start,
            end_date=end,
            queued_at=start - 0.5,
        )

    tis = [ti("t0000", 99.9, 100.2), ti("t0001", 100.9, 101.3), ti("t0002", 103.0, 103.5)]
    r = _results(plan, "2.11.0", tmp_path, tis, 99.5, 3.0, 1.5, 600.0)
    assert r["task_latency_ms"]["n"] == 2
    assert r["task_latency_ms"]["max"] == pytest.approx(2000.0, abs=0.2)
    assert r["task_latency_store_ms"]["p50"] == pytest.approx(700.0, abs=0.2)  # 100.9 - 100.2
    assert r["queued_to_start_ms"]["p50"] == pytest.approx(500.0, abs=0.2)
    assert r["throughput_tis_per_s"]["finished"] == 3
    assert r["throughput_tis_per_s"]["overall"] == pytest.approx(3 / 4.0, abs=1e-3)
    assert r["cpu_s_per_1000_tis"] == {"airflow": 1000.0, "postgres": 500.0}
    assert r["ok"] is True
    assert (r["params"]["schedulers"], r["params"]["workers"], r["params"]["slots"]) == (
        1,
        None,
        None,
    )
    assert r["params"]["timeout_s"] == 600.0
    foreign = _results(plan, "2.11.0", tmp_path, tis, 99.5, 3.0, None, 600.0)  # --database-url
    assert foreign["cpu_s_per_1000_tis"]["postgres"] == "unavailable"
    failed = _results(plan, "2.11.0", tmp_path, [*tis[:2], ti("t0002", 103, 103.5, "failed")],
                      99.5, 3.0, 1.5, 600.0)  # fmt: skip
    assert failed["ok"] is False
    assert failed["tis"] == {"total": 3, "success": 2}


def test_the_timeout_grows_with_the_load() -> None:
    assert default_timeout_s(plan_for(Scenario.CHAIN, Profile.QUICK, workers=2)) == 600.0
    full = plan_for(Scenario.FANOUT, Profile.FULL, workers=2)
    assert default_timeout_s(full) == float(full.total_tis or 0) > 1800


def test_cpu_of_a_process_tree_counts_children_it_has_reaped() -> None:
    before = _tree_cpu_s(os.getpid())
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run(["python3", "-c", burn], check=True)  # reaped: in our cutime
    spent = _tree_cpu_s(os.getpid()) - before
    assert spent >= 0.25, spent
    assert _tree_cpu_s(None) == 0.0


def test_cleanup_kills_what_is_left_of_the_tree(tmp_path: Path) -> None:
    """A child that left the process group and ignores SIGTERM (as Airflow's DAG processor
    and task runners leave it) is killed too."""
    stubborn = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, signal, time\\n"
        "os.setpgrp(); signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        'open(os.environ["MARK"], "w").write(str(os.getpid())); time.sleep(600)\'])\n'
        "time.sleep(600)\n"
    )
    mark = tmp_path / "child.pid"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -c {shlex.quote(stubborn)}\n")
    python.chmod(0o755)
    env = {**os.environ, "MARK": str(mark)}
    with _scheduler(python, env, tmp_path / "log") as sched:
        deadline = time.monotonic() + 10
        while not mark.exists() or not mark.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child = int(mark.read_text())
    assert sched.proc.poll() is not None
    deadline = time.monotonic() + 10
    while start_ticks(child) is not None and _state(child) != "Z":
        assert time.monotonic() < deadline, "the stubborn child survived"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_pid_is_signalled_only_while_it_names_the_process_that_was_seen() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        started = start_ticks(proc.pid)
        assert started is not None
        _kill({proc.pid: started + 1}, signal.SIGKILL)  # another process now holds the pid
        time.sleep(0.2)
        assert proc.poll() is None
        _kill({proc.pid: started}, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(10)
