"""BashOperator inside a task process, as Airflow 2 runs it: render bash_command / env / cwd,
run `bash -c` with stderr merged into stdout, copy its output to the task log, push the last line
as the return value; exit code 0 succeeds, one in skip_on_exit_code skips, others fail."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from tradewind.errors import BadInputError
from tradewind.spec import TaskSpec
from tradewind.xcomarg import XCOM_RETURN_KEY
from tradewind_cluster.worker.launch import ChildResult, Launch, Outcome
from tradewind_cluster.worker.task_api import RuntimeTaskInstance, TaskApi, encode_xcom
from tradewind_cluster.worker.task_context import (
    DagView,
    RunInfo,
    TaskView,
    airflow_context_env,
    build_context,
    task_params,
)
from tradewind_cluster.worker.templating import Renderer, shared_environment

__all__ = [
    "BASH_TEMPLATE_EXT",
    "BashPlan",
    "bash_environment",
    "bash_renderer",
    "bash_result",
    "check_cwd",
    "classify_exit",
    "plan_bash_task",
    "run_bash_task",
]

log = logging.getLogger(__name__)

BASH_TEMPLATE_EXT = (".sh", ".bash")


def bash_environment(
    env: Any, *, append_env: bool, inherited: Mapping[str, str], context_env: Mapping[str, str]
) -> dict[str, str]:
    """The command's environment: `env` alone, or the inherited one (with `env` over it when
    append_env), plus the AIRFLOW_CTX_* variables."""
    if env is not None and not isinstance(env, Mapping):
        raise BadInputError(f"env must be a mapping of names to values, got {type(env).__name__}")
    if env is None:
        result = dict(inherited)
    elif append_env:
        result = {**inherited, **{str(k): str(v) for k, v in env.items()}}
    else:
        result = {str(k): str(v) for k, v in env.items()}
    result.update(context_env)
    return result


def check_cwd(cwd: Any) -> str | None:
    """The working directory, checked as Airflow does (None: a fresh temporary directory)."""
    if cwd is None:
        return None
    path = str(cwd)
    if not os.path.exists(path):
        raise BadInputError(f"Can not find the cwd: {path}")
    if not os.path.isdir(path):
        raise BadInputError(f"The cwd {path} must be a directory")
    return path


def classify_exit(code: int, skip_codes: list[int]) -> ChildResult:
    """Airflow's order: a skip code wins (even 0), then non-zero fails."""
    if code in skip_codes:
        message = f"Bash command returned exit code {code}. Skipping."
        return ChildResult(outcome=Outcome.SKIPPED, error=message)
    if code != 0:
        message = f"Bash command failed. The command returned a non-zero exit code {code}."
        return ChildResult(outcome=Outcome.FAILED, error=message)
    return ChildResult(outcome=Outcome.SUCCESS)


def _skip_codes(value: Any) -> list[int]:
    if value is None:
        return []
    codes = [value] if isinstance(value, int) else list(value)
    return [int(code) for code in codes]


def run_command(
    command: str, *, env: Mapping[str, str], cwd: str | None, encoding: str
) -> tuple[int, str]:
    """Run `bash -c command`; returns (exit code, last output line)."""
    bash = shutil.which("bash") or "bash"
    with ExitStack() as stack:
        if cwd is None:
            cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="tradewindtmp"))
        log.info("Running command: %s", [bash, "-c", command])
        # Same process group as this task process: a kill of the attempt reaches bash too.
        proc = subprocess.Popen(
            [bash, "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
        )
        stack.callback(_reap, proc)
        log.info("Output:")
        line = ""
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(encoding, errors="backslashreplace").rstrip()
            sys.stdout.write(line + "\n")
        code = proc.wait()
    log.info("Command exited with return code %s", code)
    return code, line


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@dataclass(frozen=True, slots=True, kw_only=True)
class BashPlan:
    """A rendered BashOperator attempt, ready to start: what to run, where, with what."""

    command: str
    env: dict[str, str]
    context_env: dict[str, str]
    cwd: str | None  # None: a fresh temporary directory
    encoding: str
    skip_codes: list[int]
    do_xcom_push: bool


def bash_renderer(launch: Launch, spec: TaskSpec, run: RunInfo, api: TaskApi) -> Renderer:
    """The renderer of a BashOperator's template fields: the run's context with a `ti` that
    reaches the cluster through `api`, in the default environment of the DAG file's folder."""
    params = task_params(run, spec.fields)
    task = TaskView(
        task_id=spec.task_id,
        dag_id=launch.dag_id,
        operator_name=spec.operator,
        owner=spec.owner,
        queue=spec.queue,
        pool=spec.pool,
        retries=spec.retries,
        params=params,
    )
    dag = DagView(dag_id=launch.dag_id, fileloc=launch.fileloc, params=dict(run.params))
    ti = RuntimeTaskInstance(
        api, task=task, logical_date=run.logical_date, hostname=launch.hostname
    )
    context = build_context(
        run=run, dag_id=launch.dag_id, task_id=spec.task_id, dag=dag, task=task, ti=ti,
        params=params, try_number=launch.try_number,
    )  # fmt: skip
    return Renderer(
        shared_environment((os.path.dirname(launch.fileloc) or ".",)),
        context,
        lambda task_id, key: ti.pull_for_xcomarg(task_id, key, {}),
        task_id=spec.task_id,
        template_ext=BASH_TEMPLATE_EXT,
    )


def plan_bash_task(
    launch: Launch, spec: TaskSpec, run: RunInfo, api: TaskApi, inherited: Mapping[str, str]
) -> BashPlan:
    """Render bash_command / env / cwd and work out the environment; no side effects beyond
    what the templates call on `api` (XCom pulls, Variables)."""
    fields = spec.fields
    renderer = bash_renderer(launch, spec, run, api)
    rendered = renderer.render_mapping(fields, spec.template_fields)
    command = rendered.get("bash_command")
    if not isinstance(command, str):
        raise BadInputError(f"bash_command must be a string, got {type(command).__name__}")
    cwd = check_cwd(rendered.get("cwd"))
    context_env = airflow_context_env(
        dag_id=launch.dag_id, task_id=spec.task_id, run=run, try_number=launch.try_number,
        owner=spec.owner,
    )  # fmt: skip
    env = bash_environment(
        rendered.get("env"),
        append_env=bool(fields.get("append_env", False)),
        inherited={**inherited, **context_env},
        context_env=context_env,
    )
    return BashPlan(
        command=command,
        env=env,
        context_env=context_env,
        cwd=cwd,
        encoding=str(fields.get("output_encoding") or "utf-8"),
        skip_codes=_skip_codes(fields.get("skip_on_exit_code", [99])),
        do_xcom_push=spec.do_xcom_push,
    )


def bash_result(
    plan: BashPlan, code: int, last_line: str, *, task_id: str, max_xcom_bytes: int
) -> ChildResult:
    """The outcome of a finished command, with its last line as the return value on success
    (XComError when that line cannot be an XCom)."""
    result = classify_exit(code, plan.skip_codes)
    if result.outcome is Outcome.SUCCESS and plan.do_xcom_push:
        text = encode_xcom(last_line, key=XCOM_RETURN_KEY, task_id=task_id, limit=max_xcom_bytes)
        result = replace(result, xcoms=((XCOM_RETURN_KEY, text),))
    return result


def run_bash_task(
    launch: Launch, spec: TaskSpec, run: RunInfo, api: TaskApi, started: Callable[[], None]
) -> tuple[ChildResult, int]:
    """Render and run a BashOperator in this task process; returns its result and the
    command's exit code."""
    plan = plan_bash_task(launch, spec, run, api, os.environ)
    os.environ.update(plan.context_env)
    started()
    code, last_line = run_command(plan.command, env=plan.env, cwd=plan.cwd, encoding=plan.encoding)
    result = bash_result(
        plan, code, last_line, task_id=spec.task_id, max_xcom_bytes=launch.max_xcom_bytes
    )
    return result, code
