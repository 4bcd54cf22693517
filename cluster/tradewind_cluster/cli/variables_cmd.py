"""`tradewind variables list|get|set|delete|import|export`, as Airflow's `airflow variables`:
`get` of a missing key exits 1 with one line on stderr; import and export use JSON files of
{key: value}, "-" meaning stdin / stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tradewind.errors import BadInputError
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.output import FORMATS, render
from tradewind_cluster.store.variables import (
    OnExisting,
    delete_variable,
    export_variables,
    get_variable,
    import_variables,
    list_variables,
    set_variable,
)

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `variables` command group."""
    var = sub.add_parser("variables", help="manage Variables")
    vsub = var.add_subparsers(dest="variables_command", required=True, metavar="COMMAND")
    lst = vsub.add_parser("list", help="every variable's key")
    lst.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")
    lst.set_defaults(handler=_list)
    get = vsub.add_parser("get", help="print a variable's value")
    get.add_argument("key", help="the variable's key")
    get.add_argument("-d", "--default", help="print this instead when the key does not exist")
    get.add_argument("-j", "--json", action="store_true", help="parse the value as JSON")
    get.set_defaults(handler=_get)
    st = vsub.add_parser("set", help="create or replace a variable")
    st.add_argument("key", help="the variable's key")
    st.add_argument("value", help="the value (text)")
    st.add_argument("--description", help="what the variable is for")
    st.set_defaults(handler=_set)
    dl = vsub.add_parser("delete", help="delete a variable")
    dl.add_argument("key", help="the variable's key")
    dl.set_defaults(handler=_delete)
    imp = vsub.add_parser("import", help="import variables from a JSON file ('-': stdin)")
    imp.add_argument("file", help="a JSON object of key: value")
    imp.add_argument(
        "-a",
        "--action-on-existing-key",
        choices=[o.value for o in OnExisting],
        default=OnExisting.OVERWRITE.value,
        help="what to do with keys that exist already",
    )
    imp.set_defaults(handler=_import)
    exp = vsub.add_parser("export", help="export every variable to a JSON file ('-': stdout)")
    exp.add_argument("file", help="where to write")
    exp.set_defaults(handler=_export)


def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        rows = db.read(lambda c: list_variables(c, limit=100_000))
    render([{"key": r.key} for r in rows], args.output, columns=["key"])
    return 0


def _missing(key: str) -> int:
    print(f"Variable {key} does not exist", file=sys.stderr)
    return 1


def _get(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        row = db.read(lambda c: get_variable(c, args.key))
    if row is None:
        if args.default is None:
            return _missing(args.key)
        print(args.default)
        return 0
    if not args.json:
        print(row.val)
        return 0
    try:
        value = json.loads(row.val)
    except ValueError as exc:
        raise BadInputError(f"Variable {args.key} does not hold valid JSON: {exc}") from None
    print(json.dumps(value, indent=2))
    return 0


def _set(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        db.transaction(
            lambda c: set_variable(c, args.key, args.value, description=args.description)
        )
    print(f"Variable {args.key} created")
    return 0


def _delete(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        deleted = db.transaction(lambda c: delete_variable(c, args.key))
    if not deleted:
        return _missing(args.key)
    print(f"Variable {args.key} deleted")
    return 0


def _read_file(name: str) -> Any:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"Missing variables file {name}") from None
    except OSError as exc:
        raise BadInputError(f"cannot read variables file {name}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"Invalid variables file {name}: {exc}") from None


def _import(args: argparse.Namespace, ctx: CliContext) -> int:
    data = _read_file(args.file)
    on_existing = OnExisting(args.action_on_existing_key)
    with ctx.database() as db:
        result = db.transaction(lambda c: import_variables(c, data, on_existing=on_existing))
    print(f"Imported {len(result.imported)} of {len(data)} variables")
    if result.skipped:
        print(f"Skipped {len(result.skipped)} existing: {', '.join(result.skipped)}")
    return 0


def _export(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.database() as db:
        data = db.read(export_variables)
    text = json.dumps(data, sort_keys=True, indent=4) + "\n"
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.file).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"{len(data)} variables successfully exported to {args.file}")
    return 0
