"""`tradewind config list|get`: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse

from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.output import FORMATS, render
from tradewind_cluster.config import get_value, settings_rows

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `config` command group."""
    cfg = sub.add_parser("config", help="show the effective configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    lst = csub.add_parser("list", help="every section and key with its value")
    lst.add_argument("-o", "--output", choices=FORMATS, default="table")
    lst.add_argument("--section", help="only this section")
    lst.set_defaults(handler=_list)
    get = csub.add_parser("get", help="one value")
    get.add_argument("section")
    get.add_argument("key")
    get.set_defaults(handler=_get)


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    rows = [
        {"section": s, "key": k, "value": v}
        for s, k, v in settings_rows(ctx.settings)
        if args.section in (None, s)
    ]
    render(rows, args.output, columns=["section", "key", "value"])
    return 0


def _get(args: argparse.Namespace, ctx: CliContext) -> int:
    print(get_value(ctx.settings, args.section, args.key))
    return 0
