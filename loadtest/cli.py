"""The command line: `python -m loadtest run SCENARIO [options]` and `python -m loadtest list`.
Exit status: 0 passed (or skipped), 1 an invariant failed, 2 bad usage, 3 the harness failed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.aims import missed_floors
from loadtest.airflow import AIRFLOW_SCENARIOS, AirflowOptions, run_airflow
from loadtest.netpart import PartitionMethod
from loadtest.profiling import find_py_spy
from loadtest.runner import RunOptions, run_scenario
from loadtest.scenarios import Profile, Scenario, TaskKind, plan_for
from tradewind.errors import BadInputError

__all__ = ["EXIT_HARNESS", "EXIT_USAGE", "build_parser", "main", "parse_settings", "verdict_line"]

EXIT_USAGE = 2
EXIT_HARNESS = 3


def build_parser() -> argparse.ArgumentParser:
    """The harness's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest", description="Tradewind's load and chaos harness."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list the scenarios and their sizes per profile")
    run = sub.add_parser("run", help="run one scenario against a fresh cluster")
    run.add_argument("scenario", choices=[s.value for s in Scenario])
    run.add_argument("--profile", choices=[p.value for p in Profile], default="quick")
    run.add_argument("--schedulers", type=int, help="scheduler replicas (default 2; failover 3)")
    run.add_argument("--workers", type=int, default=0, help="worker agents (0: in-process)")
    run.add_argument("--slots", type=int, default=8, help="attempts each executor runs at once")
    run.add_argument("--task-kind", choices=[k.value for k in TaskKind], default="bash")
    run.add_argument("--dags", type=int, help="override the profile's DAG count")
    run.add_argument("--size", type=int, help="override the chain length / tree depth / width")
    run.add_argument(
        "--database-url",
        help="a PostgreSQL server to create the run's database on (default: embedded)",
    )
    run.add_argument("--keep-database", action="store_true", help="keep the run's database")
    run.add_argument("--out", type=Path, default=Path("loadtest-results"), help="report folder")
    run.add_argument("--restart", action="store_true", help="failover: restart the victim")
    run.add_argument(
        "--kill-tree", action="store_true", help="kill the victim's child processes too"
    )
    run.add_argument(
        "--partition",
        choices=[m.value for m in PartitionMethod],
        help="how to cut the worker off (default: netns when root, else proxy)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every process: scheduler.zombie_threshold_s=5 or TRADEWIND__...",
    )
    run.add_argument(
        "--py-spy",
        action="store_true",
        help="sample the cluster's Python processes with py-spy while the load runs; the "
        "report shows where the hottest one spends its time",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    air = sub.add_parser(
        "airflow",
        help="run a scenario's load on Apache Airflow 2 (LocalExecutor, default settings) for "
        "a side-by-side comparison",
    )
    air.add_argument("scenario", choices=[s.value for s in AIRFLOW_SCENARIOS])
    air.add_argument(
        "--airflow-python",
        type=Path,
        required=True,
        help="the python of an environment with apache-airflow[postgres] installed "
        "(`make bench-airflow` builds .venv-airflow)",
    )
    air.add_argument("--profile", choices=[p.value for p in Profile], default="quick")
    air.add_argument("--task-kind", choices=[k.value for k in TaskKind], default="bash")
    air.add_argument("--dags", type=int, help="override the profile's DAG count")
    air.add_argument("--size", type=int, help="override the chain length / tree depth / width")
    air.add_argument("--database-url", help="a PostgreSQL server (default: embedded)")
    air.add_argument("--out", type=Path, default=Path("loadtest-results"), help="report folder")
    air.add_argument(
        "--timeout",
        type=float,
        help="seconds for the load to finish (default: one per task instance, 600 at least)",
    )
    air.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    """`section.key=value` or `TRADEWIND__SECTION__KEY=value` as environment settings."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInputError(f"--set {pair!r}: expected KEY=VALUE")
        if not key.startswith("TRADEWIND__"):
            section, dot, name = key.partition(".")
            if not dot or not section or not name:
                raise BadInputError(f"--set {pair!r}: the key is section.key, e.g. scheduler.x")
            key = f"TRADEWIND__{section.upper()}__{name.upper()}"
        out[key] = value
    return out


def _list() -> int:
    for scenario in Scenario:
        sizes = []
        for profile in Profile:
            plan = plan_for(scenario, profile, schedulers=3, workers=2)
            s = plan.shape
            sizes.append(f"{profile} {s.dags} x {s.kind}({s.size})")
        fault = plan.fault.value if plan.fault.value != "none" else "no fault"
        print(f"{scenario.value:12} {fault:17} {'; '.join(sizes)}")
    return 0


def verdict_line(results: dict[str, Any]) -> str:
    """The one line the command prints: PASS/FAIL, latency, throughput, what failed or fell
    below its floor."""
    if results.get("skipped"):
        return f"SKIPPED {results['scenario']}: {results['skipped']}"
    lat = results["task_latency_ms"]
    head = "PASS" if results["ok"] else "FAIL"
    line = (
        f"{head} {results['scenario']}: task latency p50 {lat['p50']} ms p99 {lat['p99']} ms, "
        f"{results['throughput_tis_per_s']['overall']} task instances/s"
    )
    failed = [n for n, c in results["invariants"].items() if not c["ok"]]
    if failed:
        line += "; failed: " + ", ".join(failed)
    if results.get("fault_skipped"):
        line += f"; fault skipped: {results['fault_skipped']}"
    aims = results.get("aims") or {}
    below = missed_floors(aims) if aims.get("comparable") else []
    if below:  # a run set up otherwise is judged in summary.md, not here
        line += "; below the floor: " + "; ".join(below)
    return line


def _py_spy(wanted: bool) -> str | None:
    if not wanted:
        return None
    found = find_py_spy()
    if found is None:
        raise BadInputError("--py-spy needs py-spy (pip install py-spy, or `make venv`)")
    return found


def _run(args: argparse.Namespace) -> int:
    plan = plan_for(
        Scenario(args.scenario),
        Profile(args.profile),
        task_kind=TaskKind(args.task_kind),
        schedulers=args.schedulers,
        workers=args.workers,
        slots=args.slots,
        dags=args.dags,
        size=args.size,
        restart=args.restart,
        settings=parse_settings(args.set),
    )
    options = RunOptions(
        plan=plan,
        out_dir=args.out,
        database_url=args.database_url,
        keep_database=args.keep_database,
        show_progress=not args.quiet,
        kill_tree=args.kill_tree,
        partition_method=PartitionMethod(args.partition) if args.partition else None,
        py_spy=_py_spy(args.py_spy),
    )
    outcome = run_scenario(options)
    print(verdict_line(outcome.results))
    print(f"report: {outcome.run_dir / 'summary.md'}")
    return outcome.exit_code


def _airflow(args: argparse.Namespace) -> int:
    python = args.airflow_python
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise BadInputError(f"--airflow-python {python}: not an executable file")
    if args.timeout is not None and args.timeout <= 0:
        raise BadInputError(f"--timeout {args.timeout}: must be more than 0")
    # Two workers of 8 slots, as the aims are measured: fanout's pool is sized from them.
    plan = plan_for(
        Scenario(args.scenario),
        Profile(args.profile),
        task_kind=TaskKind(args.task_kind),
        workers=2,
        slots=8,
        dags=args.dags,
        size=args.size,
    )
    outcome = run_airflow(
        AirflowOptions(
            plan=plan,
            airflow_python=python,
            out_dir=args.out,
            database_url=args.database_url,
            show_progress=not args.quiet,
            timeout_s=args.timeout,
        )
    )
    r = outcome.results
    lat = r["task_latency_ms"]
    print(
        f"{'PASS' if r['ok'] else 'FAIL'} airflow {r['airflow_version']} {r['scenario']}: task "
        f"latency p50 {lat['p50']} ms p99 {lat['p99']} ms, "
        f"{r['throughput_tis_per_s']['overall']} task instances/s"
    )
    print(f"report: {outcome.run_dir / 'summary.md'}")
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        commands = {"list": lambda _: _list(), "run": _run, "airflow": _airflow}
        return commands[args.command](args)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:  # the cluster did not come up, or did not take the load
        print(f"harness failed: {exc}", file=sys.stderr)
        return EXIT_HARNESS
