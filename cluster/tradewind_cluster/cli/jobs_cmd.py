"""`tradewind jobs check`: a liveness probe that exits 0 only when a live scheduler matches."""

from __future__ import annotations

import argparse

from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.store import members

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `jobs` command group."""
    jobs = sub.add_parser("jobs", help="check scheduler liveness")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    chk = jsub.add_parser("check", help="exit 0 when a live scheduler is found, 1 otherwise")
    chk.add_argument(
        "--job-type",
        default="SchedulerJob",
        choices=["SchedulerJob"],
        help="only schedulers are tracked",
    )
    chk.add_argument("--hostname", help="only schedulers on this host")
    chk.add_argument("--limit", type=int, default=1, help="how many live schedulers to look for")
    chk.add_argument(
        "--allow-multiple", action="store_true", help="succeed when more than one matches"
    )
    chk.set_defaults(handler=_check)


def _check(args: argparse.Namespace, ctx: CliContext) -> int:
    threshold = ctx.settings.scheduler.health_threshold_s
    with ctx.database() as db:
        rows = db.read(lambda c: members.list_members(c, limit=1000))
    live = [
        r for r in rows if r.heartbeat_age_s <= threshold and args.hostname in (None, r.hostname)
    ]
    live = live[: max(1, args.limit)]
    if not live:
        where = f" on host {args.hostname}" if args.hostname else ""
        print(f"No alive jobs found{where}.")
        return 1
    if len(live) > 1 and not args.allow_multiple:
        print(f"Found {len(live)} alive jobs. Expected only one.")
        return 1
    print(f"Found {len(live)} alive job{'s' if len(live) > 1 else ''}.")
    return 0
