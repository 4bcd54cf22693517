"""Liveness of a process as the sum of its components: each beats within its own deadline or
reports a failure, and `check()` says healthy or not with the reasons. `HealthSync` mirrors the
result into another flag (the grpc.health.v1 status) from a small thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tradewind.errors import BadInputError

__all__ = ["HealthReport", "HealthState", "HealthSync"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The verdict of one check: healthy, why not, and per-component details."""

    healthy: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """ "healthy" or "unhealthy", as /health reports it."""
        return "healthy" if self.healthy else "unhealthy"

    def to_json(self) -> dict[str, Any]:
        """The /health body: status, reasons, then the details."""
        return {**self.details, "status": self.status, "reasons": list(self.reasons)}


@dataclass(slots=True)
class _Component:
    threshold_s: float | None
    last_beat: float | None = None
    failure: str | None = None


class HealthState:
    """Components report progress with `beat` or trouble with `set_failure`; all in memory, so
    `check()` is cheap enough for every probe. Times come from a monotonic clock (injectable)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._components: dict[str, _Component] = {}
        self._details: dict[str, Any] = {}
        self._lock = threading.Lock()

    def register(self, name: str, *, threshold_s: float | None = None) -> None:
        """Track a component; with a threshold it must beat at least that often to stay healthy.

        A component with a threshold that has never beaten is unhealthy ("has not reported")."""
        if threshold_s is not None and threshold_s <= 0:
            raise BadInputError(f"health component {name!r}: threshold_s must be > 0")
        with self._lock:
            current = self._components.get(name)
            if current is None:
                self._components[name] = _Component(threshold_s=threshold_s)
            else:
                current.threshold_s = threshold_s

    def beat(self, name: str) -> None:
        """Mark progress now and clear any failure (an unknown name is tracked without deadline)."""
        now = self._clock()
        with self._lock:
            component = self._components.setdefault(name, _Component(threshold_s=None))
            component.last_beat, component.failure = now, None

    def set_failure(self, name: str, reason: str) -> None:
        """Mark a component failed until its next beat."""
        with self._lock:
            component = self._components.setdefault(name, _Component(threshold_s=None))
            component.failure = reason

    def remove(self, name: str) -> None:
        """Stop tracking a component (for one that stopped on purpose)."""
        with self._lock:
            self._components.pop(name, None)

    def set_detail(self, key: str, value: Any) -> None:
        """A fixed fact reported with every check (process kind, member id, version...)."""
        with self._lock:
            self._details[key] = value

    def check(self) -> HealthReport:
        """Healthy when no component is failed, stale or silent past its threshold."""
        now = self._clock()
        with self._lock:
            items = sorted(self._components.items())
            details = dict(self._details)
            reasons: list[str] = []
            components: dict[str, Any] = {}
            for name, component in items:
                reason, view = _judge(name, component, now)
                components[name] = view
                if reason is not None:
                    reasons.append(reason)
        details["components"] = components
        return HealthReport(healthy=not reasons, reasons=reasons, details=details)


def _judge(name: str, component: _Component, now: float) -> tuple[str | None, dict[str, Any]]:
    threshold = component.threshold_s
    age = None if component.last_beat is None else max(0.0, now - component.last_beat)
    view: dict[str, Any] = {
        "status": "ok",
        "seconds_since_beat": None if age is None else round(age, 3),
        "threshold_s": threshold,
    }
    reason: str | None = None
    if component.failure is not None:
        view["status"], view["failure"] = "failed", component.failure
        reason = f"{name} failed: {component.failure}"
    elif threshold is not None and age is None:
        view["status"] = "starting"
        reason = f"{name} has not reported yet (threshold {threshold:g}s)"
    elif threshold is not None and age is not None and age > threshold:
        view["status"] = "stale"
        reason = f"{name} has not progressed for {age:.1f}s (threshold {threshold:g}s)"
    return reason, view


class HealthSync:
    """Pushes `check().healthy` into `set_serving` at start and whenever it changes, polling
    every interval (staleness appears with time, not with a call). Keeps grpc out of here."""

    def __init__(
        self,
        state: HealthState,
        set_serving: Callable[[bool], None],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self._state = state
        self._set_serving = set_serving
        self._interval_s = interval_s
        self._published: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> bool:
        """Check now and publish if the verdict changed; returns the verdict."""
        healthy = self._state.check().healthy
        if healthy != self._published:
            self._set_serving(healthy)
            self._published = healthy
        return healthy

    def start(self) -> HealthSync:
        """Publish once now, then keep publishing from a daemon thread."""
        self._safe_sync()
        self._thread = threading.Thread(target=self._run, name="health-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (the last published value stays)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._safe_sync()

    def _safe_sync(self) -> None:
        try:
            self.sync_once()
        except Exception:  # a failing callback must not kill the sync thread
            log.warning("health sync failed", exc_info=True, extra={"event": "health_sync_failed"})
