"""The metrics facade: the table of known metrics, strict and lenient misuse, Airflow's StatsD
names over a real UDP socket, and the Prometheus exposition scraped over real HTTP."""

from __future__ import annotations

import logging
import socket
import string
import urllib.request
from collections.abc import Iterator, Mapping

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tradewind.errors import BadInputError
from tradewind_cluster import observability
from tradewind_cluster.config import MetricsSettings
from tradewind_cluster.observability import (
    METRICS,
    PROMETHEUS_BUCKETS,
    MetricKind,
    Metrics,
    MetricSpec,
    ObservabilityServer,
    PrometheusSink,
    RecordingSink,
    SecretMasker,
    StatsdSink,
    build_metrics,
    metric_reference,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorder() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def metrics(recorder: RecordingSink) -> Metrics:
    return Metrics([recorder], strict=True)


# -- the table -----------------------------------------------------------------------------------
def test_public_api_is_exported() -> None:
    assert sorted(observability.__all__) == sorted(set(observability.__all__))
    for name in observability.__all__:
        assert hasattr(observability, name), name


def test_reference_lists_every_metric_sorted() -> None:
    ref = metric_reference()
    assert [spec.name for spec in ref] == sorted(METRICS)
    assert all(spec.description.endswith(".") for spec in ref)


def test_statsd_templates_only_use_declared_labels() -> None:
    for spec in METRICS.values():
        for template in spec.statsd_templates:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            assert fields <= set(spec.labels), spec.name


def test_prometheus_names_are_sanitised_and_unique() -> None:
    names = [spec.prometheus_name for spec in METRICS.values()]
    assert len(names) == len(set(names))
    assert METRICS["dagrun.dependency-check"].prometheus_name == "tradewind_dagrun_dependency_check"
    assert METRICS["scheduler.scheduler_loop_duration"].prometheus_name == (
        "tradewind_scheduler_scheduler_loop_duration"
    )
    assert all(name.replace("_", "").isalnum() for name in names)


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        # Airflow sends the legacy per-entity name and then the bare (tagged) one.
        ("dagrun.schedule_delay", {"dag_id": "d"},
         ["dagrun.schedule_delay.d", "dagrun.schedule_delay"]),
        ("pool.open_slots", {"pool": "p"}, ["pool.open_slots.p", "pool.open_slots"]),
        ("task.duration", {"dag_id": "d", "task_id": "t"}, ["dag.d.t.duration", "task.duration"]),
        ("operator_successes", {"dag_id": "d", "task_id": "t", "operator": "BashOperator"},
         ["operator_successes_BashOperator", "operator_successes"]),
        ("ti.finish", {"dag_id": "d", "task_id": "t", "state": "success"},
         ["ti.finish.d.t.success", "ti.finish"]),
        ("dagrun.first_task_scheduling_delay", {"dag_id": "d"},
         ["dagrun.d.first_task_scheduling_delay", "dagrun.first_task_scheduling_delay"]),
        ("ti_successes", {"dag_id": "d", "task_id": "t"}, ["ti_successes"]),
        ("scheduler_heartbeat", {}, ["scheduler_heartbeat"]),
    ],
)  # fmt: skip
def test_statsd_names_follow_airflow(
    name: str, labels: Mapping[str, str], expected: list[str]
) -> None:
    spec = METRICS[name]
    assert [t.format_map(labels) for t in spec.statsd_templates] == expected


def test_design_minimum_metrics_are_known() -> None:
    for name in (
        "scheduler_heartbeat", "scheduler.scheduler_loop_duration", "scheduler.dagruns.created",
        "dagrun.schedule_delay", "ti_successes", "ti_failures", "zombies_killed",
        "scheduler.orphaned_tasks.adopted", "executor.open_slots", "executor.queued_tasks",
        "executor.running_tasks", "pool.open_slots", "pool.running_slots", "pool.starving_tasks",
        "dag_processing.total_parse_time", "dag_processing.import_errors", "dagbag_size",
        "scheduler.dispatch.latency", "rpc.errors",
    ):  # fmt: skip
        assert name in METRICS


# -- the facade ----------------------------------------------------------------------------------
def test_facade_validates_and_records(metrics: Metrics, recorder: RecordingSink) -> None:
    metrics.incr("ti_successes", dag_id="d", task_id="t")
    metrics.incr("ti_successes", 2, dag_id="d", task_id="t")
    metrics.incr("ti_successes", dag_id="other", task_id="t")
    metrics.gauge("pool.open_slots", 3, pool="default_pool")
    metrics.gauge("pool.open_slots", 1, pool="default_pool")
    metrics.timing("dagrun.schedule_delay", 0.25, dag_id="d")
    metrics.incr("dag_processing.processes")
    metrics.decr("dag_processing.processes")
    assert recorder.total("ti_successes", dag_id="d") == 3
    assert recorder.total("ti_successes") == 4
    assert recorder.last("pool.open_slots", pool="default_pool") == 1
    assert recorder.last("pool.open_slots", pool="missing") is None
    assert recorder.timings("dagrun.schedule_delay", dag_id="d") == [0.25]
    assert recorder.total("dag_processing.processes") == 0
    assert recorder.names() == {
        "ti_successes", "pool.open_slots", "dagrun.schedule_delay", "dag_processing.processes",
    }  # fmt: skip
    assert recorder.events[0].kind is MetricKind.COUNTER
    assert recorder.events[0].labels == {"dag_id": "d", "task_id": "t"}
    recorder.clear()
    assert recorder.events == []


def test_label_values_become_text(metrics: Metrics, recorder: RecordingSink) -> None:
    metrics.incr("rpc.errors", method="Dispatch", code=14)
    assert recorder.find("rpc.errors", code=14)[0].labels == {"method": "Dispatch", "code": "14"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.incr("ti_sucesses", dag_id="d", task_id="t"), "not a known metric"),
        (lambda m: m.incr("ti_successes", dag_id="d"), "takes labels (dag_id, task_id)"),
        (lambda m: m.incr("scheduler_heartbeat", dag_id="d"), "takes labels (none)"),
        (lambda m: m.gauge("scheduler_heartbeat", 1), "is a counter metric"),
        (lambda m: m.decr("scheduler_heartbeat"), "cannot take decr()"),
        (lambda m: m.incr("scheduler_heartbeat", -1), "negative"),
        (lambda m: m.timing("executor.open_slots", 1), "is a gauge metric"),
    ],
)
def test_strict_mode_raises_on_misuse(call: object, message: str, recorder: RecordingSink) -> None:
    metrics = Metrics([recorder], strict=True)
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(metrics)  # type: ignore[operator]
    assert recorder.events == []


def test_lenient_mode_logs_once_and_drops(
    recorder: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics([recorder])
    with caplog.at_level(logging.ERROR, logger="tradewind_cluster.observability.metrics"):
        metrics.incr("no.such.metric")
        metrics.incr("no.such.metric")
        metrics.incr("scheduler_heartbeat")
    assert [r.getMessage() for r in caplog.records] == [
        "metric 'no.such.metric' is not a known metric "
        "(see tradewind_cluster.observability.METRICS)"
    ]
    assert recorder.names() == {"scheduler_heartbeat"}


class BrokenSink:
    def emit(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        raise RuntimeError("sink down")


def test_a_failing_sink_never_reaches_production_code(recorder: RecordingSink) -> None:
    Metrics([BrokenSink(), recorder]).incr("scheduler_heartbeat")
    assert recorder.total("scheduler_heartbeat") == 1
    with pytest.raises(RuntimeError, match="sink down"):
        Metrics([BrokenSink()], strict=True).incr("scheduler_heartbeat")


def test_timer_uses_the_clock_and_emits_on_error(recorder: RecordingSink) -> None:
    clock = FakeClock()
    metrics = Metrics([recorder], strict=True, clock=clock)
    with metrics.timer("scheduler.step.duration", step="parse") as watch:
        clock.now += 1.5
    assert watch.seconds == 1.5

    def failing_step() -> None:
        with metrics.timer("scheduler.step.duration", step="queue"):
            clock.now += 0.25
            raise KeyError("boom")

    with pytest.raises(KeyError):
        failing_step()
    assert recorder.timings("scheduler.step.duration", step="parse") == [1.5]
    assert recorder.timings("scheduler.step.duration", step="queue") == [0.25]


def test_secrets_never_reach_labels(recorder: RecordingSink) -> None:
    metrics = Metrics([recorder], strict=True, masker=SecretMasker(["hunter2"]))
    metrics.incr("scheduler.dispatch.failures", queue="q", reason="auth hunter2 refused")
    assert recorder.events[0].labels["reason"] == "auth *** refused"


# -- StatsD over a real UDP socket ---------------------------------------------------------------
@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def received(sock: socket.socket, count: int) -> list[str]:
    lines: list[str] = []
    while len(lines) < count:
        lines.extend(sock.recv(65536).decode().splitlines())
    return lines


def test_statsd_receives_airflow_names(udp: socket.socket) -> None:
    sink = StatsdSink("127.0.0.1", udp.getsockname()[1], "tradewind")
    metrics = Metrics([sink], strict=True)
    try:
        metrics.incr("scheduler_heartbeat")
        metrics.incr("ti_successes", dag_id="etl", task_id="load")
        metrics.timing("dagrun.schedule_delay", 1.5, dag_id="etl")
        metrics.gauge("pool.open_slots", 7, pool="default_pool")
        metrics.timing("task.duration", 0.002, dag_id="etl", task_id="load")
        metrics.incr("operator_successes", dag_id="etl", task_id="load", operator="BashOperator")
        metrics.decr("dag_processing.processes", 2)
    finally:
        metrics.close()
    assert received(udp, 11) == [
        "tradewind.scheduler_heartbeat:1|c",
        "tradewind.ti_successes:1|c",
        "tradewind.dagrun.schedule_delay.etl:1500.000000|ms",
        "tradewind.dagrun.schedule_delay:1500.000000|ms",
        "tradewind.pool.open_slots.default_pool:7|g",
        "tradewind.pool.open_slots:7|g",
        "tradewind.dag.etl.load.duration:2.000000|ms",
        "tradewind.task.duration:2.000000|ms",
        "tradewind.operator_successes_BashOperator:1|c",
        "tradewind.operator_successes:1|c",
        "tradewind.dag_processing.processes:-2|c",
    ]


def test_statsd_drops_invalid_names_like_airflow(
    udp: socket.socket, recorder: RecordingSink
) -> None:
    sink = StatsdSink("127.0.0.1", udp.getsockname()[1], "")
    metrics = Metrics([sink, recorder], strict=True)
    try:
        metrics.gauge("pool.open_slots", 2, pool="my pool/ü")
        metrics.incr("scheduler_heartbeat")
    finally:
        metrics.close()
    # The per-pool name has characters Airflow's validator rejects; the bare name still goes.
    assert received(udp, 2) == ["pool.open_slots:2|g", "scheduler_heartbeat:1|c"]
    assert recorder.last("pool.open_slots", pool="my pool/ü") == 2


# -- Prometheus ----------------------------------------------------------------------------------
def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=5
    ) as response:
        return response.headers["Content-Type"], response.read().decode()


OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value_of(found: list[Sample], name: str, **labels: str) -> float:
    matches = [s.value for s in found if s.name == name and s.labels == labels]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_prometheus_exposition_over_http() -> None:
    sink = PrometheusSink()
    metrics = Metrics([sink], strict=True)
    metrics.incr("ti_successes", dag_id="etl", task_id="load")
    metrics.incr("ti_successes", dag_id="etl", task_id="load")
    metrics.gauge("pool.open_slots", 5, pool="default_pool")
    metrics.timing("dagrun.schedule_delay", 0.003, dag_id="etl")
    metrics.timing("dagrun.schedule_delay", 45, dag_id="etl")
    metrics.incr("dag_processing.processes", 3)
    metrics.decr("dag_processing.processes")
    with ObservabilityServer(host="127.0.0.1", port=0, registry=sink.registry) as server:
        content_type, text = scrape(f"{server.url}/metrics")
        latest_type, latest = scrape(f"{server.url}/metrics", "text/plain;version=1.0.0")
        om_type, openmetrics = scrape(f"{server.url}/metrics", OPENMETRICS_ACCEPT)
    # The format is negotiated as prometheus_client's own exporters do.
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    assert latest_type.startswith(CONTENT_TYPE_LATEST)
    assert 'tradewind_ti_successes_total{dag_id="etl",task_id="load"} 2.0' in latest
    assert om_type.startswith("application/openmetrics-text")
    assert openmetrics.endswith("# EOF\n")
    found = samples(text)
    assert value_of(found, "tradewind_ti_successes_total", dag_id="etl", task_id="load") == 2
    assert value_of(found, "tradewind_pool_open_slots", pool="default_pool") == 5
    assert value_of(found, "tradewind_dag_processing_processes") == 2
    bucket = "tradewind_dagrun_schedule_delay_bucket"
    assert value_of(found, bucket, dag_id="etl", le="0.001") == 0
    assert value_of(found, bucket, dag_id="etl", le="0.005") == 1
    assert value_of(found, bucket, dag_id="etl", le="30.0") == 1
    assert value_of(found, bucket, dag_id="etl", le="60.0") == 2
    assert value_of(found, bucket, dag_id="etl", le="+Inf") == 2
    assert value_of(found, "tradewind_dagrun_schedule_delay_count", dag_id="etl") == 2
    assert value_of(found, "tradewind_dagrun_schedule_delay_sum", dag_id="etl") == 45.003
    les = sorted({float(s.labels["le"]) for s in found if s.name == bucket})
    assert les == [*PROMETHEUS_BUCKETS, float("inf")]
    # Series appear on first use only, so a worker does not expose a zero scheduler heartbeat.
    assert "tradewind_scheduler_heartbeat_total" not in text
    assert "process_cpu_seconds_total" in text


def test_each_sink_has_its_own_registry() -> None:
    first, second = PrometheusSink(), PrometheusSink()
    for sink in (first, second):
        Metrics([sink], strict=True).incr("scheduler_heartbeat")
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("tradewind_scheduler_heartbeat_total") == 1
    assert second.registry.get_sample_value("tradewind_scheduler_heartbeat_total") == 1


def test_prometheus_sink_accepts_a_given_registry() -> None:
    registry = CollectorRegistry()
    Metrics([PrometheusSink(registry)], strict=True).gauge("dagbag_size", 12)
    assert registry.get_sample_value("tradewind_dagbag_size") == 12


# -- from config -----------------------------------------------------------------------------------
def test_build_metrics_follows_the_settings(udp: socket.socket) -> None:
    default = build_metrics(MetricsSettings())
    assert [type(s) for s in default.sinks] == [PrometheusSink]
    assert default.prometheus_registry is not None
    assert default.strict is False
    port = udp.getsockname()[1]
    both = build_metrics(
        MetricsSettings(
            statsd_on=True, statsd_host="127.0.0.1", statsd_port=port, statsd_prefix="x"
        )
    )
    try:
        assert [type(s) for s in both.sinks] == [PrometheusSink, StatsdSink]
        both.incr("scheduler_heartbeat")
        assert received(udp, 1) == ["x.scheduler_heartbeat:1|c"]
    finally:
        both.close()
    nothing = build_metrics(MetricsSettings(prometheus_on=False))
    assert nothing.sinks == ()
    assert nothing.prometheus_registry is None
