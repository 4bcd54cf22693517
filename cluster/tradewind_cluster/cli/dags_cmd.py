"""`tradewind dags ...`: list DAGs, import errors and runs, show a DAG's graph, pause and unpause;
trigger, backfill and test live in trigger.py and dag_test.py. Names, flags and outputs follow
Airflow 2's `airflow dags` commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tradewind.spec import DagSpec
from tradewind.states import DagRunState
from tradewind_cluster.cli import dag_test, trigger
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.dag_lookup import require_dag, require_spec
from tradewind_cluster.cli.output import FORMATS, render
from tradewind_cluster.store import dags as store_dags
from tradewind_cluster.store.dag_files import list_import_errors
from tradewind_cluster.store.listing import list_dags, list_runs

__all__ = ["GRAPH_COLUMNS", "graph_rows", "register", "tree_lines"]

LIST_COLUMNS = ["dag_id", "fileloc", "owners", "is_paused", "schedule", "next_dagrun", "tags"]
RUN_COLUMNS = ["dag_id", "run_id", "state", "run_type", "logical_date", "start_date", "end_date"]
SHOW_FORMATS = ("tree", "dot", *FORMATS)


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dags` command group."""
    dags = sub.add_parser("dags", help="manage and inspect DAGs and their runs")
    dsub = dags.add_subparsers(dest="dags_command", required=True, metavar="COMMAND")
    lst = dsub.add_parser("list", help="list the DAGs the schedulers have parsed")
    _output(lst)
    lst.add_argument(
        "--include-inactive", action="store_true", help="also DAGs whose file no longer has them"
    )
    lst.set_defaults(handler=_list)
    err = dsub.add_parser(
        "list-import-errors", help="files that failed to load (exit 1 when there are any)"
    )
    _output(err)
    err.set_defaults(handler=_import_errors)
    show = dsub.add_parser("show", help="a DAG's tasks and dependencies")
    show.add_argument("dag_id", help="the DAG id")
    show.add_argument(
        "-o",
        "--output",
        choices=SHOW_FORMATS,
        default="tree",
        help="tree: an ASCII tree; dot: Graphviz; or a listing",
    )
    show.set_defaults(handler=_show)
    for name, paused in (("pause", True), ("unpause", False)):
        p = dsub.add_parser(name, help=f"{name} a DAG")
        p.add_argument("dag_id", help="the DAG id")
        p.set_defaults(handler=_pause, paused=paused)
    trigger.register_trigger(dsub)
    runs = dsub.add_parser("list-runs", help="the runs of a DAG, newest first")
    runs.add_argument("-d", "--dag-id", dest="dag_id", required=True, help="the DAG id")
    runs.add_argument("--state", choices=[s.value for s in DagRunState], help="only this state")
    runs.add_argument("--limit", type=int, default=1000, help="at most this many runs")
    _output(runs)
    runs.set_defaults(handler=_list_runs)
    trigger.register_backfill(dsub)
    dag_test.register(dsub)


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        infos = db.read(
            lambda c: list_dags(c, limit=100_000, include_inactive=args.include_inactive)
        )
    rows = [
        {
            "dag_id": d.dag_id,
            "fileloc": d.fileloc,
            "owners": ", ".join(d.owners),
            "is_paused": d.is_paused,
            "schedule": d.schedule,
            "next_dagrun": d.next_dagrun,
            "tags": ", ".join(d.tags) if args.output == "table" else list(d.tags),
        }
        for d in infos
    ]
    render(rows, args.output, columns=LIST_COLUMNS)
    return 0


def _import_errors(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        errors = db.read(lambda c: list_import_errors(c, limit=100_000))
    rows = [{"filepath": e.path, "error": e.error, "timestamp": e.created_at} for e in errors]
    render(rows, args.output, columns=["filepath", "error", "timestamp"])
    return 1 if rows else 0


def _pause(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:

        def apply(conn: Any) -> None:
            require_dag(conn, args.dag_id, active=False)
            store_dags.set_paused(conn, args.dag_id, args.paused)

        db.transaction(apply)
    print(f"Dag: {args.dag_id}, paused: {args.paused}")
    return 0


def _list_runs(args: argparse.Namespace, ctx: CliContext) -> int:
    def read(conn: Any) -> list[Any]:
        require_dag(conn, args.dag_id, active=False)
        return list_runs(conn, args.dag_id, state=args.state, limit=max(1, args.limit))

    with ctx.database() as db:
        runs = db.read(read)
    rows = [
        {
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "state": r.state.value,
            "run_type": r.run_type,
            "logical_date": r.logical_date,
            "start_date": r.start_date,
            "end_date": r.end_date,
        }
        for r in runs
    ]
    render(rows, args.output, columns=RUN_COLUMNS)
    return 0


# ------------------------------------------------------------------------------------ show
GRAPH_COLUMNS = ["task_id", "operator", "trigger_rule", "upstream", "downstream"]


def graph_rows(spec: DagSpec, *, joined: bool = False) -> list[dict[str, Any]]:
    """One row per task in topological order with its direct relatives (as lists, or as
    comma-joined text for a table)."""

    def ids(values: tuple[str, ...]) -> Any:
        return ", ".join(values) if joined else list(values)

    return [
        {
            "task_id": t.task_id,
            "operator": t.operator,
            "trigger_rule": t.trigger_rule.value,
            "upstream": ids(t.upstream_task_ids),
            "downstream": ids(t.downstream_task_ids),
        }
        for t in spec.tasks.values()
    ]


def tree_lines(spec: DagSpec) -> list[str]:
    """The DAG as an ASCII tree from its roots; a task reached a second time is shown once
    more by name only, with '...' when it has downstream tasks (they are already drawn)."""
    lines = [f"<DAG: {spec.dag_id}> schedule={spec.schedule.label}"]
    drawn: set[str] = set()
    roots = spec.roots
    # (task id, prefix, last child?) — iterative, so a long chain cannot exhaust the stack.
    stack = [(root, "", i == len(roots) - 1) for i, root in reversed(list(enumerate(roots)))]
    while stack:
        task_id, prefix, last = stack.pop()
        task = spec.tasks[task_id]
        again = task_id in drawn
        more = " ..." if again and task.downstream_task_ids else ""
        lines.append(f"{prefix}{'└── ' if last else '├── '}{task_id} ({task.operator}){more}")
        if again:
            continue
        drawn.add(task_id)
        children = task.downstream_task_ids
        inner = prefix + ("    " if last else "│   ")
        stack.extend(
            (c, inner, i == len(children) - 1) for i, c in reversed(list(enumerate(children)))
        )
    return lines


def _dot(spec: DagSpec) -> str:
    lines = [f"digraph {json.dumps(spec.dag_id)} {{", "  rankdir=LR;"]
    lines += [f"  {json.dumps(t)} [shape=box];" for t in spec.tasks]
    for task in spec.tasks.values():
        lines += [
            f"  {json.dumps(task.task_id)} -> {json.dumps(d)};" for d in task.downstream_task_ids
        ]
    lines.append("}")
    return "\n".join(lines)


def _show(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        _, spec = db.read(lambda c: require_spec(c, args.dag_id, active=False))
    if args.output == "tree":
        sys.stdout.write("\n".join(tree_lines(spec)) + "\n")
    elif args.output == "dot":
        sys.stdout.write(_dot(spec) + "\n")
    else:
        rows = graph_rows(spec, joined=args.output == "table")
        render(rows, args.output, columns=GRAPH_COLUMNS)
    return 0
