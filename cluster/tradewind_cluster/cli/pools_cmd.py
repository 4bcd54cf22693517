"""`tradewind pools list|get|set|delete`: the slots that bound how many task instances run at
once per pool, as Airflow's `airflow pools`. Deleting a pool in use is allowed (Airflow does
not refuse either): what happens to its task instances is printed."""

from __future__ import annotations

import argparse
import sys

from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.output import FORMATS, render
from tradewind_cluster.store.pools import PoolRow, delete_pool, get_pool, list_pools, set_pool

__all__ = ["register"]

COLUMNS = [
    "pool",
    "slots",
    "description",
    "occupied_slots",
    "running",
    "queued",
    "scheduled",
    "open_slots",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `pools` command group."""
    pools = sub.add_parser("pools", help="manage pools")
    psub = pools.add_subparsers(dest="pools_command", required=True, metavar="COMMAND")
    lst = psub.add_parser("list", help="every pool with its use")
    lst.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")
    lst.set_defaults(handler=_list)
    get = psub.add_parser("get", help="one pool with its use")
    get.add_argument("pool", help="the pool name")
    get.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")
    get.set_defaults(handler=_get)
    st = psub.add_parser("set", help="create a pool or change its slots")
    st.add_argument("pool", help="the pool name")
    st.add_argument("slots", type=int, help="how many slots (0 or more)")
    st.add_argument("description", nargs="?", help="description (kept when left out)")
    st.set_defaults(handler=_set)
    dl = psub.add_parser("delete", help="delete a pool (never default_pool)")
    dl.add_argument("pool", help="the pool name")
    dl.set_defaults(handler=_delete)


def _row(p: PoolRow) -> dict[str, object]:
    return {
        "pool": p.name,
        "slots": p.slots,
        "description": p.description,
        "occupied_slots": p.occupied_slots,
        "running": p.running,
        "queued": p.queued,
        "scheduled": p.scheduled,
        "open_slots": p.open_slots,
    }


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        pools = db.read(lambda c: list_pools(c, limit=100_000))
    render([_row(p) for p in pools], args.output, columns=COLUMNS)
    return 0


def _missing(name: str) -> int:
    print(f"Pool {name} does not exist", file=sys.stderr)
    return 1


def _get(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        found = db.read(lambda c: get_pool(c, args.pool))
    if found is None:
        return _missing(args.pool)
    render([_row(found)], args.output, columns=COLUMNS)
    return 0


def _set(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        created = db.transaction(lambda c: set_pool(c, args.pool, args.slots, args.description))
    print(f"Pool {args.pool} {'created' if created else 'updated'}")
    return 0


def _delete(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        gone = db.transaction(lambda c: delete_pool(c, args.pool))
    if gone is None:
        return _missing(args.pool)
    print(f"Pool {args.pool} deleted")
    if gone.queued or gone.running:
        print(
            f"{gone.queued + gone.running} task instances queued or running in it carry on "
            "to the end of their current try",
            file=sys.stderr,
        )
    if gone.scheduled or gone.queued or gone.running:
        print(
            f"task instances of pool {args.pool} will not be queued again until a pool of "
            f"that name exists ({gone.scheduled} scheduled now wait): recreate it with "
            f"`tradewind pools set {args.pool} SLOTS`",
            file=sys.stderr,
        )
    return 0
