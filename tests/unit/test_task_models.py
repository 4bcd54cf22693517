"""tradewind.models: what task code calls at run time (Variable.get, get_current_context),
answered by whatever source the worker's task process installs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tradewind.errors import BadInputError
from tradewind.exceptions import AirflowSkipException, SkipTask
from tradewind.models import (
    Variable,
    clear_task_runtime,
    get_current_context,
    install_task_runtime,
)


class Source:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[str] = []

    def get_variable(self, key: str) -> str | None:
        self.asked.append(key)
        return self.values.get(key)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    clear_task_runtime()


def test_get_reads_the_installed_source() -> None:
    source = Source({"name": "x", "cfg": '{"a": [1]}'})
    install_task_runtime(variables=source)
    assert Variable.get("name") == "x"
    assert Variable.get("cfg", deserialize_json=True) == {"a": [1]}
    assert source.asked == ["name", "cfg"]


def test_missing_variable_raises_keyerror_unless_a_default_is_given() -> None:
    install_task_runtime(variables=Source({}))
    with pytest.raises(KeyError, match="Variable nope does not exist"):
        Variable.get("nope")
    assert Variable.get("nope", "d1") == "d1"
    assert Variable.get("nope", default_var=None) is None
    assert Variable.get("nope", default="d2") == "d2"
    assert Variable.get("nope", default_var={"x": 1}, deserialize_json=True) == {"x": 1}


def test_invalid_json_is_a_clear_error() -> None:
    install_task_runtime(variables=Source({"bad": "{not json"}))
    with pytest.raises(BadInputError, match="Variable bad does not hold valid JSON"):
        Variable.get("bad", deserialize_json=True)


def test_outside_a_task_only_defaults_are_available() -> None:
    assert Variable.get("anything", "fallback") == "fallback"
    with pytest.raises(KeyError, match="not available while a DAG file is parsed"):
        Variable.get("anything")


def test_set_is_refused_inside_tasks() -> None:
    with pytest.raises(BadInputError, match=r"Variable\.set"):
        Variable.set("k", "v")


def test_current_context_only_inside_a_task() -> None:
    with pytest.raises(BadInputError, match="no context was found"):
        get_current_context()
    install_task_runtime(context={"ds": "2024-01-02"})
    assert get_current_context()["ds"] == "2024-01-02"


def test_skip_exception_has_airflows_name() -> None:
    assert SkipTask is AirflowSkipException
