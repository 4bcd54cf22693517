"""`tradewind tasks test` (run one task in this process, recording nothing) and `tasks render`
(print its rendered template fields), as Airflow's commands of the same names. The date may
also name a stored run by its run id: the task then sees that run's conf and its upstream
tasks' XComs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tradewind.errors import BadInputError
from tradewind.scheduling.retries import AttemptOutcome
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.dag_lookup import as_date, require_task
from tradewind_cluster.cli.dates import utcnow
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.listing import find_run

if TYPE_CHECKING:
    from tradewind_cluster.cli.local_dag import LocalDag
    from tradewind_cluster.cli.local_run import LocalTaskApi
    from tradewind_cluster.worker.launch import Launch
    from tradewind_cluster.worker.task_context import RunInfo

__all__ = ["register"]

_RULE = "# " + "-" * 58


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tasks test` and `tasks render`."""
    test = sub.add_parser("test", help="run one task in this process; no state is recorded")
    test.add_argument("dag_id", help="the DAG id")
    test.add_argument("task_id", help="the task id")
    test.add_argument(
        "logical_date", nargs="?", help="logical date or run id of the run (default: now)"
    )
    test.add_argument("-S", "--subdir", type=Path, help="import the DAG from this file or folder")
    test.set_defaults(handler=_test)
    rnd = sub.add_parser("render", help="print a task's template fields rendered for a date")
    rnd.add_argument("dag_id", help="the DAG id")
    rnd.add_argument("task_id", help="the task id")
    rnd.add_argument("logical_date", help="logical date or run id of the run")
    rnd.add_argument("-S", "--subdir", type=Path, help="import the DAG from this file or folder")
    rnd.set_defaults(handler=_render)


def _prepare(
    args: argparse.Namespace, ctx: CliContext, db: Database
) -> tuple[LocalDag, Launch, RunInfo, LocalTaskApi]:
    # The worker runtime (Jinja, gRPC stubs) loads only for the commands that run tasks.
    from tradewind_cluster.cli.local_dag import open_local_dag, run_info_for
    from tradewind_cluster.cli.local_run import (
        LocalTaskApi,
        MemoryXComs,
        make_launch,
        store_variables,
        store_xcoms,
    )

    tz = ctx.settings.core.default_timezone
    local = open_local_dag(ctx.settings, db, args.dag_id, subdir=args.subdir)
    task = require_task(local.spec, args.task_id)
    text = args.logical_date
    logical = utcnow().replace(microsecond=0) if text is None else as_date(text, tz)
    stored = None
    if text is not None:
        stored = db.read(lambda c: find_run(c, args.dag_id, run_id=text, logical_date=logical))
    at = stored.logical_date if stored is not None else logical
    if at is None:  # neither a date nor a run id
        raise BadInputError(
            f"bad logical date {text!r}: not ISO 8601 (such as 2024-01-31T06:00:00+00:00) and "
            f"not the run id of a run of DAG {args.dag_id}"
        )
    run = run_info_for(local.spec, at, run=stored)
    launch = make_launch(local, task, run, try_number=1)
    api = LocalTaskApi(
        launch,
        xcoms=MemoryXComs(),
        variables=store_variables(db),
        store_pull=store_xcoms(db, args.dag_id, stored.run_id) if stored else None,
    )
    return local, launch, run, api


def _test(args: argparse.Namespace, ctx: CliContext) -> int:
    from tradewind_cluster.cli.local_run import run_task_here, show_task_logs

    show_task_logs()
    with ctx.database() as db:
        local, launch, run, api = _prepare(args, ctx, db)
        print(f"Testing {args.dag_id}.{args.task_id} for run {run.run_id}", flush=True)
        outcome = run_task_here(launch, local.spec.tasks[args.task_id], run, api)
    error = f": {outcome.error}" if outcome.error else ""
    print(f"Task {args.task_id}: {outcome.outcome}{error}")
    return 1 if outcome.outcome is AttemptOutcome.FAILED else 0


def _render(args: argparse.Namespace, ctx: CliContext) -> int:
    from tradewind_cluster.cli.local_run import render_task

    with ctx.database() as db:
        local, launch, run, api = _prepare(args, ctx, db)
        fields = render_task(launch, local.spec.tasks[args.task_id], run, api)
    for name, value in fields.items():
        print(f"\n{_RULE}\n# property: {name}\n{_RULE}\n{value}\n")
    return 0
