"""`tradewind db upgrade|check|reset`: schema migrations of the metadata database."""

from __future__ import annotations

import argparse

from tradewind.errors import BadInputError
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.store import migrate

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `db` command group."""
    db = sub.add_parser("db", help="manage the metadata database schema")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = dsub.add_parser("upgrade", help="apply pending migrations (safe to run concurrently)")
    up.set_defaults(handler=_upgrade)
    chk = dsub.add_parser("check", help="exit 0 when the schema is current, 1 otherwise")
    chk.set_defaults(handler=_check)
    rst = dsub.add_parser("reset", help="drop all data and migrate again (development only)")
    rst.add_argument("--yes", "-y", action="store_true", help="confirm losing every row")
    rst.set_defaults(handler=_reset)


def _upgrade(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        before = migrate.check(db)
        status = migrate.upgrade(db, default_pool_slots=ctx.settings.core.default_pool_slots)
    if before.current == status.current:
        print(f"schema already at {status.current} (head)")
    else:
        print(f"schema upgraded from {before.current or 'empty'} to {status.current} (head)")
    return 0


def _check(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        status = migrate.check(db)
    if status.up_to_date:
        print(f"schema is current ({status.current})")
        return 0
    current = status.current or "empty"
    print(f"schema is at {current}, head is {status.head}: run `tradewind db upgrade`")
    return 1


def _reset(args: argparse.Namespace, ctx: CliContext) -> int:
    if not args.yes:
        raise BadInputError("db reset deletes every row; pass --yes to confirm")
    with ctx.database() as db:
        status = migrate.reset(db, default_pool_slots=ctx.settings.core.default_pool_slots)
    print(f"database reset; schema at {status.current}")
    return 0
