"""Observability every process shares: metrics (StatsD and Prometheus), health, the /health and
/metrics HTTP server, OpenTelemetry tracing, and logging with secrets masked."""

from __future__ import annotations

from tradewind_cluster.observability.health import HealthReport, HealthState, HealthSync
from tradewind_cluster.observability.http import (
    ObservabilityEndpoints,
    ObservabilityServer,
    serve_observability,
)
from tradewind_cluster.observability.logs import (
    MASK,
    JsonFormatter,
    SecretMasker,
    SecretMaskingFilter,
    TextFormatter,
    configure_logging,
    record_extras,
    settings_secrets,
)
from tradewind_cluster.observability.metrics import (
    METRICS,
    PROMETHEUS_BUCKETS,
    MetricEvent,
    MetricKind,
    Metrics,
    MetricSink,
    MetricSpec,
    PrometheusSink,
    RecordingSink,
    StatsdSink,
    Stopwatch,
    build_metrics,
    metric_reference,
)
from tradewind_cluster.observability.tracing import (
    TRACEPARENT_ENV,
    TRACESTATE_ENV,
    configure_tracing,
    extract_context,
    extract_env,
    inject_context,
    inject_env,
    shutdown_tracing,
    tracer,
)

__all__ = [
    "MASK",
    "METRICS",
    "PROMETHEUS_BUCKETS",
    "TRACEPARENT_ENV",
    "TRACESTATE_ENV",
    "HealthReport",
    "HealthState",
    "HealthSync",
    "JsonFormatter",
    "MetricEvent",
    "MetricKind",
    "MetricSink",
    "MetricSpec",
    "Metrics",
    "ObservabilityEndpoints",
    "ObservabilityServer",
    "PrometheusSink",
    "RecordingSink",
    "SecretMasker",
    "SecretMaskingFilter",
    "StatsdSink",
    "Stopwatch",
    "TextFormatter",
    "build_metrics",
    "configure_logging",
    "configure_tracing",
    "extract_context",
    "extract_env",
    "inject_context",
    "inject_env",
    "metric_reference",
    "record_extras",
    "serve_observability",
    "settings_secrets",
    "shutdown_tracing",
    "tracer",
]
