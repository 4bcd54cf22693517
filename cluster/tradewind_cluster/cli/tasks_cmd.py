"""`tradewind tasks ...`: list a DAG's tasks, the states of a run's task instances, clear and
mark task instances (Airflow's `airflow tasks` names and flags); logs, test and render live in
task_logs.py and task_test.py."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

from tradewind.errors import BadInputError
from tradewind.spec import DagSpec
from tradewind.states import TaskInstanceState
from tradewind_cluster.cli import task_logs, task_test
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.dag_lookup import (
    relatives,
    require_dag,
    require_run,
    require_spec,
    require_task,
    select_tasks,
)
from tradewind_cluster.cli.dags_cmd import GRAPH_COLUMNS, graph_rows, tree_lines
from tradewind_cluster.cli.dates import parse_optional_date, utcnow
from tradewind_cluster.cli.output import FORMATS, render
from tradewind_cluster.config import Settings
from tradewind_cluster.store.clearing import (
    ClearTarget,
    MarkResult,
    clear_task_instances,
    find_clear_targets,
    mark_task_instance,
)
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.listing import task_states

__all__ = ["register"]

STATE_COLUMNS = [
    "dag_id",
    "run_id",
    "logical_date",
    "task_id",
    "state",
    "try_number",
    "start_date",
    "end_date",
]
_FAILED = ("failed", "upstream_failed")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `tasks` command group."""
    tasks = sub.add_parser("tasks", help="inspect, clear, mark, test and render tasks")
    tsub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="COMMAND")
    lst = tsub.add_parser("list", help="the tasks of a DAG")
    lst.add_argument("dag_id", help="the DAG id")
    lst.add_argument("-t", "--tree", action="store_true", help="as a tree from the roots")
    _output(lst)
    lst.set_defaults(handler=_list)
    st = tsub.add_parser("states-for-dag-run", help="the state of every task instance of a run")
    st.add_argument("dag_id", help="the DAG id")
    st.add_argument("run_id", help="the run id, or the run's logical date")
    _output(st)
    st.set_defaults(handler=_states)
    _register_clear(tsub)
    mark = tsub.add_parser("mark", help="set a task instance to success or failed")
    mark.add_argument("dag_id", help="the DAG id")
    mark.add_argument("task_id", help="the task id")
    mark.add_argument("run_id", help="the run id, or the run's logical date")
    mark.add_argument("--state", required=True, choices=["success", "failed"], help="new state")
    mark.set_defaults(handler=_mark)
    task_logs.register(tsub)
    task_test.register(tsub)


def _register_clear(tsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clr = tsub.add_parser("clear", help="clear task instances so that they run again")
    clr.add_argument("dag_id", help="the DAG id")
    clr.add_argument("-t", "--task-regex", help="only tasks whose id matches this regex")
    clr.add_argument("-s", "--start-date", help="only runs with a logical date on or after it")
    clr.add_argument("-e", "--end-date", help="only runs with a logical date on or before it")
    clr.add_argument("-f", "--only-failed", action="store_true", help="only failed ones")
    clr.add_argument("-r", "--only-running", action="store_true", help="only running ones")
    clr.add_argument("-d", "--downstream", action="store_true", help="with downstream tasks")
    clr.add_argument("-u", "--upstream", action="store_true", help="with upstream tasks")
    clr.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    clr.set_defaults(handler=_clear)


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        _, spec = db.read(lambda c: require_spec(c, args.dag_id, active=False))
    if args.tree:
        sys.stdout.write("\n".join(tree_lines(spec)) + "\n")
        return 0
    rows = graph_rows(spec, joined=args.output == "table")
    render(sorted(rows, key=lambda r: str(r["task_id"])), args.output, columns=GRAPH_COLUMNS)
    return 0


def _states(args: argparse.Namespace, ctx: CliContext) -> int:
    tz = ctx.settings.core.default_timezone

    def read(conn: Connection) -> list[dict[str, Any]]:
        require_dag(conn, args.dag_id, active=False)
        run = require_run(conn, args.dag_id, args.run_id, tz)
        return [
            {
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "logical_date": run.logical_date,
                "task_id": s.task_id,
                "state": s.state,
                "try_number": s.try_number,
                "start_date": s.start_date,
                "end_date": s.end_date,
            }
            for s in task_states(conn, run.id)
        ]

    with ctx.database() as db:
        rows = db.read(read)
    render(rows, args.output, columns=STATE_COLUMNS)
    return 0


# ------------------------------------------------------------------------------------ clear
def _restart_after(settings: Settings) -> timedelta:
    """How long a worker may still run an attempt nobody wants: its lease plus the margin."""
    return timedelta(seconds=settings.worker.lease_s + settings.worker.lease_margin_s)


def _retries(spec: DagSpec) -> dict[str, int]:
    return {t.task_id: t.retries for t in spec.tasks.values()}


def _confirm(targets: list[ClearTarget]) -> bool:
    listing = "\n".join(
        f"<TaskInstance: {t.dag_id}.{t.task_id} {t.run_id} [{t.state}]>" for t in targets
    )
    print(f"You are about to clear these {len(targets)} task instances:\n{listing}\n")
    if not sys.stdin.isatty():
        raise BadInputError(
            "not clearing: confirmation needs a terminal on stdin; pass -y/--yes to clear "
            "without asking"
        )
    answer = input("Are you sure? [y/n] ").strip().lower()
    return answer in ("y", "yes")


def _clear(args: argparse.Namespace, ctx: CliContext) -> int:
    tz = ctx.settings.core.default_timezone
    start = parse_optional_date(args.start_date, timezone=tz, what="--start-date")
    end = parse_optional_date(args.end_date, timezone=tz, what="--end-date")
    # As Airflow: --only-running wins over --only-failed.
    states = ["running"] if args.only_running else list(_FAILED) if args.only_failed else None
    with ctx.database() as db:
        info, spec = db.read(lambda c: require_spec(c, args.dag_id, active=False))
        task_ids = select_tasks(
            spec, args.task_regex, upstream=args.upstream, downstream=args.downstream
        )
        targets = db.read(
            lambda c: find_clear_targets(
                c, args.dag_id, task_ids=task_ids, start=start, end=end, states=states
            )
        )
        if not targets:
            print("No task instances to clear")
            return 0
        if not args.yes and not _confirm(targets):
            print("Cancelled, nothing was cleared.")
            return 0
        result = db.transaction(
            lambda c: clear_task_instances(
                c,
                targets,
                retries=_retries(spec),
                now=utcnow(),
                restart_after=_restart_after(ctx.settings),
            )
        )
    print(
        f"Cleared {result.reset + result.restarting} task instances; {result.runs} runs queued "
        "again"
    )
    if result.restarting:
        print(
            f"{result.restarting} were queued or running: their attempts are stopped at the "
            "next worker heartbeat and they run again after that"
        )
    if info.is_paused and result.runs:
        print(
            f"warning: DAG {args.dag_id} is paused: the cleared runs will not start until it "
            f"is unpaused (tradewind dags unpause {args.dag_id})",
            file=sys.stderr,
        )
    return 0


# ------------------------------------------------------------------------------------- mark
def _mark(args: argparse.Namespace, ctx: CliContext) -> int:
    tz = ctx.settings.core.default_timezone
    to = TaskInstanceState(args.state)

    def apply(conn: Connection) -> tuple[str, MarkResult]:
        _, spec = require_spec(conn, args.dag_id, active=False)
        require_task(spec, args.task_id)
        run = require_run(conn, args.dag_id, args.run_id, tz)
        found = find_clear_targets(conn, args.dag_id, task_ids=[args.task_id], run_pk=run.id)
        if not found:
            raise BadInputError(f"task {args.task_id!r} has no task instance in run {run.run_id}")
        below = sorted(relatives(spec, [args.task_id], upstream=False))
        downstream = find_clear_targets(
            conn, args.dag_id, task_ids=below, run_pk=run.id, states=_FAILED
        )
        result = mark_task_instance(
            conn,
            found[0],
            to=to,
            downstream=downstream,
            retries=_retries(spec),
            now=utcnow(),
            restart_after=_restart_after(ctx.settings),
        )
        return run.run_id, result

    with ctx.database() as db:
        run_id, result = db.transaction(apply)
    if not result.changed:
        print(f"{args.task_id} of run {run_id} is already {to}; nothing changed")
        return 0
    print(f"Marked {args.task_id} of run {run_id} {to} (was {result.previous})")
    if result.cleared_downstream:
        print(f"Cleared failed downstream tasks: {', '.join(result.cleared_downstream)}")
    print(f"Run {run_id} is {result.run_state}")
    return 0
