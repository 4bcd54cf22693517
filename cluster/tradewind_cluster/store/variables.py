"""Variables: the global key → text store of Airflow's Variable, with the rules of its CLI:
`import` stores non-string values as JSON and can overwrite, skip or fail on existing keys;
`export` parses each value back from JSON where it is JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from tradewind.errors import BadInputError
from tradewind_cluster.store.schema import variable

__all__ = [
    "MAX_KEY_LENGTH",
    "ImportResult",
    "OnExisting",
    "VariableRow",
    "delete_variable",
    "encode_value",
    "export_variables",
    "get_variable",
    "import_variables",
    "list_variables",
    "set_variable",
    "update_variable",
]

v = variable
MAX_KEY_LENGTH = 250  # Airflow's ID_LEN, the length of variable.key


class OnExisting(StrEnum):
    """What `import_variables` does with a key that already exists (Airflow's
    --action-on-existing-key)."""

    OVERWRITE = "overwrite"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableRow:
    """One variable as stored."""

    key: str
    val: str
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    """Keys written and keys left alone because they existed (with OnExisting.SKIP)."""

    imported: tuple[str, ...]
    skipped: tuple[str, ...]


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise BadInputError(f"variable key {key!r} must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise BadInputError(
            f"variable key {key[:40]!r}... is {len(key)} characters, over {MAX_KEY_LENGTH}"
        )
    if "\x00" in key:
        raise BadInputError(f"variable key {key!r} contains a NUL character")
    return key


def _check_val(key: str, val: str) -> str:
    if "\x00" in val:
        raise BadInputError(f"variable {key!r}: the value contains a NUL character")
    return val


def encode_value(value: Any) -> str:
    """A string as is; anything else as indented JSON (Airflow's serialize_json=True)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"variable value {value!r} cannot be stored as JSON: {exc}") from None


def get_variable(conn: Connection, key: str) -> VariableRow | None:
    """One variable, or None."""
    row = conn.execute(sa.select(v).where(v.c.key == key)).mappings().first()
    return None if row is None else VariableRow(**row)


def set_variable(conn: Connection, key: str, val: str, *, description: str | None = None) -> None:
    """Create or replace a variable; like Airflow's Variable.set the description is replaced
    too (None when not given)."""
    values = {"val": _check_val(_check_key(key), val), "description": description}
    conn.execute(
        pg_insert(v)
        .values(key=key, **values)
        .on_conflict_do_update(index_elements=[v.c.key], set_=values)
    )


def update_variable(conn: Connection, key: str, val: str) -> bool:
    """Change an existing variable's value, keeping its description; False when it does not
    exist (Airflow's Variable.update raises KeyError there)."""
    result = conn.execute(
        sa.update(v).where(v.c.key == key).values(val=_check_val(_check_key(key), val))
    )
    return result.rowcount == 1


def delete_variable(conn: Connection, key: str) -> bool:
    """Delete a variable; False when it did not exist."""
    return conn.execute(sa.delete(v).where(v.c.key == key)).rowcount == 1


def list_variables(conn: Connection, *, limit: int = 10_000) -> list[VariableRow]:
    """Variables by key."""
    rows = conn.execute(sa.select(v).order_by(v.c.key).limit(limit)).mappings()
    return [VariableRow(**r) for r in rows]


def import_variables(
    conn: Connection, data: Mapping[str, Any], *, on_existing: OnExisting = OnExisting.OVERWRITE
) -> ImportResult:
    """Import a parsed variables file ({key: value}) in one transaction; every key is checked
    before anything is written. OnExisting.FAIL raises BadInputError naming the existing keys."""
    if not isinstance(data, Mapping):
        raise BadInputError(
            f"a variables file must hold a JSON object of key: value, not {type(data).__name__}"
        )
    encoded = {_check_key(k): _check_val(k, encode_value(val)) for k, val in data.items()}
    existing: set[str] = set()
    if on_existing is not OnExisting.OVERWRITE and encoded:
        existing = set(conn.execute(sa.select(v.c.key).where(v.c.key.in_(list(encoded)))).scalars())
    if on_existing is OnExisting.FAIL and existing:
        raise BadInputError(f"variables {sorted(existing)} already exist; nothing was imported")
    imported: list[str] = []
    for key, val in encoded.items():
        if key in existing:
            continue
        set_variable(conn, key, val)
        imported.append(key)
    return ImportResult(imported=tuple(imported), skipped=tuple(sorted(existing)))


def export_variables(conn: Connection, *, limit: int = 100_000) -> dict[str, Any]:
    """{key: value} for every variable, each value parsed as JSON where it parses (Airflow's
    `variables export`), else the text itself."""
    decoder = json.JSONDecoder()
    out: dict[str, Any] = {}
    for row in list_variables(conn, limit=limit):
        try:
            out[row.key] = decoder.decode(row.val)
        except ValueError:
            out[row.key] = row.val
    return out
