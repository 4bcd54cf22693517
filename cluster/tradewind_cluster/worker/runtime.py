"""What runs inside a task process, forked from the fork server: read the TaskSpec and run
context, then either run a BashOperator (bash.py) or import the DAG file (after checking its hash),
render the task's template fields, call execute(context), push its return value as XCom and work
out which branches it followed. The outcome goes back to the agent on the event pipe."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import FrameType
from typing import Any

from tradewind.dag import DAG
from tradewind.errors import BadInputError, TradewindError
from tradewind.exceptions import AirflowSkipException
from tradewind.models import clear_task_runtime, install_task_runtime
from tradewind.operators import (
    BashOperator,
    BranchPythonOperator,
    EmptyOperator,
    PythonOperator,
    ShortCircuitOperator,
)
from tradewind.operators.python import parse_branch_result
from tradewind.serialization import spec_from_dict
from tradewind.spec import BranchKind, TaskKind, TaskSpec
from tradewind.taskflow import split_multiple_outputs
from tradewind.taskflow import task as task_decorator
from tradewind.timezones import set_default_timezone
from tradewind.xcomarg import XCOM_RETURN_KEY
from tradewind_cluster.parsing.runner import load_dag_file
from tradewind_cluster.worker.bash import run_bash_task
from tradewind_cluster.worker.launch import ChildEvent, ChildResult, Launch, Outcome, encode_line
from tradewind_cluster.worker.task_api import RuntimeTaskInstance, StartGate, TaskApi, encode_xcom
from tradewind_cluster.worker.task_context import RunInfo, airflow_context_env, build_context
from tradewind_cluster.worker.templating import Renderer, TemplateOptions, build_environment

__all__ = [
    "AttemptTerminated",
    "EventPipe",
    "branch_followed",
    "decode_task",
    "describe_error",
    "load_task",
    "returned_xcoms",
    "run_task",
    "warm_up",
]

log = logging.getLogger("tradewind.task")

_EXIT_TERMINATED = 128 + signal.SIGTERM
_MAX_ERROR = 4000


class AttemptTerminated(BaseException):
    """SIGTERM reached the task process (timeout, kill, shutdown). A BaseException, so user code
    catching Exception does not swallow it; `finally` blocks still run."""


class EventPipe:
    """The write end of the pipe the fork server reads this process's events from."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: ChildEvent, **payload: Any) -> None:
        """Write one event line (blocking: the fork server always drains the pipe)."""
        data = encode_line({"kind": kind.value, "at": time.time(), **payload})
        while data:
            data = data[os.write(self.fd, data) :]

    def started(self) -> None:
        """User code is about to start."""
        self.send(ChildEvent.STARTED)

    def result(self, result: ChildResult) -> None:
        """The outcome, the last event."""
        self.send(ChildEvent.RESULT, **result.to_dict())


def decode_task(task_json: str, task_id: str) -> TaskSpec:
    """The TaskSpec in ExecuteRequest.task_json: one task entry as spec_to_dict writes it, or a
    whole serialized DAG holding the task. BadInputError when it is neither."""
    try:
        data = json.loads(task_json)
    except ValueError as exc:
        raise BadInputError(f"task_json is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "dag" in data and "__version" in data:
        return spec_from_dict(data).task(task_id)
    if not isinstance(data, dict):
        raise BadInputError("task_json must be a JSON object")
    shell = {
        "__version": 1,
        "dag": {
            "dag_id": "task_json",
            "fileloc": "",
            "schedule": {"kind": "none", "label": "None"},
            "tasks": [data],
        },
    }
    try:
        spec = spec_from_dict(shell)
    except TradewindError as exc:
        raise BadInputError(f"task_json is not a serialized task: {exc}") from None
    (task,) = spec.tasks.values()
    if task.task_id != task_id:
        raise BadInputError(f"task_json describes task {task.task_id!r}, not {task_id!r}")
    return task


def task_header(task_json: str, task_id: str) -> tuple[TaskKind, str]:
    """A task's kind and queue, all the agent needs of it to take an attempt, read from the
    JSON without decoding the whole spec (about a tenth of the cost, on every attempt of a
    task the agent has not seen: the fork server or the task process decodes it anyway, and a
    spec that does not decode fails the attempt there with the decoder's error). Takes the
    forms decode_task takes; BadInputError for what is not a task of that id."""
    try:
        data = json.loads(task_json)
    except ValueError as exc:
        raise BadInputError(f"task_json is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "dag" in data and "__version" in data:
        dag = data["dag"]
        tasks = dag.get("tasks") if isinstance(dag, dict) else None
        found = [t for t in tasks or () if isinstance(t, dict) and t.get("task_id") == task_id]
        if not found:
            raise BadInputError(f"task_json holds no task {task_id!r}")
        data = found[0]
    if not isinstance(data, dict):
        raise BadInputError("task_json must be a JSON object")
    if data.get("task_id") != task_id:
        raise BadInputError(f"task_json describes task {data.get('task_id')!r}, not {task_id!r}")
    try:
        kind = TaskKind(str(data.get("kind")))
    except ValueError:
        raise BadInputError(f"task_json: unknown task kind {data.get('kind')!r}") from None
    queue = data.get("queue", TaskSpec.__dataclass_fields__["queue"].default)
    if not isinstance(queue, str) or not queue:
        raise BadInputError(f"task_json: queue must be a non-empty string, got {queue!r}")
    return kind, queue


def describe_error(exc: BaseException) -> str:
    """The one-line error of a report: our own errors as written, others with their type."""
    if isinstance(exc, BadInputError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def branch_followed(
    kind: BranchKind | None, value: Any, task_ids: Collection[str]
) -> tuple[str, ...] | None:
    """The task ids a branching task followed: the branch choice, or () for a falsy
    short-circuit condition; None when nothing is to be skipped."""
    if kind is BranchKind.BRANCH:
        return tuple(sorted(parse_branch_result(value, task_ids)))
    if kind is BranchKind.SHORT_CIRCUIT and not value:
        return ()
    return None


def load_task(launch: Launch) -> tuple[Any, Any]:
    """Import the DAG file (its bytes must hash to launch.file_hash) and find the task."""
    path = launch.fileloc
    try:
        source = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read DAG file {path} on this worker: {exc.strerror}") from None
    if not launch.file_hash:
        log.warning("no file hash was sent for %s; running it unchecked", path)
    elif hashlib.sha256(source).hexdigest() != launch.file_hash:
        raise BadInputError(f"DAG file differs on this worker: {path}")
    if launch.dags_folder and launch.dags_folder not in sys.path:
        sys.path.insert(0, launch.dags_folder)  # as Airflow: DAG files import their neighbours
    _module, dags = load_dag_file(path, source)
    dag = next((d for d in dags if d.dag_id == launch.dag_id), None)
    if dag is None:
        raise BadInputError(f"DAG {launch.dag_id!r} not found in {path} on this worker")
    task = dag.task_dict.get(launch.task_id)
    if task is None:
        raise BadInputError(f"task {launch.task_id!r} not found in DAG {launch.dag_id!r}")
    return dag, task


def _execute(task: Any, context: dict[str, Any]) -> Any:
    try:
        return task.execute(context)
    except SystemExit as exc:
        # As Airflow: exit status 0 (or none) is a success without a return value.
        if exc.code in (None, 0):
            return None
        raise BadInputError(f"Task failed due to SystemExit({exc.code})") from None
    except AttemptTerminated:
        on_kill = getattr(task, "on_kill", None)
        if callable(on_kill):
            on_kill()
        raise


def _callable_params(task: Any, run: RunInfo) -> dict[str, Any]:
    # The imported task's own params (the DAG's merged with the task's), then the run conf.
    params = dict(getattr(task, "params", None) or {})
    params.update(run.conf)
    return params


def returned_xcoms(
    launch: Launch, task: Any, value: Any, *, multiple_outputs: bool = False
) -> tuple[tuple[str, str], ...]:
    """The XComs a returned value makes, as (key, JSON text): none for None or do_xcom_push
    off, each key of a multiple_outputs dict, then return_value. They go to the scheduler with
    the SUCCESS report, in its transaction; XComError (not JSON, too large) fails the task."""
    if value is None or not getattr(task, "do_xcom_push", True):
        return ()
    pairs: list[tuple[str, Any]] = []
    if multiple_outputs:
        pairs.extend(split_multiple_outputs(value).items())
    pairs.append((XCOM_RETURN_KEY, value))
    limit = launch.max_xcom_bytes
    # A key pushed twice (a multiple_outputs dict with a "return_value" key) keeps the last
    # value, as two pushes in a row would.
    last = dict(pairs)
    return tuple(
        (key, encode_xcom(item, key=key, task_id=launch.task_id, limit=limit))
        for key, item in last.items()
    )


def run_callable_task(
    launch: Launch, spec: TaskSpec, run: RunInfo, api: TaskApi, started: Callable[[], None]
) -> ChildResult:
    """Import, render and execute a Python task; push its XComs; report its branches."""
    dag, task = load_task(launch)
    ti = RuntimeTaskInstance(
        api, task=task, logical_date=run.logical_date, hostname=launch.hostname
    )
    context = build_context(
        run=run, dag_id=launch.dag_id, task_id=launch.task_id, dag=dag, task=task, ti=ti,
        params=_callable_params(task, run), try_number=launch.try_number,
    )  # fmt: skip
    outputs = {tid: bool(getattr(t, "multiple_outputs", False)) for tid, t in dag.task_dict.items()}
    extensions: tuple[str, ...] = tuple(
        getattr(task, "templates_exts", None) or getattr(task, "template_ext", ()) or ()
    )
    renderer = Renderer(
        build_environment(TemplateOptions.from_dag(dag, os.path.dirname(launch.fileloc))),
        context,
        lambda task_id, key: ti.pull_for_xcomarg(task_id, key, outputs),
        task_id=launch.task_id,
        template_ext=extensions,
    )
    renderer.render_fields(task, tuple(getattr(task, "template_fields", ())))
    os.environ.update(
        airflow_context_env(
            dag_id=launch.dag_id,
            task_id=launch.task_id,
            run=run,
            try_number=launch.try_number,
            owner=str(getattr(task, "owner", spec.owner)),
        )
    )
    install_task_runtime(variables=api, context=context)
    started()
    value = _execute(task, context)
    if getattr(task, "show_return_value_in_logs", True):
        log.info("Done. Returned value was: %s", value)
    else:
        log.info("Done. Returned value not shown")
    followed = branch_followed(spec.branching, value, dag.task_ids)
    multiple = bool(getattr(task, "multiple_outputs", False))
    xcoms = returned_xcoms(launch, task, value, multiple_outputs=multiple)
    return ChildResult(outcome=Outcome.SUCCESS, followed=followed, xcoms=xcoms)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise AttemptTerminated("Task received SIGTERM signal")


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] {%(filename)s:%(lineno)d} %(levelname)s - %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _run(launch: Launch, api: TaskApi, events: EventPipe) -> tuple[ChildResult, int]:
    spec = decode_task(launch.task_json, launch.task_id)
    run = RunInfo.parse(launch.context_json, run_id=launch.run_id, logical_date=launch.logical_date)
    if spec.kind is TaskKind.BASH:
        return run_bash_task(launch, spec, run, api, events.started)
    if spec.kind is TaskKind.CALLABLE:
        return run_callable_task(launch, spec, run, api, events.started), 0
    events.started()
    return ChildResult(outcome=Outcome.SUCCESS), 0


def warm_up() -> None:
    """Exercise the task path once in the fork server, so every task process starts with Jinja's
    lexers, regexes and lazily imported modules ready (each costs milliseconds per task)."""
    task_json = json.dumps({"task_id": "warm", "operator": "BashOperator", "kind": "bash"})
    spec = decode_task(task_json, "warm")
    run = RunInfo.parse("{}", run_id="warm", logical_date="2024-01-01T00:00:00+00:00")
    context = build_context(
        run=run, dag_id="warm", task_id=spec.task_id, dag=None, task=None, ti=None,
        params={}, try_number=1,
    )  # fmt: skip
    for native in (False, True):
        options = TemplateOptions(searchpath=(".",), render_template_as_native_obj=native)
        renderer = Renderer(
            build_environment(options), context, lambda task_id, key: None, task_id="warm"
        )
        renderer.render(["{{ ds }} {{ ts_nodash }} {% if params %}{{ params.x }}{% endif %}"])
    logging.Formatter("[%(asctime)s] {%(filename)s:%(lineno)d} %(levelname)s - %(message)s")
    _warm_operators()


def _warm_operators() -> None:
    # Operator construction caches each class's __init__ parameters (functools.cache).
    with DAG("tradewind_warm_up", schedule=None):
        BashOperator(task_id="bash", bash_command="true")
        PythonOperator(task_id="python", python_callable=len)
        BranchPythonOperator(task_id="branch", python_callable=len)
        ShortCircuitOperator(task_id="short", python_callable=len)
        EmptyOperator(task_id="empty")
        task_decorator(len)([])


def run_task(launch: Launch, events_fd: int, notes_fd: int | None = None) -> int:
    """Run one attempt in this process; returns the exit status (the result is on the pipe)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    _configure_logging()
    set_default_timezone(launch.default_timezone)
    events = EventPipe(events_fd)
    api = TaskApi(launch, StartGate(notes_fd))
    install_task_runtime(variables=api)
    log.info(
        "Running <TaskInstance: %s.%s %s [running]> try %s on host %s",
        launch.dag_id, launch.task_id, launch.run_id, launch.try_number, launch.hostname,
    )  # fmt: skip
    try:
        result, code = _run(launch, api, events)
    except AttemptTerminated as exc:
        log.error("%s", exc)
        result, code = ChildResult(outcome=Outcome.FAILED, error=str(exc)), _EXIT_TERMINATED
    except AirflowSkipException as exc:
        log.info("Task skipped: %s", exc)
        result, code = ChildResult(outcome=Outcome.SKIPPED, error=str(exc) or None), 0
    except Exception as exc:
        log.exception("Task failed with exception")
        result, code = ChildResult(outcome=Outcome.FAILED, error=describe_error(exc)), 1
    if result.outcome is Outcome.FAILED and code == 0:
        code = 1
    log.info("Marking task as %s.", result.outcome.value.upper())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    events.result(result)
    api.close()
    clear_task_runtime()
    return code
