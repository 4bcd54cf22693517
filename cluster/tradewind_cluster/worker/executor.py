"""The attempts this worker runs: admission (queues, slots, idempotency per token), launching
through the fork server, the kill protocol (SIGTERM to the process group, SIGKILL after a grace),
execution timeouts, and turning each end into its report. State sits behind one lock; `tick`
checks the deadlines and signals are sent outside the lock."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from tradewind.errors import BadInputError, RetryableError
from tradewind.spec import TaskKind
from tradewind_cluster.observability.metrics import Metrics
from tradewind_cluster.observability.tracing import traceparent
from tradewind_cluster.worker.launch import ChildEvent, ChildResult, Launch, Outcome, attempt_key
from tradewind_cluster.worker.logs import attempt_log_path
from tradewind_cluster.worker.options import WorkerOptions
from tradewind_cluster.worker.outcomes import PendingReport, final_report, started_report

__all__ = [
    "LEASE_REASON",
    "UNWANTED_REASON",
    "Admission",
    "Attempt",
    "AttemptOrder",
    "Executor",
    "KillKind",
    "Spawner",
]

log = logging.getLogger(__name__)

UNWANTED_REASON = "killed: no longer wanted by the scheduler (cleared, marked or superseded)"
LEASE_REASON = "worker lease expired"
_RECENT = 4096


class KillKind(StrEnum):
    """Why the agent killed an attempt (the `reason` label of worker.tasks.killed)."""

    TIMEOUT = "timeout"
    UNWANTED = "unwanted"
    LEASE = "lease_expired"
    REFUSED = "refused_report"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


class Spawner(Protocol):
    """The fork server, as the executor uses it."""

    def spawn(self, launch: Launch) -> None:
        """Start a task process for the attempt."""

    def signal(self, key: str, signum: int) -> None:
        """Signal an attempt's process group."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptOrder:
    """A validated Execute request."""

    ti_id: int
    token: int
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    logical_date: str
    fileloc: str
    file_hash: str
    task_json: str
    context_json: str
    queue: str
    kind: TaskKind
    execution_timeout_s: float | None = None

    @property
    def key(self) -> str:
        """attempt_key of this attempt."""
        return attempt_key(self.ti_id, self.token)


@dataclass(eq=False, kw_only=True)
class Attempt:
    """One attempt on this worker; mutated only under the executor's lock."""

    order: AttemptOrder
    log_path: Path
    received_at: float  # monotonic
    received_wall: float
    log_start: int = 0  # where this attempt's part of the log file begins
    span: Any = None
    pid: int | None = None
    started_at: float | None = None
    # STARTED not yet sent (wall time user code started): sent at start_due, or folded into
    # the final report if the try ends first
    start_held_at: float | None = None
    start_due: float | None = None
    result: ChildResult | None = None
    kill_kind: KillKind | None = None
    kill_reason: str | None = None
    sigkill_at: float | None = None
    sigkilled: bool = False
    report_final: bool = True
    exit_status: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        """attempt_key of this attempt."""
        return self.order.key


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """The answer to Execute; `attempt` is set when a new process must be launched."""

    accepted: bool
    reason: str = ""
    attempt: Attempt | None = None


class Executor:
    """See the module docstring. Reports go to `submit_report` in the order they happen."""

    def __init__(
        self,
        options: WorkerOptions,
        spawner: Spawner,
        *,
        submit_report: Callable[[PendingReport], None],
        on_finished: Callable[[Attempt], None],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        offers: Callable[[], bool] = lambda: False,
    ) -> None:
        self.options = options
        # Eager dispatch: whether a success may offer its slot for the next attempt (the agent
        # says no while draining or without a lease)
        self._offers = offers
        self._spawner = spawner
        self._submit = submit_report
        self._on_finished = on_finished
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[str, Attempt] = {}
        self._recent: collections.OrderedDict[str, Attempt] = collections.OrderedDict()

    def use_spawner(self, spawner: Spawner) -> None:
        """Launch and signal through a new fork server from now on."""
        self._spawner = spawner

    # -- queries ----------------------------------------------------------------------
    def running_refs(self) -> list[tuple[int, int]]:
        """(ti_id, token) of every attempt whose process has not ended."""
        with self._lock:
            return [(a.order.ti_id, a.order.token) for a in self._running.values()]

    def free_slots(self) -> int:
        """Slots not taken by a running attempt."""
        with self._lock:
            return max(0, self.options.slots - len(self._running))

    def find(self, ti_id: int, token: int) -> Attempt | None:
        """A running or recently finished attempt."""
        key = attempt_key(ti_id, token)
        with self._lock:
            return self._running.get(key) or self._recent.get(key)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing runs; False when the time ran out first."""
        deadline = self._clock() + timeout_s
        with self._idle:
            while self._running:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    # -- admission ----------------------------------------------------------------------
    def admit(self, order: AttemptOrder, *, refusal: str | None = None) -> Admission:
        """Accept or refuse an Execute; the same (ti_id, token) again is accepted once more
        without a second process (idempotent)."""
        with self._lock:
            if order.key in self._running:
                return Admission(accepted=True, reason="already running on this worker")
            if order.key in self._recent:
                return Admission(accepted=True, reason="already ran on this worker")
            reason = refusal or self._refusal(order)
            if reason is not None:
                return Admission(accepted=False, reason=reason)
            attempt = Attempt(
                order=order,
                log_path=attempt_log_path(
                    self.options.logs_dir,
                    order.dag_id,
                    order.run_id,
                    order.task_id,
                    order.try_number,
                ),
                received_at=self._clock(),
                received_wall=time.time(),
            )
            self._running[order.key] = attempt
        self._publish()
        return Admission(accepted=True, attempt=attempt)

    def _refusal(self, order: AttemptOrder) -> str | None:
        if order.queue not in self.options.queues:
            served = ", ".join(self.options.queues)
            return f"queue {order.queue!r} is not served by this worker (it serves: {served})"
        for other in self._running.values():
            if other.order.ti_id == order.ti_id:
                return (
                    f"an attempt of task instance {order.ti_id} (token {other.order.token}) "
                    "still runs on this worker"
                )
        if len(self._running) >= self.options.slots:
            return f"no free slot ({self.options.slots} of {self.options.slots} in use)"
        return None

    def launch(self, attempt: Attempt, launch: Launch) -> None:
        """Ask the fork server for the attempt's process; a failure ends the attempt."""
        try:
            self._spawner.spawn(launch)
        except RetryableError as exc:
            self._finish(attempt.key, status=None, spawn_error=f"could not start: {exc}")

    def discard(self, attempt: Attempt) -> None:
        """Forget an admitted attempt that was never launched (no report: it was refused)."""
        with self._lock:
            self._running.pop(attempt.key, None)
            self._idle.notify_all()
        self._publish()

    # -- fork server messages -----------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        """Apply one fork server message (spawned, child event, exited, spawn_failed)."""
        kind, key = message.get("ev"), str(message.get("key", ""))
        if kind == "spawned":
            with self._lock:
                found = self._running.get(key)
                if found is not None:
                    found.pid = int(message["pid"])
        elif kind == "child":
            self._child_event(key, message.get("event") or {})
        elif kind == "exited":
            self._finish(key, status=int(message["status"]))
        elif kind == "spawn_failed":
            self._finish(key, status=None, spawn_error=str(message.get("error")))

    def _child_event(self, key: str, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        at = float(event.get("at") or time.time())
        delay = self.options.start_report_delay_s
        with self._lock:
            attempt = self._running.get(key)
            if attempt is None:
                return
            if kind == ChildEvent.STARTED:
                attempt.started_at = self._clock()
                if delay > 0:
                    # A try that ends within the delay sends one report, not two.
                    attempt.start_held_at, attempt.start_due = at, attempt.started_at + delay
            elif kind == ChildEvent.RESULT:
                try:
                    attempt.result = ChildResult.from_dict(event)
                except BadInputError as exc:
                    log.error("attempt %s: %s", key, exc)
                return
            else:
                return
        log.debug(
            "attempt %s: user code started %.1f ms after Execute",
            key,
            (at - attempt.received_wall) * 1000,
            extra={"event": "attempt_started", "attempt": key},
        )
        if delay <= 0:
            self._submit(
                _traced(attempt, started_report(attempt.order.ti_id, attempt.order.token, at))
            )

    def _send_held_starts(self, now: float) -> None:
        """STARTED of tries still running after start_report_delay_s. Submitted under the lock,
        so a final report of the same try (taken under it too) always queues after it."""
        with self._lock:
            for attempt in self._running.values():
                held = attempt.start_held_at
                if held is not None and attempt.start_due is not None and now >= attempt.start_due:
                    attempt.start_held_at = attempt.start_due = None
                    o = attempt.order
                    self._submit(_traced(attempt, started_report(o.ti_id, o.token, held)))

    def _finish(self, key: str, *, status: int | None, spawn_error: str | None = None) -> None:
        with self._lock:
            attempt = self._running.pop(key, None)
            if attempt is None:
                return
            attempt.exit_status = status
            held, attempt.start_held_at, attempt.start_due = attempt.start_held_at, None, None
            self._recent[key] = attempt
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            self._idle.notify_all()
            result = attempt.result
            offer = (
                attempt.report_final
                and attempt.kill_kind is None
                and result is not None
                and result.outcome is Outcome.SUCCESS
                and self._offers()
            )
        if attempt.report_final:
            report = final_report(
                ti_id=attempt.order.ti_id,
                token=attempt.order.token,
                result=attempt.result,
                status=status,
                kill_reason=attempt.kill_reason,
                spawn_error=spawn_error,
                started_at_unix=held or 0.0,
            )
            if offer:
                o = attempt.order
                report = replace(report, offers_slot=True, dag_id=o.dag_id, task_id=o.task_id)
            self._submit(_traced(attempt, report))
        attempt.done.set()
        self._publish()
        self._on_finished(attempt)

    # -- killing ------------------------------------------------------------------------
    def kill(self, ti_id: int, token: int, kind: KillKind, reason: str, *, grace_s: float) -> bool:
        """Begin killing one attempt; False when it does not run here."""
        with self._lock:
            attempt = self._running.get(attempt_key(ti_id, token))
            first = attempt is not None and self._mark(attempt, kind, reason, grace_s)
        if attempt is None:
            return False
        if first:
            self._terminate(attempt)
        return True

    def kill_all(self, kind: KillKind, reason: str, *, grace_s: float) -> int:
        """Begin killing every running attempt; returns how many run."""
        with self._lock:
            attempts = list(self._running.values())
            fresh = [a for a in attempts if self._mark(a, kind, reason, grace_s)]
        for attempt in fresh:
            self._terminate(attempt)
        return len(attempts)

    def _mark(self, attempt: Attempt, kind: KillKind, reason: str, grace_s: float) -> bool:
        """Record the kill (the first reason stands); True when SIGTERM must be sent now."""
        due = self._clock() + grace_s
        attempt.sigkill_at = due if attempt.sigkill_at is None else min(attempt.sigkill_at, due)
        if kind is KillKind.UNWANTED:
            attempt.report_final = False  # the scheduler no longer tracks this token
        if attempt.kill_kind is not None:
            return False
        attempt.kill_kind, attempt.kill_reason = kind, reason
        return True

    def _terminate(self, attempt: Attempt) -> None:
        reason = attempt.kill_reason or ""
        self._metrics.incr("worker.tasks.killed", reason=str(attempt.kill_kind))
        log.warning(
            "killing attempt %s (%s.%s): %s",
            attempt.key,
            attempt.order.dag_id,
            attempt.order.task_id,
            reason,
            extra={"event": "attempt_killed", "attempt": attempt.key},
        )
        append_log_line(attempt.log_path, reason)
        self._signal(attempt.key, signal.SIGTERM)

    def _signal(self, key: str, signum: int) -> None:
        try:
            self._spawner.signal(key, signum)
        except RetryableError as exc:
            log.error("cannot signal attempt %s: %s", key, exc)

    def tick(self) -> None:
        """Send STARTED reports held long enough, enforce execution timeouts and SIGKILL
        whatever outlived its grace."""
        now = self._clock()
        self._send_held_starts(now)
        to_term: list[Attempt] = []
        to_kill: list[str] = []
        with self._lock:
            for attempt in self._running.values():
                timeout = attempt.order.execution_timeout_s
                if (
                    timeout
                    and attempt.started_at is not None
                    and now >= attempt.started_at + timeout
                    and self._mark(
                        attempt,
                        KillKind.TIMEOUT,
                        f"Task timed out: execution_timeout of {timeout:g}s exceeded",
                        self.options.kill_grace_s,
                    )
                ):
                    to_term.append(attempt)
                if (
                    attempt.sigkill_at is not None
                    and not attempt.sigkilled
                    and now >= attempt.sigkill_at
                ):
                    attempt.sigkilled = True
                    to_kill.append(attempt.key)
        for attempt in to_term:
            self._terminate(attempt)
        for key in to_kill:
            self._signal(key, signal.SIGKILL)

    def abandon_all(self, why: str) -> None:
        """The fork server is gone: kill what it started by process group and end them all."""
        with self._lock:
            attempts = list(self._running.values())
        for attempt in attempts:
            if attempt.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(attempt.pid, signal.SIGKILL)
            self._finish(attempt.key, status=None, spawn_error=why)

    def _publish(self) -> None:
        with self._lock:
            running = len(self._running)
        self._metrics.gauge("worker.running_tasks", running)
        self._metrics.gauge("worker.open_slots", max(0, self.options.slots - running))


def _traced(attempt: Attempt, report: PendingReport) -> PendingReport:
    """The report with the attempt's trace context, so its scheduler span joins the trace."""
    return replace(report, traceparent=traceparent(attempt.span)) if attempt.span else report


def append_log_line(path: Path, text: str) -> None:
    """Add one line to an attempt's log, as the task's own lines look."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"[{stamp}] {{worker}} WARNING - {text}\n")
    except OSError as exc:
        log.warning("cannot write to the task log %s: %s", path, exc)
