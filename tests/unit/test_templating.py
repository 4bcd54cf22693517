"""Template rendering as Airflow 2 does it: context names, macros, filters, StrictUndefined,
XComArgs resolved but not rendered, nested values, native rendering and the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import jinja2
import jinja2.sandbox
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradewind.dag import DAG
from tradewind.models import clear_task_runtime, install_task_runtime
from tradewind.operators.bash import BashOperator
from tradewind.operators.python import PythonOperator
from tradewind_cluster.worker.task_context import RunInfo, build_context, task_params
from tradewind_cluster.worker.templating import (
    Renderer,
    RenderError,
    TemplateOptions,
    build_environment,
    ds_add,
    ds_format,
)

RUN = RunInfo(
    run_id="scheduled__2024-01-02T00:00:00+00:00",
    run_type="scheduled",
    logical_date=datetime(2024, 1, 2, tzinfo=UTC),
    data_interval_start=datetime(2024, 1, 2, tzinfo=UTC),
    data_interval_end=datetime(2024, 1, 3, tzinfo=UTC),
    conf={"table": "from_conf"},
    params={"table": "from_dag", "limit": 10},
)


class FakeTI:
    """Answers xcom_pull from a dict, as the runtime task instance would."""

    def __init__(self, xcoms: dict[tuple[str, str], Any]) -> None:
        self.xcoms = xcoms
        self.try_number = 3

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value") -> Any:
        return self.xcoms.get((str(task_ids), key))


class Variables:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get_variable(self, key: str) -> str | None:
        return self.values.get(key)


@pytest.fixture(autouse=True)
def _variables() -> Iterator[None]:
    install_task_runtime(variables=Variables({"env": "prod", "cfg": '{"n": 2}'}))
    yield
    clear_task_runtime()


def context(xcoms: dict[tuple[str, str], Any] | None = None) -> dict[str, Any]:
    ti = FakeTI(xcoms or {})
    return build_context(
        run=RUN, dag_id="d", task_id="t", dag=None, task=None, ti=ti,
        params=task_params(RUN, {}), try_number=3,
    )  # fmt: skip


def renderer(
    ctx: dict[str, Any] | None = None, options: TemplateOptions | None = None, pulls: Any = None
) -> Renderer:
    env = build_environment(options or TemplateOptions())
    pull = pulls or (lambda task_id, key: f"pulled:{task_id}:{key}")
    return Renderer(env, ctx if ctx is not None else context(), pull, task_id="t")


def render(text: str, **kwargs: Any) -> Any:
    return renderer(**kwargs).render(text)


def test_macros_as_airflow_documents_them() -> None:
    assert ds_add("2015-01-01", 5) == "2015-01-06"
    assert ds_add("2015-01-06", -5) == "2015-01-01"
    assert ds_add("2015-01-06", 0) == "2015-01-06"
    assert ds_format("2015-01-01", "%Y-%m-%d", "%m-%d-%y") == "01-01-15"
    assert ds_format("1/5/2015", "%m/%d/%Y", "%Y-%m-%d") == "2015-01-05"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ds }}", "2024-01-02"),
        ("{{ ds_nodash }}", "20240102"),
        ("{{ ts }}", "2024-01-02T00:00:00+00:00"),
        ("{{ ts_nodash }}", "20240102T000000"),
        ("{{ ts_nodash_with_tz }}", "20240102T000000+0000"),
        ("{{ yesterday_ds }} {{ tomorrow_ds_nodash }}", "2024-01-01 20240103"),
        ("{{ logical_date.year }}", "2024"),
        ("{{ data_interval_end | ds }}", "2024-01-03"),
        ("{{ data_interval_start | ts_nodash }}", "20240102T000000"),
        ("{{ run_id }}", "scheduled__2024-01-02T00:00:00+00:00"),
        ("{{ dag_run.run_id == run_id }}", "True"),
        ("{{ dag_run.conf['table'] }} {{ conf.table }}", "from_conf from_conf"),
        ("{{ macros.ds_add(ds, 7) }}", "2024-01-09"),
        ("{{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m') }}", "02/01"),
        ("{{ macros.datetime(2020, 1, 1).year }}", "2020"),
        ("{{ task_instance_key_str }}", "d__t__20240102"),
        ("{{ ti.try_number }}", "3"),
        ("{{ var.value.env }}", "prod"),
        ("{{ var.json.cfg.n + 1 }}", "3"),
        ("{{ var.value.get('missing', 'fallback') }}", "fallback"),
    ],
)
def test_context_names(template: str, expected: str) -> None:
    assert render(template) == expected


def test_run_conf_overrides_params_as_airflow_default() -> None:
    assert render("{{ params.table }} {{ params.limit }}") == "from_conf 10"
    params = task_params(RUN, {"params": {"limit": 5, "own": 1}})
    assert params == {"table": "from_conf", "limit": 5, "own": 1}


def test_ti_xcom_pull_in_a_template() -> None:
    ctx = context({("foo", "table_name"): "events_2024"})
    assert render("{{ ti.xcom_pull(task_ids='foo', key='table_name') }}", ctx=ctx) == (
        "events_2024"
    )


def test_undefined_name_fails_naming_the_template_field_and_name() -> None:
    op = BashOperator(task_id="t", bash_command="echo {{ no_such_name }}")
    with pytest.raises(RenderError) as err:
        renderer().render_fields(op, op.template_fields)
    text = str(err.value)
    assert "'no_such_name' is undefined" in text
    assert "field 'bash_command'" in text
    assert "echo {{ no_such_name }}" in text
    assert "task 't'" in text


def test_missing_variable_fails() -> None:
    with pytest.raises(RenderError, match="Variable nope does not exist"):
        renderer().render_fields(
            BashOperator(task_id="t", bash_command="{{ var.value.nope }}"), ["bash_command"]
        )


def test_a_dag_may_choose_a_lenient_undefined() -> None:
    options = TemplateOptions(template_undefined=jinja2.Undefined)
    assert render("a{{ missing }}b", options=options) == "ab"


def test_xcomargs_are_pulled_and_not_rendered() -> None:
    with DAG("x", schedule=None):
        up = PythonOperator(task_id="up", python_callable=len)
        down = PythonOperator(
            task_id="down", python_callable=len, op_args=[up.output, "{{ ds }}"],
            op_kwargs={"k": up.output["key"]},
        )  # fmt: skip
    pulls = {("up", "return_value"): "{{ ds }}", ("up", "key"): 7}
    r = renderer(pulls=lambda task_id, key: pulls[(task_id, key)])
    r.render_fields(down, down.template_fields)
    assert down.op_args == ["{{ ds }}", "2024-01-02"]
    assert down.op_kwargs == {"k": 7}


def test_serialized_xcomarg_references_are_pulled() -> None:
    fields = {"bash_command": {"__xcomarg__": {"task_id": "up", "key": "return_value"}}}
    out = renderer().render_mapping(fields, ["bash_command"])
    assert out["bash_command"] == "pulled:up:return_value"


def test_containers_render_item_by_item_and_keep_their_type() -> None:
    value = {"a": ["{{ ds }}", ("{{ ds_nodash }}", 1)], "b": {"{{ ds }}"}, "c": None}
    assert render(value) == {"a": ["2024-01-02", ("20240102", 1)], "b": {"2024-01-02"}, "c": None}


def test_objects_with_template_fields_render_in_place() -> None:
    class Query:
        template_fields = ("sql",)

        def __init__(self) -> None:
            self.sql = "select '{{ ds }}'"

    q = Query()
    assert render(q) is q
    assert q.sql == "select '2024-01-02'"


def test_falsy_fields_are_left_alone_and_unknown_fields_fail() -> None:
    op = BashOperator(task_id="t", bash_command="true", env={})
    renderer().render_fields(op, ["env", "cwd"])
    assert op.env == {}
    assert op.cwd is None
    with pytest.raises(RenderError, match="'nope' is configured as a template field"):
        renderer().render_fields(op, ["nope"])


def test_native_rendering_keeps_python_types() -> None:
    options = TemplateOptions(render_template_as_native_obj=True)
    assert render("{{ 1 + 1 }}", options=options) == 2
    assert render("{{ [1, 2] }}", options=options) == [1, 2]
    assert render("123", options=options) == 123


def test_user_macros_and_filters() -> None:
    options = TemplateOptions(
        user_defined_macros={"project": "acme"},
        user_defined_filters={"shout": lambda s: s.upper() + "!"},
    )
    assert render("{{ project | shout }}", options=options) == "ACME!"


def test_the_sandbox_refuses_dunders() -> None:
    with pytest.raises(jinja2.sandbox.SecurityError):
        render("{{ ''.__class__.__mro__ }}")


def test_do_extension_is_enabled_as_in_airflow() -> None:
    assert render("{% set xs = [] %}{% do xs.append(1) %}{{ xs }}") == "[1]"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="{\r"), max_size=40), st.booleans())
def test_plain_text_shortcut_matches_jinja(text: str, keep: bool) -> None:
    options = TemplateOptions(jinja_environment_kwargs={"keep_trailing_newline": keep})
    env = build_environment(options)
    expected = env.from_string(text).render()
    assert Renderer(env, {}, lambda t, k: None, task_id="t").render(text) == expected


_NAME_VALUES = {
    "run_id": "manual__2026",
    "try_number": 3,
    "none_value": None,
    "flag": True,
    "none": "a variable Jinja never reads",
    "line": "ends with a newline\n",
}
_PIECES = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\r"), max_size=8),
    st.sampled_from(
        [
            "{{ run_id }}",
            "{{try_number}}",
            "{{\n none_value\t}}",
            "{{ flag }}",
            "{{ line }}",  # the value's newline stays; only the source's last one goes
            "{{ missing }}",  # not in the context: Jinja decides (StrictUndefined raises)
            "{{ none }}",  # a literal, not the variable
            "{{ run_id | upper }}",
            "{{ 1 + 2 }}",
            "{%- if flag %}x{% endif %}",
            "{# note #}",
            "{{",
            "}}",
            "{",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=6).map("".join), st.booleans())
def test_name_substitution_shortcut_matches_jinja(text: str, keep: bool) -> None:
    """Texts of `{{ name }}` take a shortcut past the compiler; whatever the text, the
    rendered value (or the failure) is Jinja's."""
    options = TemplateOptions(jinja_environment_kwargs={"keep_trailing_newline": keep})
    env = build_environment(options)
    try:
        expected: object = env.from_string(text).render(_NAME_VALUES)
    except Exception as exc:  # noqa: BLE001 - the renderer must fail too
        expected = type(exc)
    renderer = Renderer(env, dict(_NAME_VALUES), lambda t, k: None, task_id="t")
    try:
        got: object = renderer.render(text)
    except Exception as exc:  # noqa: BLE001 - compared with Jinja's failure
        got = type(exc)
    assert got == expected


def test_name_substitution_shortcut_compiles_nothing() -> None:
    env = build_environment(TemplateOptions())
    ctx = {"run_id": "r1", "try_number": 2}
    text = "echo {{ run_id }} {{try_number}} done"
    assert Renderer(env, ctx, lambda t, k: None, task_id="t").render(text) == "echo r1 2 done"
    assert not env.__dict__.get("_tradewind_compiled")  # the compiled-template cache is unused
    assert Renderer(env, ctx, lambda t, k: None, task_id="t").render("{{ run_id | upper }}") == "R1"
    assert env.__dict__.get("_tradewind_compiled")
