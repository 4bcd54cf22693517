"""Tracing set-up from the [tracing] section and W3C context propagation: a child started from
an injected-then-extracted carrier (gRPC metadata or TRACEPARENT) is linked to its parent."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tradewind.errors import ConfigError
from tradewind_cluster.config import TracingExporter, TracingSettings
from tradewind_cluster.observability import (
    TRACEPARENT_ENV,
    configure_tracing,
    extract_context,
    extract_env,
    inject_context,
    inject_env,
    shutdown_tracing,
    tracer,
)

# Taken at import time on purpose: it must still follow each test's configure_tracing.
MODULE_TRACER = tracer(__name__)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing(TracingSettings(), exporter=exporter)
    yield exporter
    shutdown_tracing()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def assert_child_of(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None
    assert parent.context is not None
    assert child.context is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent.is_remote


def test_parent_and_child_across_inject_and_extract(spans: InMemorySpanExporter) -> None:
    with MODULE_TRACER.start_as_current_span("dispatch"):
        carrier = inject_context()
    assert set(carrier) == {"traceparent"}
    assert trace.get_current_span() is trace.INVALID_SPAN  # the child below is not nested
    with tracer("worker").start_as_current_span("start", context=extract_context(carrier)):
        pass
    found = by_name(spans)
    assert_child_of(found["start"], found["dispatch"])


def test_grpc_metadata_pairs_are_a_carrier(spans: InMemorySpanExporter) -> None:
    parent = MODULE_TRACER.start_span("rpc-client")
    metadata = [
        ("authorization", "Bearer x"),
        *inject_context(trace.set_span_in_context(parent)).items(),
        ("trace-bin", b"\x00\x01"),
    ]
    parent.end()
    MODULE_TRACER.start_span("rpc-server", context=extract_context(metadata)).end()
    found = by_name(spans)
    assert_child_of(found["rpc-server"], found["rpc-client"])


def test_header_names_are_case_insensitive(spans: InMemorySpanExporter) -> None:
    with MODULE_TRACER.start_as_current_span("parent"):
        carrier = {key.title(): value for key, value in inject_context().items()}
    MODULE_TRACER.start_span("child", context=extract_context(carrier)).end()
    found = by_name(spans)
    assert_child_of(found["child"], found["parent"])


def test_environment_round_trip_for_a_task_subprocess(spans: InMemorySpanExporter) -> None:
    with MODULE_TRACER.start_as_current_span("run-task"):
        env = inject_env()
    assert set(env) == {TRACEPARENT_ENV}
    assert env[TRACEPARENT_ENV].startswith("00-")
    subprocess_env = {"PATH": "/bin", **env}
    MODULE_TRACER.start_span("task", context=extract_env(subprocess_env)).end()
    found = by_name(spans)
    assert_child_of(found["task"], found["run-task"])


def test_no_context_gives_a_root_span(spans: InMemorySpanExporter) -> None:
    assert inject_context() == {}
    assert inject_env() == {}
    MODULE_TRACER.start_span("root", context=extract_env({"PATH": "/bin"})).end()
    MODULE_TRACER.start_span("bad", context=extract_context({"traceparent": "garbage"})).end()
    found = by_name(spans)
    assert found["root"].parent is None
    assert found["bad"].parent is None


def test_resource_names_the_service() -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing(
        TracingSettings(service_name="tw-scheduler"),
        exporter=exporter,
        attributes={"service.instance.id": "replica-1"},
        set_global=False,
    )
    try:
        MODULE_TRACER.start_span("x").end()
        (span,) = exporter.get_finished_spans()
        assert span.resource.attributes["service.name"] == "tw-scheduler"
        assert span.resource.attributes["service.instance.id"] == "replica-1"
        assert provider.resource.attributes["service.name"] == "tw-scheduler"
        # set_global=False leaves the OpenTelemetry global alone.
        assert trace.get_tracer_provider() is not provider
    finally:
        shutdown_tracing()


def test_exporter_none_records_nothing_but_context_still_propagates() -> None:
    """With nowhere to send spans they are not recorded (each cost ~20 us of CPU), yet every
    span still gets its ids and its parent's sampling flag, so a trace reads the same across
    the store, gRPC and task processes as when spans are exported."""
    from tradewind_cluster.observability.tracing import (
        context_from,
        keyed_context,
        record_span,
        start_root_span,
        traceparent,
    )

    configure_tracing(TracingSettings(exporter=TracingExporter.NONE), set_global=False)
    try:
        root = start_root_span("dagrun")
        assert not root.is_recording()
        run_tp = traceparent(root)
        assert run_tp is not None
        assert run_tp.endswith("-01")  # sampled, as the SDK decides
        with MODULE_TRACER.start_as_current_span("s", context=context_from(run_tp)) as span:
            assert not span.is_recording()
            current = inject_context()["traceparent"]
            assert current == traceparent(span)
            assert current.split("-")[1] == run_tp.split("-")[1]  # the run's trace
            assert current.split("-")[2] != run_tp.split("-")[2]  # a span of its own
        # a keyed span's id is the derived one, so another process can name it as a parent
        keyed = record_span("task.schedule", context_from(run_tp), key=(7, "k"))
        named = trace.get_current_span(keyed_context(run_tp, (7, "k"))).get_span_context()
        assert keyed == f"00-{named.trace_id:032x}-{named.span_id:016x}-01"
        # an unsampled parent stays unsampled (ParentBased, the SDK's default sampler)
        unsampled = run_tp[:-2] + "00"
        child = MODULE_TRACER.start_span("c", context=context_from(unsampled))
        assert traceparent(child).endswith("-00")  # type: ignore[union-attr]
    finally:
        shutdown_tracing()


def test_console_exporter_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_tracing(TracingSettings(exporter=TracingExporter.CONSOLE), set_global=False)
    try:
        MODULE_TRACER.start_span("console-span").end()
    finally:
        shutdown_tracing()
    captured = capsys.readouterr()
    assert '"name": "console-span"' in captured.err
    assert captured.out == ""


def test_otlp_without_its_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp"):
        configure_tracing(TracingSettings(exporter=TracingExporter.OTLP), set_global=False)


def test_after_shutdown_tracer_falls_back_to_the_global_provider() -> None:
    shutdown_tracing()
    global_span = trace.get_tracer("probe").start_span("probe")
    global_span.end()
    with MODULE_TRACER.start_as_current_span("fallback") as span:
        assert type(span) is type(global_span)


def test_a_tracer_follows_each_new_provider_although_tracers_are_reused() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    configure_tracing(TracingSettings(), exporter=first)
    try:
        for _ in range(2):  # the second span reuses the cached tracer of the same provider
            MODULE_TRACER.start_span("one").end()
        configure_tracing(TracingSettings(), exporter=second)
        MODULE_TRACER.start_span("two").end()
    finally:
        shutdown_tracing()
    assert [s.name for s in first.get_finished_spans()] == ["one", "one"]
    assert [s.name for s in second.get_finished_spans()] == ["two"]
