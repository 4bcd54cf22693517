"""Rendering listings as a table (rich), JSON (stable, for scripts) or YAML."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

__all__ = ["FORMATS", "render"]

FORMATS = ("table", "json", "yaml")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def render(
    rows: Sequence[Mapping[str, Any]], fmt: str, *, columns: Sequence[str] | None = None
) -> None:
    """Print rows in the chosen format; columns fixes the order (and the table's headers)."""
    cols = list(columns or (rows[0].keys() if rows else []))
    data = [{c: _plain(r.get(c)) for c in cols} for r in rows]
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        table = Table(show_header=True, header_style="bold")
        for c in cols:
            table.add_column(c)
        for r in data:
            table.add_row(*("" if r[c] is None else str(r[c]) for c in cols))
        Console(soft_wrap=True).print(table)
