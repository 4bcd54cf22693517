"""Every series the alert rules, their promtool tests and the Grafana dashboard use is one the code
exports (derived from the METRICS table: name, kind -> suffixes, labels), and the rules and the
dashboard are complete: each alert has `for`, a severity, a summary and a description, and a
promtool case where it fires and one where it stays quiet."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.test_ops import OPS, yaml_docs
from tradewind_cluster.observability.metrics import METRICS, MetricKind, PrometheusSink

RULES = OPS / "prometheus" / "tradewind.rules.yml"
RULE_TESTS = sorted((OPS / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = OPS / "grafana" / "dashboard.json"

TARGET_LABELS = frozenset({"job", "instance", "queues", "namespace"})
"""Labels Prometheus and the scrape configs attach to every series."""
EXTERNAL = {
    "up": frozenset(),
    "ALERTS": frozenset({"alertname", "alertstate", "severity", "pool", "queue"}),
}
"""Series that are not Tradewind's but may be queried."""
SEVERITIES = {"critical", "warning", "info"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_RATE = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "offset", "inf", "nan"}
    | {"group_left", "group_right"}
)


@cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every Prometheus sample name the code exports, with its labels."""
    series: dict[str, frozenset[str]] = {}
    for spec in METRICS.values():
        base, labels = spec.prometheus_name, frozenset(spec.labels)
        if spec.kind is MetricKind.COUNTER:
            series[f"{base}_total"] = labels  # no _created samples (observability/series.py)
        elif spec.kind is MetricKind.TIMER:
            series |= {f"{base}_{s}": labels for s in ("sum", "count")}
            series[f"{base}_bucket"] = labels | {"le"}
        else:
            series[base] = labels
    return series


@cache
def counter_like() -> frozenset[str]:
    """Series that only go up, the only ones rate() and increase() make sense of."""
    return frozenset(
        name for name in exported_series() if name.endswith(("_total", "_bucket", "_sum", "_count"))
    )


@dataclass(frozen=True, slots=True)
class Query:
    """What one PromQL expression uses."""

    names: frozenset[str]
    selectors: tuple[tuple[str, frozenset[str]], ...]
    grouping: frozenset[str]
    rated: frozenset[str]


def parse_promql(expr: str) -> Query:
    """Metric names, label matchers, grouping labels and rate() arguments of an expression."""
    text = re.sub(r"\$\{?__\w+\}?", "5m", expr)  # Grafana's $__rate_interval etc.
    text = _STRING.sub('""', text)
    rated = frozenset(_RATE.findall(re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)))
    selectors = tuple(
        (m.group(1) or "", frozenset(_MATCHER.findall(m.group(2))))
        for m in _SELECTOR.finditer(text)
    )
    text = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    text = re.sub(r"\[[^\]]*\]|\boffset\s+\w+", "", text)
    grouping = frozenset(
        label.strip() for g in _GROUPING.findall(text) for label in g.split(",") if label.strip()
    )
    text = _GROUPING.sub("", text)
    names = frozenset(n for n in _IDENT.findall(text) if n.lower() not in _KEYWORDS)
    return Query(names=names, selectors=selectors, grouping=grouping, rated=rated)


def labels_of(name: str) -> frozenset[str]:
    """The labels a series may carry (target labels included)."""
    return (exported_series().get(name) or EXTERNAL.get(name, frozenset())) | TARGET_LABELS


def query_problems(expr: str, legend: str = "") -> list[str]:
    """Everything in an expression that the code does not export."""
    q = parse_promql(expr)
    problems = [
        f"{n}: not exported (see METRICS)"
        for n in q.names
        if n not in exported_series() and n not in EXTERNAL
    ]
    with_job = {name for name, labels in q.selectors if "job" in labels}
    problems += [
        f"{n}: select a job, or the StatsD exporter's copies are counted too"
        for n in sorted(q.names - with_job)
        if n.startswith("tradewind_")
    ]
    for name, labels in q.selectors:
        problems += [f"{name}: no label {lb}" for lb in sorted(labels - labels_of(name)) if name]
    known = frozenset().union(*(labels_of(n) for n in q.names)) if q.names else TARGET_LABELS
    used = q.grouping | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    problems += [f"label {lb}: no series in the query has it" for lb in sorted(used - known)]
    gauges = (q.rated & exported_series().keys()) - counter_like()
    problems += [f"{n}: rate()/increase() of a gauge" for n in sorted(gauges)]
    return problems


# ---------------------------------------------------------------- where the queries are
def rules() -> list[dict[str, Any]]:
    """Every alert rule."""
    [doc] = yaml_docs(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_tests() -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, test) of every promtool rule test."""
    for path in RULE_TESTS:
        for doc in yaml_docs(path):
            for test in doc["tests"]:
                yield path, test


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel that is not a row."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every dashboard query, variables and annotations included."""
    out = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in dashboard_panels()
        for t in p["targets"]
    ]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
            assert m, f"variable {var['name']}: expected label_values(metric, label)"
            out.append((f"variable {var['name']}", f"{m.group(1)}{{job=~'.+'}}", f"{{{{{m[2]}}}}}"))
    out += [(f"annotation {a['name']}", a["expr"], "") for a in dashboard()["annotations"]["list"]]
    return out


def all_queries() -> list[tuple[str, str, str]]:
    """Rules, promtool input series and dashboard queries."""
    out = [(f"alert {r['alert']}", r["expr"], "") for r in rules()]
    for path, test in rule_tests():
        out += [(f"{path.name} {test['name']!r}", s["series"], "") for s in test["input_series"]]
    return out + dashboard_queries()


# ---------------------------------------------------------------- the checks
@pytest.mark.parametrize(("where", "expr", "legend"), all_queries(), ids=lambda v: str(v)[:60])
def test_query_uses_only_exported_series_and_labels(where: str, expr: str, legend: str) -> None:
    problems = query_problems(expr, legend)
    assert not problems, f"{where}: {expr}\n" + "\n".join(problems)


def test_derived_names_follow_the_prometheus_client() -> None:
    series = exported_series()
    assert "tradewind_scheduler_heartbeat_total" in series
    assert series["tradewind_scheduler_scheduler_loop_duration_bucket"] == {"le"}
    assert series["tradewind_dagrun_schedule_delay_bucket"] == {"dag_id", "le"}
    assert series["tradewind_pool_starving_tasks"] == {"pool"}
    assert "tradewind_pool_starving_tasks_total" not in series
    assert "tradewind_dag_processing_processes" in series  # an up-down counter is a Gauge


def test_derived_names_are_exactly_what_the_sink_exports() -> None:
    """The guard's list is checked against a real scrape: every metric emitted once."""
    sink = PrometheusSink(CollectorRegistry())
    for spec in METRICS.values():
        sink.emit(spec, 1.0, {label: "x" for label in spec.labels})
    exported = {
        sample.name: frozenset(sample.labels)
        for family in sink.registry.collect()
        for sample in family.samples
    }
    assert exported == exported_series()


def test_query_check_catches_what_it_must() -> None:
    sel = '{job="tradewind-schedulers"}'
    assert not query_problems(f"sum by (pool) (tradewind_pool_open_slots{sel})", "{{pool}}")
    assert query_problems(f"tradewind_pool_open_slot{sel}")  # misspelt
    assert query_problems(f"tradewind_scheduler_heartbeat{sel}")  # a counter without _total
    assert query_problems("tradewind_pool_open_slots")  # no job selected
    assert query_problems('tradewind_pool_open_slots{job="x", queue="q"}')  # wrong label
    assert query_problems(f"sum by (dag_id) (tradewind_pool_open_slots{sel})")
    assert query_problems(f"rate(tradewind_pool_open_slots{sel}[5m])")  # rate of a gauge
    assert query_problems(f"max(tradewind_pool_open_slots{sel})", "{{queue}}")
    q = parse_promql(
        'histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="b{c}"}[$__rate_interval]))) '
        "> 1e3 and on(instance) up offset 5m"
    )
    assert q.names == {"x_bucket", "up"}
    assert q.grouping == {"le", "instance"}
    assert q.rated == {"x_bucket"}


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_alert_rule_is_complete(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Tradewind")
    assert re.fullmatch(r"\d+[smh]", rule["for"]), "every alert waits with `for:`"
    assert rule["labels"]["severity"] in SEVERITIES
    assert {"summary", "description"} <= set(rule["annotations"])


def _cases(alert: str) -> tuple[int, int]:
    firing = quiet = 0
    for _, test in rule_tests():
        for case in test.get("alert_rule_test", []):
            if case["alertname"] == alert:
                firing += bool(case.get("exp_alerts"))
                quiet += not case.get("exp_alerts")
    return firing, quiet


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_alert_has_a_firing_and_a_quiet_promtool_case(rule: dict[str, Any]) -> None:
    firing, quiet = _cases(rule["alert"])
    assert firing, f"{rule['alert']}: no promtool case where it fires"
    assert quiet, f"{rule['alert']}: no promtool case where it stays quiet"


def test_rules_cover_what_design_section_6_asks_for() -> None:
    used = {n for r in rules() for n in parse_promql(r["expr"]).names}
    jobs = {m for r in rules() for m in re.findall(r'job="([\w-]+)"', r["expr"])}
    assert {
        "tradewind_scheduler_heartbeat_total",
        "tradewind_scheduler_scheduler_loop_duration_bucket",
        "tradewind_zombies_killed_total",
        "tradewind_dagrun_schedule_delay_bucket",
        "tradewind_pool_starving_tasks",
        "tradewind_dag_processing_import_errors",
        "tradewind_worker_heartbeat_total",
        "up",
    } <= used
    assert jobs == {"tradewind-schedulers", "tradewind-workers"}


def test_dashboard_covers_loop_latency_slots_pools_members_and_workers() -> None:
    used = {n for _, expr, _ in dashboard_queries() for n in parse_promql(expr).names}
    assert {
        "tradewind_scheduler_scheduler_loop_duration_bucket",
        "tradewind_dagrun_schedule_delay_bucket",
        "tradewind_task_queued_duration_bucket",
        "tradewind_task_scheduled_duration_bucket",
        "tradewind_executor_open_slots",
        "tradewind_pool_open_slots",
        "tradewind_pool_starving_tasks",
        "tradewind_scheduler_heartbeat_total",
        "tradewind_worker_open_slots",
        "up",
    } <= used


def test_dashboard_panels_are_well_formed() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    for panel in dashboard_panels():
        assert panel["title"], panel["id"]
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= set(variables), f"{panel['title']}: unknown variables {used}"
