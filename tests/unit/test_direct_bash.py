"""Bash attempts the fork server renders itself: which ones it takes, and that a template too
slow for it (or one needing the task API) goes to a task process instead."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import replace

import pytest

from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind.serialization import dag_to_spec, spec_to_dict
from tradewind_cluster.worker import direct_bash
from tradewind_cluster.worker.direct_bash import RENDER_BUDGET_S, plan_direct, start_direct
from tradewind_cluster.worker.launch import Launch, Outcome
from tradewind_cluster.worker.runtime import decode_task


def _launch(command: str) -> Launch:
    with DAG("d", schedule=None) as dag:
        BashOperator(task_id="t", bash_command=command)
    task = spec_to_dict(dag_to_spec(dag))["dag"]["tasks"][0]
    return Launch(
        ti_id=1, token=1, dag_id="d", run_id="r", task_id="t", try_number=1,
        logical_date="2024-01-02T00:00:00+00:00", fileloc="/dags/d.py", file_hash="",
        task_json=json.dumps(task), context_json="{}", queue="default", log_path="",
        dags_folder="/dags", env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_a_template_of_the_run_context_is_rendered_here() -> None:
    plan = plan_direct(_launch("echo {{ ds }} {{ run_id }}"))
    assert plan is not None
    assert plan.command == "echo 2024-01-02 r"
    assert plan.env["AIRFLOW_CTX_DAG_ID"] == "d"


def test_templates_calling_the_task_api_go_to_a_task_process() -> None:
    for command in (
        "echo {{ ti.xcom_pull(task_ids='a') }}",
        "echo {{ var.value.get('env', 'dev') }}",
        "echo {{ var.json.get('cfg', {}) }}",
    ):
        assert plan_direct(_launch(command)) is None, command


def test_a_slow_template_is_abandoned_here_within_the_budget() -> None:
    handler = signal.getsignal(signal.SIGALRM)
    had_timer = signal.getitimer(signal.ITIMER_REAL)[0] > 0  # pytest-timeout's, if any
    started = time.monotonic()
    assert plan_direct(_launch("echo {{ macros.time.sleep(2) }}")) is None
    assert time.monotonic() - started < RENDER_BUDGET_S + 1.0
    # the previous handler and timer are back: a fast plan still works after it
    assert signal.getsignal(signal.SIGALRM) == handler
    assert (signal.getitimer(signal.ITIMER_REAL)[0] > 0) == had_timer
    assert plan_direct(_launch("echo ok")) is not None


def test_a_direct_attempt_runs_in_a_fresh_temporary_directory_removed_after(tmp_path) -> None:
    log_path = tmp_path / "attempt.log"
    dirs = []
    # one command leaves a file behind (the tree is removed), one leaves the directory empty
    for command in ("pwd; touch left_behind", "pwd"):
        launch = replace(_launch(command), log_path=str(log_path))
        plan = plan_direct(launch)
        assert plan is not None
        assert plan.cwd is None
        attempt = start_direct(launch, plan)
        _, status = os.waitpid(attempt.pid, 0)
        result = attempt.finish(os.waitstatus_to_exitcode(status))
        assert result is not None
        assert result.outcome is Outcome.SUCCESS
        cwd = attempt.tmpdir
        assert cwd is not None
        assert os.path.basename(cwd).startswith("tradewindtmp")
        left = os.path.join(cwd, "left_behind")
        assert os.path.exists(left) == ("touch" in command)  # kept until the outcome went out
        attempt.cleanup()
        assert not os.path.exists(cwd)
        assert cwd in log_path.read_text()  # the command ran there
        dirs.append(cwd)
    assert dirs[0] != dirs[1]  # each attempt gets its own


def test_the_fork_server_decodes_a_fresh_spec_for_every_attempt() -> None:
    """It renders templates with the spec in its own process: nothing a template does to one
    attempt's values may reach the next attempt's."""
    launch = _launch("echo {{ ds }}")
    first = decode_task(launch.task_json, "t")
    first.fields["skip_on_exit_code"].append(7)
    again = decode_task(launch.task_json, "t")
    assert again is not first
    assert again.fields["skip_on_exit_code"] == [99]


def test_with_the_handler_installed_once_a_slow_template_is_still_abandoned() -> None:
    """The fork server installs the SIGALRM handler once; each render then only arms a timer."""
    previous = signal.signal(signal.SIGALRM, direct_bash.on_render_alarm)
    try:
        started = time.monotonic()
        slow = _launch("echo {{ macros.time.sleep(2) }}")
        assert plan_direct(slow, alarm_installed=True) is None
        assert time.monotonic() - started < RENDER_BUDGET_S + 1.0
        assert signal.getsignal(signal.SIGALRM) is direct_bash.on_render_alarm  # left in place
        plan = plan_direct(_launch("echo {{ run_id }}"), alarm_installed=True)
        assert plan is not None
        assert plan.command == "echo r"
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_log_lines_read_as_the_logging_format_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1790000000.179: where int(t * 1000) % 1000 and LogRecord's msecs part ways
    for at in (1_700_000_000.0, 1_700_000_000.0456, 1_700_000_059.999, 1_790_000_000.179):
        monkeypatch.setattr(time, "time", lambda at=at: at)
        monkeypatch.setattr(time, "time_ns", lambda at=at: int(at * 1e9))
        for level in (logging.INFO, logging.ERROR):
            record = logging.LogRecord(direct_bash.__name__, level, direct_bash.__file__, 0,
                                       "Output: 100% {done}", None, None)  # fmt: skip
            assert record.created == at  # the record took its time from the patched clock
            expected = direct_bash._FORMAT.format(record) + "\n"
            assert direct_bash._line(level, "Output: 100% {done}") == expected
