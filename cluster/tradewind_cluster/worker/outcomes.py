"""How an attempt's end becomes its report: the task process's own result when it sent one, the
reason the agent killed it, and the exit status (a negative number is the killing signal)."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

from tradewind_cluster.worker.launch import ChildResult, Outcome
from tradewind_proto.v1 import common_pb2, scheduler_pb2

__all__ = [
    "PendingReport",
    "declined_report",
    "describe_status",
    "final_report",
    "started_report",
]

_EVENTS = {
    Outcome.SUCCESS: scheduler_pb2.ATTEMPT_EVENT_SUCCESS,
    Outcome.FAILED: scheduler_pb2.ATTEMPT_EVENT_FAILED,
    Outcome.SKIPPED: scheduler_pb2.ATTEMPT_EVENT_SKIPPED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingReport:
    """One report waiting to reach a scheduler."""

    ti_id: int
    token: int
    event: int  # scheduler_pb2.AttemptEvent
    exit_code: int = 0
    error: str = ""
    followed: tuple[str, ...] = ()
    has_followed: bool = False
    at_unix: float = 0.0
    xcoms: tuple[tuple[str, str], ...] = ()  # (key, JSON) returned, with a SUCCESS outcome
    started_at_unix: float = 0.0  # an outcome whose STARTED was never sent: when it started
    traceparent: str | None = None  # the attempt's task.execute span, sent as gRPC metadata
    # Eager dispatch: a success that offers its slot for an attempt the reply may carry
    offers_slot: bool = False
    dag_id: str = ""
    task_id: str = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The trace context the report carries, so the scheduler's span continues the trace."""
        return (("traceparent", self.traceparent),) if self.traceparent else ()

    @property
    def final(self) -> bool:
        """True for the report that ends the attempt."""
        return self.event != scheduler_pb2.ATTEMPT_EVENT_STARTED

    def to_proto(self, worker_id: str) -> scheduler_pb2.AttemptReport:
        """The wire message."""
        return scheduler_pb2.AttemptReport(
            attempt=common_pb2.AttemptRef(ti_id=self.ti_id, token=self.token),
            worker_id=worker_id,
            event=self.event,  # type: ignore[arg-type]
            exit_code=self.exit_code,
            error=self.error,
            followed=list(self.followed),
            has_followed=self.has_followed,
            at_unix=self.at_unix,
            xcoms=[scheduler_pb2.XComEntry(key=k, value=v) for k, v in self.xcoms],
            started_at_unix=self.started_at_unix,
            offers_slot=self.offers_slot,
            dag_id=self.dag_id,
            task_id=self.task_id,
        )


def declined_report(ti_id: int, token: int, reason: str) -> PendingReport:
    """The report of an attempt a reply handed this worker that it did not start."""
    return PendingReport(
        ti_id=ti_id,
        token=token,
        event=scheduler_pb2.ATTEMPT_EVENT_DECLINED,
        error=reason,
        at_unix=time.time(),
    )


def describe_status(status: int | None) -> str:
    """How the task process ended: `exited with code 3`, `was killed by signal SIGKILL`."""
    if status is None:
        return "never ran"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by signal {name}"
    return f"exited with code {status}"


def started_report(ti_id: int, token: int, at_unix: float) -> PendingReport:
    """The report sent when user code is about to start."""
    return PendingReport(
        ti_id=ti_id, token=token, event=scheduler_pb2.ATTEMPT_EVENT_STARTED, at_unix=at_unix
    )


def final_report(
    *,
    ti_id: int,
    token: int,
    result: ChildResult | None,
    status: int | None,
    kill_reason: str | None,
    spawn_error: str | None = None,
    at_unix: float | None = None,
    started_at_unix: float = 0.0,
) -> PendingReport:
    """The final report. A success or skip the task process reported stands even when a kill
    raced it; otherwise the attempt failed, with the kill reason first and the exit status."""
    at = time.time() if at_unix is None else at_unix
    exit_code = 0 if status is None else status
    if result is not None and result.outcome is not Outcome.FAILED:
        followed = result.followed
        return PendingReport(
            ti_id=ti_id,
            token=token,
            event=_EVENTS[result.outcome],
            exit_code=exit_code,
            error=result.error or "",
            followed=followed or (),
            has_followed=followed is not None,
            at_unix=at,
            xcoms=result.xcoms if result.outcome is Outcome.SUCCESS else (),
            started_at_unix=started_at_unix,
        )
    parts = [p for p in (kill_reason, spawn_error) if p]
    if result is not None and result.error:
        parts.append(result.error)
    if result is None and spawn_error is None:
        parts.append(f"the task process {describe_status(status)} without reporting an outcome")
    elif status is not None and (kill_reason or status < 0):
        parts.append(f"the task process {describe_status(status)}")
    return PendingReport(
        ti_id=ti_id,
        token=token,
        event=scheduler_pb2.ATTEMPT_EVENT_FAILED,
        exit_code=exit_code,
        error="; ".join(parts),
        at_unix=at,
        started_at_unix=started_at_unix,
    )
