"""What the Scheduler service does with an attempt report (ReportAttempt), behind its RPC edge:
STARTED (and the XComs a new try clears), an outcome with the values the try returned, a
handed attempt the worker DECLINED, and, with eager dispatch, the Execute request a success
hands back. Every change goes through the ReportHandler's fenced store calls."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence

from tradewind.errors import BadInputError, StoreUnavailableError
from tradewind.scheduling.retries import AttemptOutcome
from tradewind.states import TaskInstanceState
from tradewind_cluster.scheduler.handover import handed_request, request_again
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store import attempts as store_attempts
from tradewind_cluster.store import eager as store_eager
from tradewind_cluster.store import workers
from tradewind_cluster.store import xcom as store_xcom
from tradewind_cluster.store.attempts import ReportResult
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.workers import AttemptScope
from tradewind_cluster.xcom import BaseXComBackend, DatabaseXComBackend
from tradewind_proto.v1 import scheduler_pb2, worker_pb2

__all__ = ["AttemptReports", "event_name"]

log = logging.getLogger(__name__)
_pb = scheduler_pb2
_OUTCOMES = {
    _pb.ATTEMPT_EVENT_SUCCESS: AttemptOutcome.SUCCESS,
    _pb.ATTEMPT_EVENT_FAILED: AttemptOutcome.FAILED,
    _pb.ATTEMPT_EVENT_SKIPPED: AttemptOutcome.SKIPPED,
}


def event_name(event: int) -> str:
    """ATTEMPT_EVENT_STARTED and the like; the number itself for one this version does not know."""
    known = event in _pb.AttemptEvent.values()
    return _pb.AttemptEvent.Name(_pb.AttemptEvent.ValueType(event)) if known else str(event)


class AttemptReports:
    """Applies attempt reports for one replica's Scheduler service."""

    def __init__(
        self, reports: ReportHandler, xcom_backend: BaseXComBackend, max_xcom_bytes: int
    ) -> None:
        self.reports = reports
        self.ctx = reports.ctx
        self.db = reports.ctx.db
        self.metrics = reports.ctx.metrics
        self.xcom_backend = xcom_backend
        self.max_xcom_bytes = max_xcom_bytes

    def apply(
        self, request: scheduler_pb2.AttemptReport, ti_id: int, token: int, worker_id: str
    ) -> tuple[ReportResult, list[worker_pb2.ExecuteRequest]]:
        """The report's result, and the attempts its reply hands the worker."""
        again: list[worker_pb2.ExecuteRequest] = []
        if request.event == _pb.ATTEMPT_EVENT_STARTED:
            result = self._started(ti_id, token, worker_id)
        elif request.event in _OUTCOMES:
            result, again = self._finished(request, ti_id, token, worker_id)
        elif request.event == _pb.ATTEMPT_EVENT_DECLINED:
            result = self._declined(ti_id, token, worker_id, request.error)
        else:
            unknown = event_name(request.event)
            result = ReportResult(accepted=False, reason=f"unknown attempt event {unknown}")
        return result, self._next_safely(result) if result.handed is not None else again

    def scope(self, ti_id: int, token: int) -> AttemptScope | None:
        """The task instance and attempt a report or call names (autocommit read)."""
        return self.db.read(lambda c: workers.attempt_scope(c, ti_id, token))

    # -- STARTED -----------------------------------------------------------------------
    def _started(self, ti_id: int, token: int, worker_id: str) -> ReportResult:
        result = self.reports.started(ti_id, token, worker_id=worker_id)
        if not result.accepted:
            scope = self.scope(ti_id, token)
            # The same worker resending STARTED after a lost reply: its code has not run yet.
            duplicate = (
                scope is not None
                and scope.is_current
                and scope.ti_state == "running"
                and scope.worker == worker_id
            )
            if not duplicate:
                return result
            result = ReportResult(accepted=True, reason="duplicate: already started")
        # Airflow clears a task instance's XComs when a new try starts executing.
        self.db.transaction(lambda c: self._clear_xcoms(c, ti_id, token))
        return result

    def _clear_xcoms(self, conn: Connection, ti_id: int, token: int) -> int:
        scope = workers.attempt_scope(conn, ti_id, token)
        if scope is None or not scope.is_current or scope.ti_state != "running":
            return 0
        return self.xcom_backend.clear(
            conn, dag_id=scope.dag_id, run_id=scope.run_id, task_id=scope.task_id
        )

    # -- outcomes ------------------------------------------------------------------------
    def _finished(
        self, request: scheduler_pb2.AttemptReport, ti_id: int, token: int, worker_id: str
    ) -> tuple[ReportResult, list[worker_pb2.ExecuteRequest]]:
        """The outcome applied, or recognised as one this worker sent before; a success sent
        again with its slot offered gets the requests its first delivery handed, once more."""
        outcome = _OUTCOMES[request.event]
        error = request.error or None
        plain = type(self.xcom_backend) is DatabaseXComBackend
        stored: list[tuple[str, str]] = []
        if outcome is AttemptOutcome.SUCCESS and request.xcoms:
            try:
                stored = self._returned(ti_id, token, request.xcoms)
            except BadInputError as exc:
                # as a failed push fails the task in Airflow: the try fails and may retry
                outcome, error = AttemptOutcome.FAILED, str(exc)
        result = self.reports.finished(
            ti_id,
            token,
            outcome=outcome,
            exit_code=request.exit_code,
            error=error,
            followed=list(request.followed) if request.has_followed else None,
            # the worker's own clock gives how long ago the try started, skew-free
            started_ago_s=(
                max(0.0, request.at_unix - request.started_at_unix)
                if request.started_at_unix
                else None
            ),
            worker_id=worker_id,
            # the database backend's values are written by the report's own statement
            returned=stored if plain else None,
            on_applied=(
                None if plain else functools.partial(self._keep_returned, ti_id, token, stored)
            ),
            offer=(request.dag_id, request.task_id) if request.offers_slot else None,
        )
        if result.accepted:
            return result, []
        scope = self.scope(ti_id, token)
        if (
            scope is None
            or not scope.is_current
            or scope.attempt_state != outcome.value
            or scope.worker != worker_id
        ):
            return result, []
        duplicate = ReportResult(accepted=True, reason="duplicate: already recorded")
        return duplicate, self._handed_again(ti_id, token, worker_id) if request.offers_slot else []

    def _handed_again(
        self, ti_id: int, token: int, worker_id: str
    ) -> list[worker_pb2.ExecuteRequest]:
        """A success sent again: the worker acts on one reply per report (the call it still
        waits on), so every earlier reply was lost and it never heard of what the delivery
        applied handed it. This reply carries the same requests once more, under the same
        tokens; a late copy of an earlier delivery gets them too, but its caller is gone and
        the reply goes nowhere. Putting them back to scheduled instead would run twice any
        attempt a late copy finds still queued while the worker already runs it. One whose
        request no longer builds (its task left the DAG) stays queued for the queued timeout
        to take back."""
        handed = self.db.read(lambda c: store_eager.handed_again(c, ti_id, token, worker_id))
        out = []
        for q, dispatched in handed:
            try:
                request = request_again(self.ctx, q, dispatched)
            except StoreUnavailableError:
                raise  # UNAVAILABLE: the worker sends the report again
            except Exception:
                log.exception("cannot build the handed attempt %s/%s again", q.ti_id, q.token)
                request = None
            if request is not None:
                out.append(request)
                self.metrics.incr("scheduler.tasks.eager_sent_again", queue=q.queue)
        return out

    def _keep_returned(
        self, ti_id: int, token: int, stored: Sequence[tuple[str, str]], conn: Connection,
        result: ReportResult,
    ) -> None:  # fmt: skip
        """In the report's transaction, for an XCom backend other than the database's: a try
        this report also started loses its older XComs (as STARTED clears them), and a success
        keeps what it returned."""
        start = result.attempt
        if result.started and start is not None and result.run_id is not None:
            scope = {"dag_id": start.dag_id, "run_id": result.run_id, "task_id": start.task_id}
            self.xcom_backend.clear(conn, **scope)
        if stored and result.state is TaskInstanceState.SUCCESS:
            store_xcom.store_returned(conn, ti_id, token, stored)

    def _returned(
        self, ti_id: int, token: int, entries: Sequence[scheduler_pb2.XComEntry]
    ) -> list[tuple[str, str]]:
        """The stored form of the values a task returned; BadInputError when one cannot be
        kept (not JSON, refused by the backend, too large). The default backend keeps the
        worker's JSON as it is, without reading the attempt's scope first."""
        plain = type(self.xcom_backend) is DatabaseXComBackend
        scope = None if plain else self.scope(ti_id, token)
        out: list[tuple[str, str]] = []
        for entry in entries:
            try:
                value = json.loads(entry.value)
            except ValueError:
                raise BadInputError(f"XCom {entry.key!r} is not JSON") from None
            if plain:
                text = entry.value
            elif scope is None:  # the report itself will be refused
                return []
            else:
                try:
                    text = self.xcom_backend.serialize_value(
                        value,
                        key=entry.key,
                        dag_id=scope.dag_id,
                        run_id=scope.run_id,
                        task_id=scope.task_id,
                    )
                except BadInputError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a user backend: its failure fails the try
                    raise BadInputError(
                        f"the XCom backend could not store {entry.key!r}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
            problem = store_xcom.check_value(entry.key, text, self.max_xcom_bytes)
            if problem is not None:
                raise BadInputError(problem)
            out.append((entry.key, text))
        return out

    # -- eager dispatch --------------------------------------------------------------------
    def _next_safely(self, result: ReportResult) -> list[worker_pb2.ExecuteRequest]:
        """The Execute request of the attempt a success report handed its worker. Should the
        DAG's version be gone meanwhile, or the request fail to build, the attempt goes back to
        scheduled (the loop queues it again) rather than wait for a worker that never hears of
        it; the report itself stays accepted."""
        q = result.handed
        assert q is not None
        why = "the DAG changed before the reply"
        try:
            request = handed_request(self.ctx, q)
        except Exception:
            log.exception("cannot build the handed attempt %s/%s", q.ti_id, q.token)
            request, why = None, "its request could not be built"
        if request is not None:
            return [request]
        reason = f"eager dispatch: {why}"
        now = self.ctx.clock()
        if self.db.transaction(
            lambda c: store_attempts.requeue_attempt(c, q.ti_id, q.token, reason=reason, now=now)
        ):
            self.reports.on_change()  # the loop queues it again
        return []

    def _declined(self, ti_id: int, token: int, worker_id: str, why: str) -> ReportResult:
        """A worker did not start an attempt a reply handed it: back to scheduled, as after an
        Execute it refused (accepted either way: nothing of it ran)."""
        reason = f"dispatch failed: worker {worker_id} declined it ({why or 'no reason given'})"
        now = self.ctx.clock()

        def requeue(conn: Connection) -> ReportResult:
            scope = workers.attempt_scope(conn, ti_id, token)
            if scope is None or not scope.is_current or scope.worker != worker_id:
                # not this worker's attempt (any more): nothing of it is this worker's to undo
                return ReportResult(accepted=False, reason="not an attempt handed to this worker")
            if not store_attempts.requeue_attempt(conn, ti_id, token, reason=reason, now=now):
                return ReportResult(accepted=True, reason="declined (no longer queued)")
            return ReportResult(accepted=True, reason="declined")

        result = self.db.transaction(requeue)
        if result.reason == "declined":
            self.metrics.incr("scheduler.tasks.requeued", reason="dispatch_failed")
            self.reports.on_change()
        return result
