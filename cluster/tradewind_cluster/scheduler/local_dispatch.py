"""An in-process Dispatcher for tests and `dags test`: runs attempts on a thread pool and
reports through the same ReportHandler the gRPC service uses. Bash tasks really run in bash;
other kinds succeed unless a test supplies its own `execute`."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tradewind.errors import StoreUnavailableError
from tradewind.scheduling.retries import AttemptOutcome
from tradewind.spec import TaskKind
from tradewind.states import TaskInstanceState
from tradewind_cluster.scheduler.dispatching import DispatchRequest, DispatchResult
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store.attempts import ReportResult

__all__ = ["LocalDispatcher", "Outcome", "run_bash"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How an attempt ended."""

    outcome: AttemptOutcome
    exit_code: int | None = None
    error: str | None = None
    followed: tuple[str, ...] | None = None


def run_bash(req: DispatchRequest) -> Outcome:
    """Run a BashOperator's command as written (no templating in this fake)."""
    fields = req.task.fields
    a = req.attempt
    env = {
        **os.environ,
        "TRADEWIND_TI_ID": str(a.ti_id),
        "TRADEWIND_ATTEMPT_TOKEN": str(a.token),
        "TRADEWIND_TRY_NUMBER": str(a.try_number),
    }
    proc = subprocess.run(
        ["bash", "-c", str(fields.get("bash_command", "true"))],
        capture_output=True,
        check=False,
        env=env,
    )
    skip = fields.get("skip_on_exit_code", 99)
    skips = set(skip) if isinstance(skip, list) else {skip}
    if proc.returncode == 0:
        return Outcome(outcome=AttemptOutcome.SUCCESS, exit_code=0)
    if proc.returncode in skips:
        return Outcome(outcome=AttemptOutcome.SKIPPED, exit_code=proc.returncode)
    return Outcome(
        outcome=AttemptOutcome.FAILED, exit_code=proc.returncode, error=proc.stderr.decode()[-500:]
    )


def _default(req: DispatchRequest) -> Outcome:
    if req.task.kind is TaskKind.BASH:
        return run_bash(req)
    return Outcome(outcome=AttemptOutcome.SUCCESS)


class LocalDispatcher:
    """Accepts every attempt (up to `slots` at once) and runs it on a thread."""

    def __init__(
        self,
        reports: ReportHandler,
        *,
        slots: int = 8,
        worker_id: str = "local",
        execute: Callable[[DispatchRequest], Outcome] = _default,
    ) -> None:
        self.reports = reports
        self.worker_id = worker_id
        self.slots = slots
        self._execute = execute
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="local-task")

    def queue_open(self) -> Mapping[str, int] | None:
        """Free slots, offered to every queue."""
        return None

    def capacity_changed(self) -> None:
        """Nothing cached: queue_open has no limit here."""

    def dispatch(self, requests: Sequence[DispatchRequest]) -> list[DispatchResult]:
        """Accept everything; each attempt runs on the pool."""
        for req in requests:
            self._pool.submit(self._run, req)
        return [
            DispatchResult(ti_id=r.attempt.ti_id, token=r.attempt.token, worker_id=self.worker_id)
            for r in requests
        ]

    def _run(self, req: DispatchRequest) -> None:
        a = req.attempt
        started = self._report(
            lambda: self.reports.started(a.ti_id, a.token, worker_id=self.worker_id)
        )
        # Refused as already running under this token: only this executor was given the token,
        # so an earlier try of this same report committed and its answer was lost (the store
        # went away mid-commit). Run it, as the worker agent's duplicate STARTED is accepted.
        if not started.accepted and started.state is not TaskInstanceState.RUNNING:
            return
        try:
            result = self._execute(req)
        except Exception as exc:  # noqa: BLE001 - a task's failure is its outcome
            result = Outcome(outcome=AttemptOutcome.FAILED, error=repr(exc))
        self._report(
            lambda: self.reports.finished(
                a.ti_id,
                a.token,
                outcome=result.outcome,
                exit_code=result.exit_code,
                error=result.error,
                followed=result.followed,
            )
        )

    def _report(self, send: Callable[[], ReportResult]) -> ReportResult:
        """Send a report until the store takes it, as a worker would (the store may be down)."""
        delay = 0.1
        while True:
            try:
                return send()
            except StoreUnavailableError:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        """Wait for running attempts and stop the pool."""
        self._pool.shutdown(wait=True)
