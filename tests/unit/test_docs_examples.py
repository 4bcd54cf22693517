"""docs/ stays true to the code: every Python block of docs/concepts.md runs and builds DAGs that
serialize, what the prose says about those DAGs holds, every table marked `<!-- checked: ... -->`
is recomputed from the core's decisions, and docs/metrics.md is exactly what the generator
writes from METRICS (every metric listed, nothing else)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tradewind import DAG, BashOperator, EmptyOperator, TriggerRule
from tradewind.dag import capture_dags
from tradewind.errors import DagDefinitionError, InvalidTriggerRuleError, TradewindError
from tradewind.operators import DummyOperator
from tradewind.operators.python import KNOWN_CONTEXT_KEYS
from tradewind.schedules import manual_data_interval, next_dagrun_info
from tradewind.scheduling.examine import RunView, TaskInstanceView, examine_run
from tradewind.scheduling.retries import retry_delay
from tradewind.serialization import dag_to_spec, spec_from_json, spec_to_json
from tradewind.spec import BranchKind, DagSpec, TaskKind
from tradewind.states import DagRunState, TaskInstanceState
from tradewind_cluster.config import Settings
from tradewind_cluster.observability.metrics import METRICS
from tradewind_cluster.observability.reference import (
    find_emitters,
    main,
    metrics_markdown,
    process_of,
)
from tradewind_cluster.worker.task_context import RunInfo, build_context
from tradewind_cluster.worker.templating import FILTERS, macros_namespace

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONCEPTS = (DOCS / "concepts.md").read_text(encoding="utf-8")
START = datetime(2026, 1, 1, tzinfo=UTC)

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_TICKED = re.compile(r"`([^`]+)`")


# ------------------------------------------------------------------------------ doc helpers


@dataclass(frozen=True, slots=True)
class Block:
    """One ```python block of a doc: where it starts and its source."""

    line: int
    source: str

    def __str__(self) -> str:
        return f"concepts.md:{self.line}"


def python_blocks(text: str) -> list[Block]:
    """Every ```python block, with the line its code starts on."""
    return [
        Block(line=text.count("\n", 0, m.start(1)) + 1, source=m.group(1))
        for m in _BLOCK.finditer(text)
    ]


def checked_table(text: str, name: str) -> list[list[str]]:
    """The body rows of the table after `<!-- checked: name -->`, cells stripped."""
    marker = f"<!-- checked: {name} -->"
    assert marker in text, f"docs/concepts.md lost its {marker} table"
    lines = text.split(marker, 1)[1].lstrip("\n").splitlines()
    rows: list[list[str]] = []
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    assert len(rows) > 2, f"the {name} table has no rows"
    return rows[2:]  # header and separator


def bare(cell: str) -> str:
    """A cell without its backticks."""
    return cell.replace("`", "").strip()


def row_id(row: list[str]) -> str:
    """A readable ASCII test id for a table row."""
    return re.sub(r"[^\w:.=-]+", "_", " ".join(bare(cell) for cell in row)).strip("_")


def paragraph(text: str, opening: str) -> str:
    """The paragraph that starts with `opening`."""
    start = text.index(opening)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else None]


def run_block(block: Block) -> list[DAG]:
    """Execute a block as a DAG file and return the DAGs it entered."""
    namespace: dict[str, Any] = {"__name__": f"docs_concepts_{block.line}"}
    with capture_dags() as found:
        exec(compile(block.source, str(block), "exec"), namespace)
    return list(found)


def at(text: str) -> datetime:
    """'2026-03-10 15:30' as an aware UTC datetime."""
    return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def interval(text: str) -> tuple[datetime, datetime]:
    start, end = text.split("→")
    return at(start), at(end)


def schedule_value(cell: str) -> object:
    return eval(bare(cell), {"timedelta": timedelta})


def spec_of(
    schedule: object, *, catchup: bool = True, start: datetime | None = START, **task: Any
) -> DagSpec:
    with DAG("checked", schedule=schedule, start_date=start, catchup=catchup) as dag:
        BashOperator(task_id="t", bash_command="true", **task)
    return dag_to_spec(dag)


# ------------------------------------------------------------------------ the Python blocks

BLOCKS = python_blocks(CONCEPTS)


@pytest.fixture(scope="module")
def documented() -> dict[str, DagSpec]:
    """Every DAG the blocks of concepts.md build, by dag_id, serialized."""
    specs: dict[str, DagSpec] = {}
    for block in BLOCKS:
        for dag in run_block(block):
            assert dag.dag_id not in specs, f"{block}: dag_id {dag.dag_id!r} used twice"
            specs[dag.dag_id] = dag_to_spec(dag)
    return specs


def test_concepts_has_python_blocks() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_python_block_builds_dags_that_serialize(block: Block) -> None:
    dags = run_block(block)
    assert dags, f"{block} defines no DAG: every python block must be a complete DAG file"
    for dag in dags:
        spec = dag_to_spec(dag)
        assert spec_from_json(spec_to_json(spec)) == spec
        assert spec.tasks, f"{block}: DAG {dag.dag_id} has no tasks"


def _tasks(spec: DagSpec) -> dict[str, Any]:
    return dict(spec.tasks)


def check_nightly_export(spec: DagSpec) -> None:
    t = _tasks(spec)
    assert (t["extract"].retries, t["load"].retries) == (2, 0)
    assert t["extract"].owner == "data"
    assert not spec.catchup
    assert spec.tags == ("exports",)


def check_bash_examples(spec: DagSpec) -> None:
    t = _tasks(spec)
    assert {task.kind for task in t.values()} == {TaskKind.BASH}
    assert t["maybe"].fields["skip_on_exit_code"] == [99]
    assert t["tagged"].fields["skip_on_exit_code"] == [99, 100]
    assert t["tagged"].fields["append_env"] is True


def check_python_examples(spec: DagSpec) -> None:
    t = _tasks(spec)
    assert t["branch"].branching is BranchKind.BRANCH
    assert t["check"].branching is BranchKind.SHORT_CIRCUIT
    assert t["check"].ignore_downstream_trigger_rules
    assert t["join"].trigger_rule is TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    assert t["weekday"].kind is TaskKind.EMPTY
    assert t["hello"].kind is TaskKind.CALLABLE


def check_custom_operator(spec: DagSpec) -> None:
    greet = spec.tasks["greet"]
    assert greet.kind is TaskKind.CALLABLE
    assert greet.template_fields == ("who",)
    assert greet.operator == "GreetOperator"


def check_taskflow_etl(spec: DagSpec) -> None:
    t = _tasks(spec)
    assert set(t) == {"extract", "total", "report"}
    assert t["extract"].fields["multiple_outputs"] is True
    assert set(t["report"].upstream_task_ids) == {"extract", "total"}
    assert t["report"].retries == 3
    assert t["report"].operator == "@task"


def check_decorated_pipeline(spec: DagSpec) -> None:
    assert dict(spec.params) == {"limit": 10}
    assert spec.tasks["biggest"].upstream_task_ids == ("numbers",)


def check_wiring(spec: DagSpec) -> None:
    down = {tid: set(t.downstream_task_ids) for tid, t in spec.tasks.items()}
    assert down["a"] == {"b", "c"}
    assert (down["b"], down["c"], down["d"], down["e"]) == ({"d"}, {"e"}, {"f"}, {"f"})
    assert down["g"] == down["h"] == {"i", "j"}


def check_amsterdam_6am(spec: DagSpec) -> None:
    assert spec.timezone == "Europe/Amsterdam"
    first = next_dagrun_info(spec, None, at("2026-04-01 00:00"))
    assert first is not None
    second = next_dagrun_info(spec, first.data_interval, at("2026-04-01 00:00"))
    assert second is not None
    got = [(i.data_interval.start, i.data_interval.end) for i in (first, second)]
    assert got == [
        (at("2026-03-27 05:00"), at("2026-03-28 05:00")),
        (at("2026-03-28 05:00"), at("2026-03-29 04:00")),
    ]


def check_trigger_rule_examples(spec: DagSpec) -> None:
    rules = {tid: t.trigger_rule for tid, t in spec.tasks.items()}
    assert rules["cleanup"] is TriggerRule.ALL_DONE
    assert rules["alert"] is TriggerRule.ONE_FAILED
    assert set(spec.leaves) == {"cleanup", "alert"}


def check_retry_examples(spec: DagSpec) -> None:
    task = spec.tasks["flaky_download"]
    assert (task.retries, task.retry_delay) == (5, timedelta(seconds=30))
    assert task.retry_exponential_backoff
    assert task.max_retry_delay == timedelta(minutes=10)
    assert task.execution_timeout == timedelta(minutes=15)


def check_pool_examples(spec: DagSpec) -> None:
    t = _tasks(spec)
    assert {task.pool for task in t.values()} == {"warehouse"}
    assert t["rebuild_index"].pool_slots == 2
    assert t["dump_orders"].priority_weight_total == 10


def check_xcom_examples(spec: DagSpec) -> None:
    assert set(spec.tasks["produce"].downstream_task_ids) == {"consume", "show"}


CHECKS: dict[str, Callable[[DagSpec], None]] = {
    "nightly_export": check_nightly_export,
    "bash_examples": check_bash_examples,
    "python_examples": check_python_examples,
    "custom_operator": check_custom_operator,
    "taskflow_etl": check_taskflow_etl,
    "decorated_pipeline": check_decorated_pipeline,
    "wiring": check_wiring,
    "amsterdam_6am": check_amsterdam_6am,
    "trigger_rule_examples": check_trigger_rule_examples,
    "retry_examples": check_retry_examples,
    "pool_examples": check_pool_examples,
    "xcom_examples": check_xcom_examples,
}


@pytest.mark.parametrize("dag_id", sorted(CHECKS))
def test_what_the_prose_says_about_each_example_holds(
    documented: dict[str, DagSpec], dag_id: str
) -> None:
    assert dag_id in documented, f"docs/concepts.md no longer defines DAG {dag_id!r}"
    CHECKS[dag_id](documented[dag_id])


# ------------------------------------------------------------------------ checked tables


def _created_at(cell: str, run_after: datetime, now: datetime) -> None:
    if cell == "at once":
        assert run_after <= now
    else:
        assert run_after == at(cell)


@pytest.mark.parametrize("row", checked_table(CONCEPTS, "intervals"), ids=row_id)
def test_first_scheduled_run_table(row: list[str]) -> None:
    schedule, catchup_cell, now_cell, interval_cell, created = row
    now = at("2027-06-01 00:00") if now_cell == "any" else at(now_cell)
    catchups = [True, False] if catchup_cell == "either" else [bare(catchup_cell) == "True"]
    for catchup in catchups:
        info = next_dagrun_info(spec_of(schedule_value(schedule), catchup=catchup), None, now)
        if interval_cell == "none":
            assert info is None
            continue
        assert info is not None
        assert (info.data_interval.start, info.data_interval.end) == interval(interval_cell)
        assert info.logical_date == info.data_interval.start
        _created_at(created, info.run_after, now)


@pytest.mark.parametrize("row", checked_table(CONCEPTS, "manual-intervals"), ids=row_id)
def test_manual_run_interval_table(row: list[str]) -> None:
    schedule, logical, expected = row
    got = manual_data_interval(spec_of(schedule_value(schedule)), at(logical))
    assert (got.start, got.end) == interval(expected)


_VERDICTS = {
    "runs": TaskInstanceState.SCHEDULED,
    "waits": TaskInstanceState.NONE,
    "skipped": TaskInstanceState.SKIPPED,
    "upstream_failed": TaskInstanceState.UPSTREAM_FAILED,
}


def _judge_in_a_run(rule: TriggerRule, upstream: list[TaskInstanceState]) -> TaskInstanceState:
    """What the scheduler's examination does to a task whose upstreams are in these states."""
    with DAG("rules", schedule=None, start_date=START) as dag:
        target = BashOperator(task_id="target", bash_command="true", trigger_rule=rule)
        for i in range(len(upstream)):
            BashOperator(task_id=f"up{i}", bash_command="true") >> target
    tis = {f"up{i}": TaskInstanceView(task_id=f"up{i}", state=s) for i, s in enumerate(upstream)}
    tis["target"] = TaskInstanceView(task_id="target", state=TaskInstanceState.NONE)
    run = RunView(run_id="r", state=DagRunState.RUNNING, start_date=START, logical_date=START)
    exam = examine_run(dag_to_spec(dag), run, tis, {}, START + timedelta(minutes=1))
    moves = [d.to_state for d in exam.task_decisions if d.task_id == "target"]
    return moves[-1] if moves else TaskInstanceState.NONE


TRIGGER_ROWS = checked_table(CONCEPTS, "trigger-rules")


@pytest.mark.parametrize("row", TRIGGER_ROWS, ids=row_id)
def test_trigger_rule_table(row: list[str]) -> None:
    rule, states, outcome = bare(row[0]), row[1], row[2]
    upstream = [TaskInstanceState(s.strip()) for s in states.split(",")]
    assert _judge_in_a_run(TriggerRule(rule), upstream) is _VERDICTS[outcome]


def test_trigger_rule_examples_cover_every_rule() -> None:
    assert {bare(row[0]) for row in TRIGGER_ROWS} == {rule.value for rule in TriggerRule}


def _wait_seconds(cell: str) -> tuple[int, int]:
    found = re.match(r"(\d+)(?:\u2013(\d+))? s", cell)
    assert found is not None, f"cannot read the wait {cell!r}"
    low = int(found.group(1))
    return low, int(found.group(2) or low)


@pytest.mark.parametrize("row", checked_table(CONCEPTS, "retry-delays"), ids=row_id)
def test_retry_delay_table(row: list[str]) -> None:
    retry, backoff, max_delay = (schedule_value(cell) for cell in row[:3])
    try_cell, wait = row[3], row[4]
    spec = spec_of(
        None,
        retries=20,
        retry_delay=retry,
        retry_exponential_backoff=backoff,
        max_retry_delay=max_delay,
    )
    task = spec.tasks["t"]
    low, high = _wait_seconds(wait)
    for try_number in [1, 7] if try_cell == "any" else [int(try_cell)]:
        shortest = retry_delay(task, try_number, lambda: 0.0)
        longest = retry_delay(task, try_number, lambda: 0.999999999)
        assert (shortest, longest) == (timedelta(seconds=low), timedelta(seconds=high))
        drawn = retry_delay(task, try_number, random.Random(try_number).random)
        assert timedelta(seconds=low) <= drawn <= timedelta(seconds=high)


@pytest.mark.parametrize("row", checked_table(CONCEPTS, "weight-rules"), ids=row_id)
def test_weight_rule_table(row: list[str]) -> None:
    rule = bare(row[0]).split()[0]
    with DAG("weights", schedule=None, start_date=START) as dag:
        a, b, c = (EmptyOperator(task_id=n, weight_rule=rule) for n in "abc")
        a >> b >> c
    totals = [dag_to_spec(dag).tasks[n].priority_weight_total for n in "abc"]
    assert totals == [int(cell) for cell in row[1:]]


def _context() -> dict[str, Any]:
    run = RunInfo.parse(
        '{"data_interval_end": "2026-01-31T00:00:00+00:00"}',
        run_id="manual__2026-01-30T00:00:00+00:00",
        logical_date="2026-01-30T00:00:00+00:00",
    )
    return build_context(
        run=run, dag_id="d", task_id="t", dag=None, task=None, ti=None, params={}, try_number=1
    )


def test_context_table_names_every_context_value() -> None:
    rows = checked_table(CONCEPTS, "context")
    documented = {name for row in rows for name in _TICKED.findall(row[0])}
    assert documented == set(_context())


def test_context_names_said_to_be_missing_are_missing() -> None:
    text = paragraph(CONCEPTS, "Context names Airflow 2 has and Tradewind does not")
    missing = {n for n in _TICKED.findall(text) if re.fullmatch(r"[a-z][a-z_]+", n)}
    assert len(missing) >= 10
    assert not missing & set(_context())
    assert missing <= KNOWN_CONTEXT_KEYS


def test_filter_table_matches_the_filters_and_their_output() -> None:
    rows = checked_table(CONCEPTS, "filters")
    assert {bare(row[0]) for row in rows} == set(FILTERS)
    end = _context()["data_interval_end"]
    for row in rows:
        expected = bare(row[1].split("→")[1])
        assert FILTERS[bare(row[0])](end) == expected


def test_macros_paragraph_names_every_macro() -> None:
    text = paragraph(CONCEPTS, "Macros:")
    assert set(re.findall(r"`macros\.(\w+)", text)) == set(vars(macros_namespace()))


# ------------------------------------------------------------------- claims in the prose


def test_concurrency_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    dag = DAG("defaults", schedule=None, start_date=START)
    assert (dag.max_active_runs, dag.max_active_tasks) == (16, 16)
    assert (settings.core.parallelism, settings.worker.slots, settings.core.max_xcom_bytes) == (
        32,
        8,
        1024 * 1024,
    )
    task = BashOperator(task_id="t", bash_command="true", dag=dag)
    assert (task.retries, task.retry_delay, task.queue, task.pool) == (
        0,
        timedelta(minutes=5),
        "default",
        "default_pool",
    )
    assert dag_to_spec(dag).tasks["t"].fields["skip_on_exit_code"] == [99]


def test_no_schedule_means_daily_as_in_airflow_2() -> None:
    assert DAG("unscheduled", start_date=START).schedule.delta == timedelta(days=1)


def test_a_schedule_without_start_date_is_refused() -> None:
    with pytest.raises(DagDefinitionError, match="start_date"):
        DAG("no_start", schedule="@daily")


@pytest.mark.parametrize("rule", ["all_skipped", "one_done", "all_done_setup_success"])
def test_unsupported_trigger_rules_are_import_errors(rule: str) -> None:
    with pytest.raises(InvalidTriggerRuleError, match=rule):
        BashOperator(task_id="t", bash_command="true", trigger_rule=rule)


def test_unsupported_features_are_refused_by_name() -> None:
    with pytest.raises(DagDefinitionError, match="TaskGroup"):
        BashOperator(task_id="t", bash_command="true", task_group=object())
    with pytest.raises(DagDefinitionError, match="timetable"):
        DAG("custom", timetable=object())
    assert not hasattr(BashOperator, "expand")


def test_deprecated_names_are_accepted_silently() -> None:
    # filterwarnings=error turns any warning into a failure here.
    with DAG("old_names", schedule_interval="@daily", start_date=START, concurrency=3) as dag:
        DummyOperator(task_id="a", trigger_rule="dummy")
        EmptyOperator(task_id="b", trigger_rule="none_failed_or_skipped", task_concurrency=2)
    spec = dag_to_spec(dag)
    assert spec.max_active_tasks == 3
    assert spec.tasks["a"].trigger_rule is TriggerRule.ALWAYS
    assert spec.tasks["b"].trigger_rule is TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    assert spec.tasks["b"].max_active_tis_per_dag == 2


def test_operator_arguments_must_be_json() -> None:
    with DAG("not_json", schedule=None, start_date=START) as dag:
        BashOperator(task_id="t", bash_command="true", env={"WHEN": START})
    with pytest.raises(TradewindError, match="not JSON"):
        dag_to_spec(dag)


# ------------------------------------------------------------------------- docs/metrics.md


def test_metrics_reference_is_current() -> None:
    current = (DOCS / "metrics.md").read_text(encoding="utf-8")
    assert current == metrics_markdown(), (
        "docs/metrics.md is stale: run `python -m tradewind_cluster.observability.reference`"
    )


def test_metrics_doc_lists_every_metric_and_nothing_else() -> None:
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([^`]+)` \|", text, re.M)
    assert len(listed) == len(set(listed))
    assert set(listed) == set(METRICS)


def test_emitters_are_found_by_process() -> None:
    found = find_emitters()
    assert found["scheduler_heartbeat"] == ("scheduler",)
    assert found["worker_heartbeat"] == ("worker",)
    assert found["rpc.errors"] == ("scheduler", "worker")


@pytest.mark.parametrize(
    ("path", "process"),
    [
        ("worker/executor.py", "worker"),
        ("scheduler/queuer.py", "scheduler"),
        ("parsing/processor.py", "scheduler"),
        ("rpc/scheduler_service.py", "scheduler"),
        ("cli/main.py", "cli"),
    ],
)
def test_process_of(path: str, process: str) -> None:
    assert process_of(Path(path)) == process


def test_generated_rows_show_every_name_and_series() -> None:
    spec = METRICS["dagrun.schedule_delay"]
    text = metrics_markdown([spec], {spec.name: ()})
    row = text.splitlines()[-1]
    assert row.startswith("| `dagrun.schedule_delay` | timer | `dag_id` |")
    assert "`dagrun.schedule_delay.{dag_id}`<br>`dagrun.schedule_delay`" in row
    assert "`tradewind_dagrun_schedule_delay_bucket`" in row
    assert "not emitted yet" in row
    assert "0 of 1 metrics are emitted today" in text
    assert "All 1 metrics are emitted" in metrics_markdown([spec], {spec.name: ("scheduler",)})


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.md"
    assert main(["--check", "--out", str(out)]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["--out", str(out)]) == 0
    assert main(["--check", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == metrics_markdown()
