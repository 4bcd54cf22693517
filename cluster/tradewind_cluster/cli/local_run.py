"""Running and rendering tasks in this process, for `dags test`, `tasks test` and `tasks render`:
the DAG file is imported here (local_dag.py) and the worker runtime (templating, context, bash
and Python operators) runs the task. XComs pushed are kept in memory (a run that exists in the store
supplies the XComs of tasks not run here); Variables are read from the store."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tradewind.exceptions import AirflowSkipException
from tradewind.models import clear_task_runtime, install_task_runtime
from tradewind.scheduling.retries import AttemptOutcome
from tradewind.spec import TaskKind, TaskSpec
from tradewind_cluster.cli.local_dag import LocalDag
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.variables import get_variable
from tradewind_cluster.store.xcom import pull_xcoms
from tradewind_cluster.worker.bash import bash_renderer, run_bash_task
from tradewind_cluster.worker.launch import Launch
from tradewind_cluster.worker.runtime import describe_error, load_task, run_callable_task
from tradewind_cluster.worker.task_api import RuntimeTaskInstance, TaskApi, encode_xcom
from tradewind_cluster.worker.task_context import (
    RunInfo,
    build_context,
    task_params,
)
from tradewind_cluster.worker.templating import Renderer, TemplateOptions, build_environment

__all__ = [
    "LocalTaskApi",
    "MemoryXComs",
    "TaskOutcome",
    "make_launch",
    "render_task",
    "run_task_here",
    "show_task_logs",
    "store_variables",
    "store_xcoms",
]

log = logging.getLogger(__name__)
StorePull = Callable[[list[str], str | None], list[tuple[str, str]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """How a task run here ended."""

    outcome: AttemptOutcome
    error: str | None = None
    followed: tuple[str, ...] | None = None


@dataclass(slots=True)
class MemoryXComs:
    """XComs pushed by tasks run in this process: (task_id, key) -> JSON text, in push order."""

    values: dict[tuple[str, str], str] = field(default_factory=dict)


def store_variables(db: Database) -> Callable[[str], str | None]:
    """Variables read from the store, one at a time."""

    def read(key: str) -> str | None:
        row = db.read(lambda c: get_variable(c, key))
        return None if row is None else row.val

    return read


def store_xcoms(db: Database, dag_id: str, run_id: str) -> StorePull:
    """XComs of a stored run: the newest of each task."""

    def pull(task_ids: list[str], key: str | None) -> list[tuple[str, str]]:
        rows = db.read(
            lambda c: pull_xcoms(c, dag_id=dag_id, run_id=run_id, task_ids=task_ids, key=key)
        )
        newest: dict[str, str] = {}
        for row in rows:
            newest.setdefault(row.task_id, row.value)
        return list(newest.items())

    return pull


class LocalTaskApi(TaskApi):
    """The task's XComs and Variables without a scheduler: XComs in memory (falling back to the
    store's XComs of the run), Variables read through `variables`."""

    def __init__(
        self,
        launch: Launch,
        *,
        xcoms: MemoryXComs,
        variables: Callable[[str], str | None],
        store_pull: StorePull | None = None,
    ) -> None:
        super().__init__(launch)
        self._xcoms = xcoms
        self._variables = variables
        self._store_pull = store_pull

    def push(self, key: str, value: Any) -> None:
        """Keep the XCom in memory, checked as a worker would check it."""
        text = encode_xcom(
            value, key=key, task_id=self.launch.task_id, limit=self.launch.max_xcom_bytes
        )
        self._xcoms.values[(self.launch.task_id, key)] = text

    def pull(
        self, task_ids: list[str], key: str | None, *, dag_id: str = "", run_id: str = ""
    ) -> list[tuple[str, str]]:
        """(task_id, text) found in memory first, then in the store's run."""
        found = [
            (task_id, text)
            for (task_id, k), text in self._xcoms.values.items()
            if (not task_ids or task_id in task_ids) and (not key or k == key)
        ]
        if not task_ids:
            return found[-1:]  # xcom_pull(task_ids=None): the newest match
        missing = [t for t in task_ids if t not in {f[0] for f in found}]
        if missing and self._store_pull is not None:
            found += self._store_pull(missing, key)
        return found

    def get_variable(self, key: str) -> str | None:
        """The Variable's text from the store."""
        return self._variables(key)

    def close(self) -> None:
        """Nothing to close: no channel was opened."""


def make_launch(local: LocalDag, task: TaskSpec, run: RunInfo, try_number: int) -> Launch:
    """The launch order a worker would get for this task and run."""
    return Launch(
        ti_id=0,
        token=0,
        dag_id=local.spec.dag_id,
        run_id=run.run_id,
        task_id=task.task_id,
        try_number=try_number,
        logical_date=run.logical_date.isoformat(),
        fileloc=local.fileloc,
        file_hash=local.file_hash,
        task_json="",
        context_json="",
        queue=task.queue,
        log_path="",
        dags_folder=local.dags_folder,
        default_timezone=local.default_timezone,
        max_xcom_bytes=local.max_xcom_bytes,
        hostname=socket.gethostname(),
    )


def _started() -> None:
    """The worker reports user code starting; here nothing waits for it."""


def run_task_here(launch: Launch, task: TaskSpec, run: RunInfo, api: TaskApi) -> TaskOutcome:
    """Run one task in this process as a worker's task process would (never raises for the
    task's own failure: it becomes the outcome; the traceback goes to the log)."""
    install_task_runtime(variables=api)
    try:
        if task.kind is TaskKind.BASH:
            result, _code = run_bash_task(launch, task, run, api, _started)
        elif task.kind is TaskKind.CALLABLE:
            result = run_callable_task(launch, task, run, api, _started)
        else:
            return TaskOutcome(outcome=AttemptOutcome.SUCCESS)
        for key, text in result.xcoms:  # a worker sends these with its SUCCESS report
            api.push(key, json.loads(text))
    except AirflowSkipException as exc:
        log.info("Task skipped: %s", exc)
        return TaskOutcome(outcome=AttemptOutcome.SKIPPED, error=str(exc) or None)
    except Exception as exc:
        logging.getLogger("tradewind.task").exception("Task failed with exception")
        return TaskOutcome(outcome=AttemptOutcome.FAILED, error=describe_error(exc))
    finally:
        clear_task_runtime()
    return TaskOutcome(
        outcome=AttemptOutcome(result.outcome.value), error=result.error, followed=result.followed
    )


def _render_bash(launch: Launch, task: TaskSpec, run: RunInfo, api: TaskApi) -> dict[str, Any]:
    renderer = bash_renderer(replace(launch, hostname=""), task, run, api)
    rendered = renderer.render_mapping(task.fields, task.template_fields)
    return {name: rendered.get(name) for name in task.template_fields}


def _render_callable(launch: Launch, task: TaskSpec, run: RunInfo, api: TaskApi) -> dict[str, Any]:
    dag, op = load_task(launch)
    ti = RuntimeTaskInstance(api, task=op, logical_date=run.logical_date, hostname="")
    context = build_context(
        run=run,
        dag_id=launch.dag_id,
        task_id=task.task_id,
        dag=dag,
        task=op,
        ti=ti,
        params=task_params(run, task.fields),
        try_number=launch.try_number,
    )
    outputs = {tid: bool(getattr(t, "multiple_outputs", False)) for tid, t in dag.task_dict.items()}
    renderer = Renderer(
        build_environment(TemplateOptions.from_dag(dag, os.path.dirname(launch.fileloc))),
        context,
        lambda task_id, key: ti.pull_for_xcomarg(task_id, key, outputs),
        task_id=task.task_id,
        template_ext=tuple(getattr(op, "template_ext", ()) or ()),
    )
    install_task_runtime(variables=api, context=context)
    try:
        fields = tuple(getattr(op, "template_fields", ()))
        renderer.render_fields(op, fields)
    finally:
        clear_task_runtime()
    return {name: getattr(op, name) for name in fields}


def render_task(launch: Launch, task: TaskSpec, run: RunInfo, api: TaskApi) -> dict[str, Any]:
    """Each template field of the task rendered for the run, as the worker would render it."""
    if task.kind is TaskKind.BASH:
        install_task_runtime(variables=api)
        try:
            return _render_bash(launch, task, run, api)
        finally:
            clear_task_runtime()
    if task.kind is TaskKind.CALLABLE:
        return _render_callable(launch, task, run, api)
    return {name: task.fields.get(name) for name in task.template_fields}


def show_task_logs() -> None:
    """Let the task's own log lines through (the CLI logs warnings only otherwise)."""
    for name in ("tradewind.task", "tradewind_cluster.worker", __name__):
        logging.getLogger(name).setLevel(logging.INFO)
