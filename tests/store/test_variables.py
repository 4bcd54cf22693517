"""Variables on a real PostgreSQL with Airflow's rules: set replaces the description, update
keeps it; import stores non-strings as indented JSON and overwrites, skips or fails on existing
keys; export parses values back from JSON where they are JSON."""

from __future__ import annotations

import pytest

from tradewind.errors import BadInputError
from tradewind_cluster.store import variables as v
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.variables import OnExisting, VariableRow

pytestmark = pytest.mark.store


def test_set_get_update_delete(database: Database) -> None:
    database.transaction(lambda c: v.set_variable(c, "region", "eu-west-1", description="where"))
    assert database.read(lambda c: v.get_variable(c, "region")) == VariableRow(
        key="region", val="eu-west-1", description="where"
    )
    assert database.transaction(lambda c: v.update_variable(c, "region", "us-east-1"))
    got = database.read(lambda c: v.get_variable(c, "region"))
    assert got == VariableRow(key="region", val="us-east-1", description="where")
    # Airflow's Variable.set replaces the row: a description not given becomes None.
    database.transaction(lambda c: v.set_variable(c, "region", "ap-south-1"))
    assert database.read(lambda c: v.get_variable(c, "region")) == VariableRow(
        key="region", val="ap-south-1"
    )
    assert not database.transaction(lambda c: v.update_variable(c, "missing", "x"))
    assert database.transaction(lambda c: v.delete_variable(c, "region"))
    assert not database.transaction(lambda c: v.delete_variable(c, "region"))
    assert database.read(lambda c: v.get_variable(c, "region")) is None


def test_list_is_ordered_by_key(database: Database) -> None:
    for key in ("b", "a", "c"):
        database.transaction(lambda c, key=key: v.set_variable(c, key, key.upper()))
    assert [r.key for r in database.read(lambda c: v.list_variables(c))] == ["a", "b", "c"]


@pytest.mark.parametrize("key", ["", "   ", "k" * 251, "a\x00b"])
def test_bad_keys_are_refused_with_a_clear_message(database: Database, key: str) -> None:
    with pytest.raises(BadInputError, match="variable key"):
        database.transaction(lambda c: v.set_variable(c, key, "x"))


def test_a_value_with_a_nul_is_refused(database: Database) -> None:
    with pytest.raises(BadInputError, match="'k': the value contains a NUL"):
        database.transaction(lambda c: v.set_variable(c, "k", "a\x00b"))


def test_import_stores_non_strings_as_indented_json(database: Database) -> None:
    data = {"s": "plain", "n": 3, "obj": {"a": [1, 2]}, "flag": True, "nothing": None}
    result = database.transaction(lambda c: v.import_variables(c, data))
    assert result.imported == ("s", "n", "obj", "flag", "nothing")
    stored = {r.key: r.val for r in database.read(lambda c: v.list_variables(c))}
    assert stored == {
        "s": "plain",
        "n": "3",
        "obj": '{\n  "a": [\n    1,\n    2\n  ]\n}',
        "flag": "true",
        "nothing": "null",
    }


def test_import_on_existing_keys_overwrites_skips_or_fails(database: Database) -> None:
    database.transaction(lambda c: v.set_variable(c, "a", "old"))
    skipped = database.transaction(
        lambda c: v.import_variables(c, {"a": "new", "b": "B"}, on_existing=OnExisting.SKIP)
    )
    assert (skipped.imported, skipped.skipped) == (("b",), ("a",))
    assert database.read(lambda c: v.get_variable(c, "a")) == VariableRow(key="a", val="old")
    with pytest.raises(
        BadInputError, match=r"variables \['a', 'b'\] already exist; nothing was imported"
    ):
        database.transaction(
            lambda c: v.import_variables(
                c, {"a": "x", "b": "y", "c": "z"}, on_existing=OnExisting.FAIL
            )
        )
    assert database.read(lambda c: v.get_variable(c, "c")) is None
    over = database.transaction(lambda c: v.import_variables(c, {"a": "new"}))
    assert over.imported == ("a",)
    assert database.read(lambda c: v.get_variable(c, "a")) == VariableRow(key="a", val="new")


def test_import_checks_every_key_before_writing(database: Database) -> None:
    with pytest.raises(BadInputError, match="variable key"):
        database.transaction(lambda c: v.import_variables(c, {"good": "1", "": "2"}))
    assert database.read(lambda c: v.list_variables(c)) == []
    with pytest.raises(BadInputError, match="JSON object of key: value, not list"):
        database.transaction(lambda c: v.import_variables(c, ["a"]))  # type: ignore[arg-type]


def test_export_parses_json_values_and_keeps_other_text(database: Database) -> None:
    database.transaction(
        lambda c: v.import_variables(
            c, {"n": 3, "obj": {"a": 1}, "s": "plain", "numeric_text": "42"}
        )
    )
    exported = database.read(lambda c: v.export_variables(c))
    # As Airflow's `variables export`: "42" was stored as text but parses as JSON: a number.
    assert exported == {"n": 3, "obj": {"a": 1}, "s": "plain", "numeric_text": 42}
    database.transaction(lambda c: v.import_variables(c, exported))
    assert database.read(lambda c: v.export_variables(c)) == exported
