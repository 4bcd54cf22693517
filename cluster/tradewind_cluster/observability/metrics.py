"""The metrics facade every process emits through, the table of known metrics (Airflow's StatsD
names and how labels map onto them), and its sinks: StatsD, Prometheus and an in-memory recorder."""

from __future__ import annotations

import logging
import re
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import Protocol

import statsd
from prometheus_client import CollectorRegistry, ProcessCollector

from tradewind.errors import BadInputError, ConfigError
from tradewind_cluster.config import MetricsSettings
from tradewind_cluster.observability.logs import SecretMasker
from tradewind_cluster.observability.series import SeriesFamily, SeriesKind

__all__ = [
    "METRICS",
    "PROMETHEUS_BUCKETS",
    "MetricEvent",
    "MetricKind",
    "MetricSink",
    "MetricSpec",
    "Metrics",
    "PrometheusSink",
    "RecordingSink",
    "StatsdSink",
    "Stopwatch",
    "build_metrics",
    "metric_reference",
]

log = logging.getLogger(__name__)

PROMETHEUS_NAMESPACE = "tradewind"
PROMETHEUS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Histogram buckets in seconds, fine enough to resolve milliseconds."""

# Airflow's stat_name_default_handler: names outside this set or over 250 characters are dropped.
_STATSD_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
_PROMETHEUS_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class MetricKind(StrEnum):
    """How a metric behaves, which decides the call that emits it and each sink's type."""

    COUNTER = "counter"
    """Only goes up: `incr`. StatsD counter, Prometheus Counter."""
    UPDOWN = "updown"
    """A counter that `decr` may lower: StatsD counter, Prometheus Gauge."""
    GAUGE = "gauge"
    """A value set as a whole: `gauge`."""
    TIMER = "timer"
    """A duration in seconds: `timing` / `timer`. StatsD ms timer, Prometheus Histogram."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """One known metric: its dotted name, kind, labels, meaning and StatsD name templates."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...] = ()
    statsd: tuple[str, ...] = ()
    """str.format templates over the labels; empty means the bare name."""

    @property
    def statsd_templates(self) -> tuple[str, ...]:
        """The StatsD names emitted, as templates (Airflow sends per-DAG names and the bare one)."""
        return self.statsd or (self.name,)

    @property
    def prometheus_name(self) -> str:
        """The Prometheus family name (a Counter's samples add `_total`)."""
        return f"{PROMETHEUS_NAMESPACE}_{_PROMETHEUS_UNSAFE.sub('_', self.name)}"


def _spec(
    name: str,
    kind: MetricKind,
    description: str,
    labels: tuple[str, ...] = (),
    statsd: tuple[str, ...] = (),
) -> MetricSpec:
    spec = MetricSpec(name=name, kind=kind, description=description, labels=labels, statsd=statsd)
    for template in spec.statsd_templates:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if not fields <= set(labels):
            raise ValueError(f"metric {name}: template {template!r} uses unknown labels")
    return spec


def _per(label: str, head: str) -> tuple[str, str]:
    # Airflow sends the legacy per-entity name, then the bare name it tags.
    return (f"{head}.{{{label}}}", head)


_C, _U, _G, _T = MetricKind.COUNTER, MetricKind.UPDOWN, MetricKind.GAUGE, MetricKind.TIMER
_DAG, _TASK = ("dag_id",), ("dag_id", "task_id")

# One row per metric: name, kind, description, labels, StatsD templates (default: the bare name).
# fmt: off
_TABLE = (
    # -- scheduler loop (Airflow names) -----------------------------------------------------------
    _spec("scheduler_heartbeat", _C, "Heartbeats written by a scheduler replica."),
    _spec("scheduler_job_heartbeat_failure", _C, "Scheduler heartbeats that failed."),
    _spec("scheduler.scheduler_loop_duration", _T, "Time one scheduler loop iteration took."),
    _spec("scheduler.critical_section_duration", _T, "Time spent queueing task instances."),
    _spec("scheduler.critical_section_query_duration", _T, "Time of the queueing query."),
    _spec("scheduler.critical_section_busy", _C, "Times the critical section found rows locked."),
    _spec("scheduler.tasks.starving", _G, "Task instances that cannot queue: no open pool slot."),
    _spec("scheduler.tasks.executable", _G, "Task instances queued by the last critical section."),
    _spec("scheduler.tasks.killed_externally", _C, "Task instances killed externally.", _TASK),
    _spec("scheduler.orphaned_tasks.cleared", _C, "Orphaned task instances reset by a scheduler."),
    _spec("scheduler.orphaned_tasks.adopted", _C, "Orphaned task instances adopted."),
    _spec("zombies_killed", _C, "Running task instances failed as zombies.", _TASK),
    # -- scheduler loop (Tradewind additions) -----------------------------------------------------
    _spec("scheduler.dagruns.created", _C, "DAG runs created by a scheduler.", _DAG),
    _spec("scheduler.step.duration", _T, "Time one step of the scheduler loop took.", ("step",)),
    _spec("scheduler.step.errors", _C, "Loop steps that raised and were skipped.", ("step",)),
    _spec("scheduler.tasks.requeued", _C, "Queued attempts requeued.", ("reason",)),
    _spec("scheduler.reports.stale", _C, "Worker reports refused: fencing token not current."),
    _spec("scheduler.members.declared_dead", _C, "Peer replicas or workers declared dead."),
    _spec("scheduler.members.alive", _G, "Scheduler replicas alive (member rows)."),
    _spec("scheduler.workers.alive", _G, "Worker agents whose heartbeat is fresh."),
    _spec("scheduler.tasks.dispatched", _C, "Attempts handed to a worker.", ("queue",)),
    _spec(
        "scheduler.tasks.eager",
        _C,
        "Attempts handed to a worker in the reply to its success report (eager dispatch).",
        ("queue",),
    ),
    _spec(
        "scheduler.tasks.eager_sent_again",
        _C,
        "Handed attempts sent once more in the reply to a success report sent again.",
        ("queue",),
    ),
    _spec(
        "scheduler.dispatch.duration",
        _T,
        "Time of one dispatch RPC to a worker (an ExecuteBatch carries a pass's attempts for it).",
        ("queue",),
    ),
    _spec("scheduler.dispatch.latency", _T, "Time from queued to accepted by a worker.",
          ("queue",)),
    _spec("scheduler.dispatch.failures", _C, "Dispatch RPCs that failed.", ("queue", "reason")),
    # -- DAG runs ---------------------------------------------------------------------------------
    _spec("dagrun.schedule_delay", _T, "Delay from a run's data interval end to its start.", _DAG,
          _per("dag_id", "dagrun.schedule_delay")),
    _spec("dagrun.duration", _T, "Time a DAG run took to succeed or fail.", ("dag_id", "state"),
          ("dagrun.duration.{state}.{dag_id}", "dagrun.duration.{state}")),
    _spec("dagrun.first_task_scheduling_delay", _T, "Delay from a run's expected start to its "
          "first task's start.", _DAG,
          ("dagrun.{dag_id}.first_task_scheduling_delay", "dagrun.first_task_scheduling_delay")),
    _spec("dagrun.dependency-check", _T, "Time taken to check a run's task dependencies.", _DAG,
          _per("dag_id", "dagrun.dependency-check")),
    # -- task instances ---------------------------------------------------------------------------
    _spec("ti_successes", _C, "Task instances that succeeded.", _TASK),
    _spec("ti_failures", _C, "Task instances that failed.", _TASK),
    _spec("ti.start", _C, "Task attempts started.", _TASK,
          ("ti.start.{dag_id}.{task_id}", "ti.start")),
    _spec("ti.finish", _C, "Task attempts finished, by final state.", (*_TASK, "state"),
          ("ti.finish.{dag_id}.{task_id}.{state}", "ti.finish")),
    _spec("operator_successes", _C, "Task successes by operator class.", (*_TASK, "operator"),
          ("operator_successes_{operator}", "operator_successes")),
    _spec("operator_failures", _C, "Task failures by operator class.", (*_TASK, "operator"),
          ("operator_failures_{operator}", "operator_failures")),
    _spec("task_instance_created", _C, "Task instances created, by operator.", ("operator",),
          ("task_instance_created_{operator}", "task_instance_created")),
    _spec("task_removed_from_dag", _C, "Task instances removed: task left its DAG.", _DAG,
          _per("dag_id", "task_removed_from_dag")),
    _spec("task_restored_to_dag", _C, "Removed task instances restored to their DAG.", _DAG,
          _per("dag_id", "task_restored_to_dag")),
    _spec("task.duration", _T, "Time a task attempt ran.", _TASK,
          ("dag.{dag_id}.{task_id}.duration", "task.duration")),
    _spec("task.scheduled_duration", _T, "Time a task instance was scheduled before queued.", _TASK,
          ("dag.{dag_id}.{task_id}.scheduled_duration", "task.scheduled_duration")),
    _spec("task.queued_duration", _T, "Time a task instance was queued before running.", _TASK,
          ("dag.{dag_id}.{task_id}.queued_duration", "task.queued_duration")),
    # -- executor, queues and pools ---------------------------------------------------------------
    _spec("executor.open_slots", _G, "Free worker slots across live workers."),
    _spec("executor.queued_tasks", _G, "Attempts queued and not yet running."),
    _spec("executor.running_tasks", _G, "Attempts running on workers."),
    _spec("queue.open_slots", _G, "Free worker slots serving a queue.", ("queue",),
          _per("queue", "queue.open_slots")),
    _spec("queue.queued_tasks", _G, "Attempts waiting for a worker of a queue.", ("queue",),
          _per("queue", "queue.queued_tasks")),
    _spec("pool.open_slots", _G, "Open slots in a pool.", ("pool",),
          _per("pool", "pool.open_slots")),
    _spec("pool.queued_slots", _G, "Pool slots used by queued task instances.", ("pool",),
          _per("pool", "pool.queued_slots")),
    _spec("pool.running_slots", _G, "Pool slots used by running task instances.", ("pool",),
          _per("pool", "pool.running_slots")),
    _spec("pool.scheduled_slots", _G, "Pool slots wanted by scheduled task instances.", ("pool",),
          _per("pool", "pool.scheduled_slots")),
    _spec("pool.starving_tasks", _G, "Scheduled task instances waiting for a slot.", ("pool",),
          _per("pool", "pool.starving_tasks")),
    # -- DAG file processing ----------------------------------------------------------------------
    _spec("dagbag_size", _G, "DAGs found by the last parse of this replica's files."),
    _spec("dag_processing.import_errors", _G, "DAG files that failed to import."),
    _spec("dag_processing.total_parse_time", _G, "Seconds taken to parse this replica's files."),
    _spec("dag_processing.file_path_queue_size", _G, "DAG files waiting for the next parse."),
    _spec("dag_processing.processes", _U, "DAG parsing processes running now."),
    _spec("dag_processing.processor_timeouts", _C, "DAG file parses killed for taking too long."),
    _spec("dag_file_refresh_error", _C, "Failures listing or loading the DAG files."),
    _spec("dag_processing.last_duration", _T, "Time taken to load one DAG file.", ("file",),
          _per("file", "dag_processing.last_duration")),
    _spec("dag_processing.last_run.seconds_ago", _G, "Seconds since a DAG file was last parsed.",
          ("file",), ("dag_processing.last_run.seconds_ago.{file}",)),
    # -- rpc and workers --------------------------------------------------------------------------
    _spec("rpc.errors", _C, "gRPC calls that ended with an error status.", ("method", "code")),
    _spec("rpc.duration", _T, "Time a gRPC call took.", ("method",)),
    _spec("worker_heartbeat", _C, "Heartbeats a worker sent to a scheduler."),
    _spec("worker_heartbeat_failure", _C, "Worker heartbeats that failed."),
    _spec("worker.open_slots", _G, "Free slots on this worker."),
    _spec("worker.running_tasks", _G, "Attempts running on this worker."),
    _spec("worker.tasks.killed", _C, "Attempts a worker killed.", ("reason",)),
)
# fmt: on

METRICS: Mapping[str, MetricSpec] = MappingProxyType({spec.name: spec for spec in _TABLE})
"""Every metric Tradewind emits, by dotted name."""


def metric_reference() -> list[MetricSpec]:
    """Every known metric sorted by name, for generated docs."""
    return sorted(METRICS.values(), key=lambda spec: spec.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricEvent:
    """One emission as a sink sees it: counters carry the delta, timers seconds."""

    name: str
    kind: MetricKind
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


class MetricSink(Protocol):
    """Where validated emissions go."""

    def emit(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        """Record one emission (counter delta, gauge value or timer seconds)."""


class _Once:
    """Remembers which problems were already logged, so a hot path logs each one once."""

    def __init__(self, limit: int = 1000) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._limit = limit

    def first(self, key: str) -> bool:
        """True the first time key is seen (and always once the memory is full)."""
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) < self._limit:
                self._seen.add(key)
            return True


class StatsdSink:
    """Sends to StatsD with Airflow's names: labels become name parts, timings milliseconds."""

    def __init__(self, host: str, port: int, prefix: str | None) -> None:
        try:
            self.client = statsd.StatsClient(host=host, port=port, prefix=prefix or None)
        except OSError as exc:
            raise ConfigError(
                f"metrics.statsd_host {host!r} port {port}: cannot resolve ({exc})"
            ) from None
        self._once = _Once()

    def emit(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        """Send one emission under each of the metric's StatsD names."""
        for template in spec.statsd_templates:
            stat = template.format_map(labels)
            if not _STATSD_NAME.match(stat):
                # Airflow drops such names too; the Prometheus series still carries the labels.
                if self._once.first(f"{spec.name}:{template}"):
                    log.warning(
                        "dropping invalid StatsD name for %s (only A-Z a-z 0-9 _ . - allowed, "
                        "at most 250 characters)",
                        spec.name,
                        extra={"event": "metric_dropped", "metric": spec.name},
                    )
                continue
            self._send(spec.kind, stat, value)

    def _send(self, kind: MetricKind, stat: str, value: float) -> None:
        if kind is MetricKind.TIMER:
            self.client.timing(stat, value * 1000.0)
        elif kind is MetricKind.GAUGE:
            self.client.gauge(stat, _compact(value))
        else:
            self.client.incr(stat, _compact(value))

    def close(self) -> None:
        """Close the UDP socket."""
        self.client.close()


def _compact(value: float) -> float | int:
    # "1|c" rather than "1.0|c", as Airflow sends ints: some StatsD servers reject float counts.
    return int(value) if float(value).is_integer() else value


_SERIES_KIND = {
    MetricKind.COUNTER: SeriesKind.COUNTER,
    MetricKind.UPDOWN: SeriesKind.GAUGE,
    MetricKind.GAUGE: SeriesKind.GAUGE,
    MetricKind.TIMER: SeriesKind.HISTOGRAM,
}


class PrometheusSink:
    """Keeps Prometheus series in its own registry (never the global one), created on first use.

    Each metric is one SeriesFamily (`observability/series.py`): a new labelled series is a
    list of numbers, where prometheus_client's own metric classes make an object with a lock
    per value, and the task metrics add seven series for every task a process first sees."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)  # process_cpu_seconds_total etc.
        self.registry = registry
        self._families: dict[str, SeriesFamily] = {}
        self._lock = threading.Lock()

    def emit(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        """Apply one emission to its series."""
        family = self._families.get(spec.name) or self._family(spec)
        key = tuple([labels[k] for k in spec.labels])
        if spec.kind is MetricKind.TIMER:
            family.observe(key, value)
        elif spec.kind is MetricKind.GAUGE:
            family.set(key, value)
        else:
            family.add(key, value)

    def _family(self, spec: MetricSpec) -> SeriesFamily:
        with self._lock:
            family = self._families.get(spec.name)
            if family is None:
                kind = _SERIES_KIND[spec.kind]
                timer = kind is SeriesKind.HISTOGRAM
                family = SeriesFamily(
                    spec.prometheus_name,
                    f"{spec.description} (seconds)" if timer else spec.description,
                    spec.labels,
                    kind,
                    buckets=PROMETHEUS_BUCKETS if timer else (),
                )
                self.registry.register(family)
                self._families[spec.name] = family
            return family


class RecordingSink:
    """Keeps every emission in memory so tests can assert what was emitted."""

    def __init__(self) -> None:
        self._events: list[MetricEvent] = []
        self._lock = threading.Lock()

    def emit(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        """Record one emission."""
        event = MetricEvent(name=spec.name, kind=spec.kind, value=value, labels=dict(labels))
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[MetricEvent]:
        """Every emission so far, oldest first."""
        with self._lock:
            return list(self._events)

    def find(self, name: str, **labels: object) -> list[MetricEvent]:
        """Emissions of `name` whose labels include all the given ones."""
        wanted = {key: str(value) for key, value in labels.items()}
        return [
            event
            for event in self.events
            if event.name == name and all(event.labels.get(k) == v for k, v in wanted.items())
        ]

    def total(self, name: str, **labels: object) -> float:
        """Sum of a counter's increments (minus decrements) matching the labels."""
        return sum(event.value for event in self.find(name, **labels))

    def last(self, name: str, **labels: object) -> float | None:
        """The last value a gauge was set to (matching the labels), or None."""
        found = self.find(name, **labels)
        return found[-1].value if found else None

    def timings(self, name: str, **labels: object) -> list[float]:
        """Every duration, in seconds, recorded for a timer matching the labels."""
        return [event.value for event in self.find(name, **labels)]

    def names(self) -> set[str]:
        """The names of every metric emitted so far."""
        return {event.name for event in self.events}

    def clear(self) -> None:
        """Forget every emission."""
        with self._lock:
            self._events.clear()


class Stopwatch:
    """Times a block and emits it as a timer on exit, even when the block raises."""

    __slots__ = ("_labels", "_metrics", "_name", "_started", "seconds")

    def __init__(self, metrics: Metrics, name: str, labels: dict[str, object]) -> None:
        self._metrics, self._name, self._labels = metrics, name, labels
        self._started = 0.0
        self.seconds: float | None = None

    def __enter__(self) -> Stopwatch:
        self._started = self._metrics.clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = self._metrics.clock() - self._started
        self._metrics.timing(self._name, self.seconds, **self._labels)


_OPS = {
    "incr": frozenset({MetricKind.COUNTER, MetricKind.UPDOWN}),
    "decr": frozenset({MetricKind.UPDOWN}),
    "gauge": frozenset({MetricKind.GAUGE}),
    "timing": frozenset({MetricKind.TIMER}),
}


class Metrics:
    """The facade: validates a name and its labels against METRICS, then fans out to the sinks.

    Strict mode (tests) raises BadInputError on any misuse; otherwise misuse is logged once and
    the emission dropped, and a failing sink never reaches the caller."""

    def __init__(
        self,
        sinks: Sequence[MetricSink] = (),
        *,
        strict: bool = False,
        masker: SecretMasker | None = None,
        clock: Callable[[], float] = time.perf_counter,
        registry: Mapping[str, MetricSpec] = METRICS,
    ) -> None:
        self.sinks = tuple(sinks)
        self.strict = strict
        self.clock = clock
        self._masker = masker
        self._registry = registry
        self._once = _Once()

    @property
    def prometheus_registry(self) -> CollectorRegistry | None:
        """The registry of the Prometheus sink, if there is one (served on /metrics)."""
        for sink in self.sinks:
            if isinstance(sink, PrometheusSink):
                return sink.registry
        return None

    def incr(self, name: str, n: float = 1, **labels: object) -> None:
        """Add n (>= 0) to a counter."""
        self._emit("incr", name, n, labels)

    def decr(self, name: str, n: float = 1, **labels: object) -> None:
        """Subtract n (>= 0) from an up-down counter."""
        self._emit("decr", name, -n, labels)

    def gauge(self, name: str, value: float, **labels: object) -> None:
        """Set a gauge."""
        self._emit("gauge", name, value, labels)

    def timing(self, name: str, seconds: float, **labels: object) -> None:
        """Record a duration in seconds (StatsD receives milliseconds)."""
        self._emit("timing", name, seconds, labels)

    def timer(self, name: str, **labels: object) -> Stopwatch:
        """A context manager timing its block; `.seconds` holds the duration afterwards."""
        return Stopwatch(self, name, labels)

    def close(self) -> None:
        """Release sockets held by the sinks."""
        for sink in self.sinks:
            if isinstance(sink, StatsdSink):
                sink.close()

    def _emit(self, op: str, name: str, value: float, labels: dict[str, object]) -> None:
        spec = self._check(op, name, value, labels)
        if isinstance(spec, str):
            self._misuse(name, spec)
            return
        clean = {key: self._mask(labels[key]) for key in spec.labels}
        for sink in self.sinks:
            try:
                sink.emit(spec, float(value), clean)
            except Exception as exc:
                if self.strict:
                    raise
                if self._once.first(f"sink:{type(sink).__name__}:{name}"):
                    log.warning(
                        "metric %s dropped by %s: %s",
                        name,
                        type(sink).__name__,
                        type(exc).__name__,
                        extra={"event": "metric_dropped", "metric": name},
                    )

    def _check(
        self, op: str, name: str, value: float, labels: Mapping[str, object]
    ) -> MetricSpec | str:
        """The metric's spec, or what is wrong with this call."""
        spec = self._registry.get(name)
        if spec is None:
            return "is not a known metric (see tradewind_cluster.observability.METRICS)"
        if spec.kind not in _OPS[op]:
            return f"is a {spec.kind} metric and cannot take {op}()"
        if set(labels) != set(spec.labels):
            wanted = ", ".join(spec.labels) or "none"
            return f"takes labels ({wanted}), got ({', '.join(sorted(labels)) or 'none'})"
        if (op == "incr" and value < 0) or (op == "decr" and value > 0):
            return f"cannot {op} by a negative amount"
        return spec

    def _misuse(self, name: str, problem: str) -> None:
        message = f"metric {name!r} {problem}"
        if self.strict:
            raise BadInputError(message)
        if self._once.first(message):
            log.error(message, extra={"event": "metric_misuse", "metric": name})

    def _mask(self, value: object) -> str:
        text = str(value)
        return self._masker.mask(text) if self._masker is not None else text


def build_metrics(
    settings: MetricsSettings, *, masker: SecretMasker | None = None, strict: bool = False
) -> Metrics:
    """The facade with the sinks the metrics section turns on (Prometheus, StatsD)."""
    sinks: list[MetricSink] = []
    if settings.prometheus_on:
        sinks.append(PrometheusSink())
    if settings.statsd_on:
        sinks.append(StatsdSink(settings.statsd_host, settings.statsd_port, settings.statsd_prefix))
    return Metrics(sinks, strict=strict, masker=masker)
