"""OpenTelemetry set-up from the [tracing] section and W3C trace-context propagation, so a trace
crosses gRPC metadata, a task subprocess's environment (TRACEPARENT) and the store (a run's
traceparent), plus the never-failing helpers the scheduler steps record their spans with."""

from __future__ import annotations

import hashlib
import importlib
import logging
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util import types
from opentelemetry.util._decorator import _AgnosticContextManager

from tradewind.errors import ConfigError
from tradewind_cluster.config import TracingExporter, TracingSettings

__all__ = [
    "TRACEPARENT_ENV",
    "TRACESTATE_ENV",
    "configure_tracing",
    "context_from",
    "extract_context",
    "extract_env",
    "inject_context",
    "inject_env",
    "keyed_context",
    "record_span",
    "shutdown_tracing",
    "spans_recorded",
    "start_root_span",
    "traceparent",
    "tracer",
]

log = logging.getLogger(__name__)
_STEPS = "tradewind_cluster.scheduler"  # the instrumentation scope of the step spans

TRACEPARENT_ENV = "TRACEPARENT"
TRACESTATE_ENV = "TRACESTATE"

# The W3C propagator itself, not the global one: OTEL_PROPAGATORS must not change the wire format
# between our own processes.
_PROPAGATOR = TraceContextTextMapPropagator()
_OTLP_MODULES = (
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


_KEYED_SPAN_ID: ContextVar[int | None] = ContextVar("tradewind_keyed_span_id", default=None)


class _KeyedIds(RandomIdGenerator):
    """Random ids, except while record_span asks for the id derived from a span's key, so that
    another process can name that span as a parent without the store keeping its id."""

    def generate_span_id(self) -> int:
        keyed = _KEYED_SPAN_ID.get()
        return keyed if keyed is not None else super().generate_span_id()


class _PropagateOnly(Tracer):
    """The tracer of a provider with no span processor, whose spans would go nowhere: it does
    not record them (no attributes, events or timing kept; the SDK span cost about 20 us of
    CPU each, several per task instance), but gives each the ids and the sampling decision the
    SDK would, so trace context propagates through the store, gRPC and task processes as it
    does when spans are exported."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        """A span with its own ids in the parent's trace (or a new one), not recorded."""
        parent = trace.get_current_span(context).get_span_context()
        ids = self._provider.id_generator
        trace_id = parent.trace_id if parent.is_valid else ids.generate_trace_id()
        decision = self._provider.sampler.should_sample(
            context, trace_id, name, kind, attributes, links
        )
        sampled = decision.decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        own = SpanContext(
            trace_id=trace_id,
            span_id=ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=decision.trace_state,
        )
        return NonRecordingSpan(own)

    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Any:
        """start_span, made the current span for the block."""
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )


# Whether each provider configure_tracing built records spans (False: no span processor).
_RECORDS: weakref.WeakKeyDictionary[TracerProvider, bool] = weakref.WeakKeyDictionary()


class _Active:
    """The provider `tracer()` uses: module state set by configure_tracing, never at import."""

    lock = threading.Lock()
    provider: TracerProvider | None = None
    global_set = False
    # The tracers handed out, per name, with the provider they came from: the SDK's
    # get_tracer builds a new Tracer (and compares instrumentation scopes) on every call.
    tracers: tuple[TracerProvider | None, dict[str, Tracer]] = (None, {})


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    for module_name in _OTLP_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        kwargs = {} if settings.otlp_endpoint is None else {"endpoint": settings.otlp_endpoint}
        exporter: SpanExporter = module.OTLPSpanExporter(**kwargs)
        return exporter
    raise ConfigError(
        "tracing.exporter = otlp needs the opentelemetry-exporter-otlp package, which is not "
        "installed (pip install opentelemetry-exporter-otlp), or set tracing.exporter to "
        "none or console"
    )


def _processors(settings: TracingSettings, exporter: SpanExporter | None) -> list[SpanProcessor]:
    processors: list[SpanProcessor] = []
    if settings.exporter is TracingExporter.CONSOLE:
        # stderr: stdout belongs to CLI command output.
        processors.append(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif settings.exporter is TracingExporter.OTLP:
        processors.append(BatchSpanProcessor(_otlp_exporter(settings)))
    if exporter is not None:
        processors.append(SimpleSpanProcessor(exporter))
    return processors


def configure_tracing(
    settings: TracingSettings,
    *,
    exporter: SpanExporter | None = None,
    attributes: Mapping[str, str] | None = None,
    set_global: bool = False,
) -> TracerProvider:
    """Build the process's TracerProvider (service.name from settings) and make `tracer()` use it.

    `exporter` adds one more exporter (tests pass an InMemorySpanExporter). With set_global (the
    CLI's choice; never tests') the OpenTelemetry global provider is set too, once per process.
    With exporter none (and no extra exporter) spans are not recorded at all, but still get
    their ids, so trace context propagates as it does when they are exported."""
    processors = _processors(settings, exporter)  # raises ConfigError before any state changes
    resource = Resource.create({**(attributes or {}), SERVICE_NAME: settings.service_name})
    provider = TracerProvider(resource=resource, id_generator=_KeyedIds())
    for processor in processors:
        provider.add_span_processor(processor)
    with _Active.lock:
        # Known before the provider is: a thread that sees it sees whether it records.
        _RECORDS[provider] = bool(processors)
        previous, _Active.provider = _Active.provider, provider
        if set_global and not _Active.global_set:
            trace.set_tracer_provider(provider)
            _Active.global_set = True
    if previous is not None and previous is not provider:
        previous.shutdown()
    return provider


def shutdown_tracing() -> None:
    """Flush and stop the active provider; `tracer()` falls back to the global one."""
    with _Active.lock:
        provider, _Active.provider = _Active.provider, None
    if provider is not None:
        provider.shutdown()


def _current_tracer(name: str) -> Tracer:
    provider = _Active.provider
    if provider is None:
        return trace.get_tracer(name)
    owner, tracers = _Active.tracers
    if owner is not provider:  # a new provider: start a new cache (two threads may race: fine)
        tracers = {}
        _Active.tracers = (provider, tracers)
    found = tracers.get(name)
    if found is None:
        found = tracers[name] = (
            provider.get_tracer(name) if _RECORDS.get(provider, True) else _PropagateOnly(provider)
        )
    return found


def spans_recorded() -> bool:
    """Whether the scheduler steps' spans are recorded and exported (with tracing.exporter =
    none they only carry their ids: nothing is worth storing about them)."""
    return not isinstance(_current_tracer(_STEPS), _PropagateOnly)


class _ActiveTracer(Tracer):
    """Resolves the active provider on every span, so a tracer taken at import time still
    follows a later (or a test's) configure_tracing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        """Start a span with the active provider's tracer."""
        return _current_tracer(self.name).start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip

    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _AgnosticContextManager[Span]:
        """Start a span and make it current, with the active provider's tracer."""
        return _current_tracer(self.name).start_as_current_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception, end_on_exit,
        )  # fmt: skip


def tracer(name: str) -> Tracer:
    """A tracer for instrumenting module `name` that always uses the active provider."""
    return _ActiveTracer(name)


def inject_context(context: Context | None = None) -> dict[str, str]:
    """The current (or given) trace context as W3C headers: {"traceparent": ..., "tracestate"}."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def _pairs(carrier: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    if isinstance(carrier, Mapping):
        yield from carrier.items()
    else:
        yield from carrier


def extract_context(
    carrier: Mapping[str, Any] | Iterable[tuple[str, Any]], context: Context | None = None
) -> Context:
    """A context whose parent is the span described by W3C headers in carrier (a mapping or
    gRPC metadata pairs); non-text values are ignored and keys are case-insensitive."""
    headers = {key.lower(): value for key, value in _pairs(carrier) if isinstance(value, str)}
    return _PROPAGATOR.extract(headers, context=context)


def inject_env(context: Context | None = None) -> dict[str, str]:
    """The trace context as environment variables (TRACEPARENT, TRACESTATE) for a subprocess."""
    headers = inject_context(context)
    env = {TRACEPARENT_ENV: headers["traceparent"]} if "traceparent" in headers else {}
    if "tracestate" in headers:
        env[TRACESTATE_ENV] = headers["tracestate"]
    return env


def extract_env(environ: Mapping[str, str]) -> Context:
    """The parent context a subprocess inherits from TRACEPARENT / TRACESTATE (empty if unset)."""
    headers = {
        header: environ[name]
        for header, name in (("traceparent", TRACEPARENT_ENV), ("tracestate", TRACESTATE_ENV))
        if name in environ
    }
    return _PROPAGATOR.extract(headers)


# -- spans of the scheduler steps: one per task-instance step, never failing the step ------------
def traceparent(span: Span) -> str | None:
    """The W3C traceparent naming span (what the store keeps), or None for a non-recording span
    (tracing not configured)."""
    if not span.get_span_context().is_valid:
        return None
    return inject_context(trace.set_span_in_context(span)).get("traceparent")


def context_from(value: str | None) -> Context:
    """The parent context a stored traceparent names; an empty context (a new root) for None or
    a malformed value."""
    return Context() if not value else extract_context({"traceparent": value}, Context())


def _derived_span_id(trace_id: int, key: Sequence[object]) -> int:
    text = "\x1f".join([f"{trace_id:032x}", *(str(part) for part in key)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def keyed_context(value: str | None, key: Sequence[object]) -> Context:
    """The context of the span record_span made with `key` in the trace `value` names (its id is
    derived, so it need not be stored); the run's own context when value names no span."""
    parent = trace.get_current_span(context_from(value)).get_span_context()
    if not parent.is_valid:
        return Context()
    keyed = SpanContext(
        trace_id=parent.trace_id,
        span_id=_derived_span_id(parent.trace_id, key),
        is_remote=True,
        trace_flags=parent.trace_flags,
        trace_state=parent.trace_state,
    )
    return trace.set_span_in_context(NonRecordingSpan(keyed), Context())


def start_root_span(name: str, attributes: types.Attributes = None) -> Span:
    """Start (not end) the root span of a new trace; a non-recording span if tracing fails."""
    try:
        return _current_tracer(_STEPS).start_span(name, Context(), attributes=attributes)
    except Exception:  # tracing must never fail a scheduler step
        log.warning("could not start span %s", name, exc_info=True)
        return INVALID_SPAN


def record_span(
    name: str,
    parent: Context,
    *,
    key: Sequence[object] | None = None,
    attributes: types.Attributes = None,
    start_time: int | None = None,
) -> str | None:
    """Start and end one span under parent and return its traceparent (None when tracing is off
    or failed: a step never fails because of tracing). With `key` its span id is derived from
    the trace id and key, so keyed_context(parent's traceparent, key) names it from anywhere."""
    try:
        parent_span = trace.get_current_span(parent).get_span_context()
        keyed = (
            _derived_span_id(parent_span.trace_id, key)
            if key is not None and parent_span.is_valid
            else None
        )
        token = _KEYED_SPAN_ID.set(keyed)
        try:
            span = _current_tracer(_STEPS).start_span(
                name, parent, attributes=attributes, start_time=start_time
            )
        finally:
            _KEYED_SPAN_ID.reset(token)
        span.end()
        return traceparent(span)
    except Exception:  # tracing must never fail a scheduler step
        log.warning("could not record span %s", name, exc_info=True)
        return None
