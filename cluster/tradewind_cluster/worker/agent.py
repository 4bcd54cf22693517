"""One worker agent as a process: the fork server (started first, before any gRPC object), the
Worker gRPC server, /health and /metrics, registration and heartbeats with failover between
schedulers, the lease that kills every attempt when no heartbeat succeeded for lease_s, the
report outbox, log shipping, and a graceful drain on stop."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tradewind import __version__
from tradewind.errors import RetryableError
from tradewind_cluster.config import Settings, advertise_host
from tradewind_cluster.observability import (
    HealthState,
    HealthSync,
    Metrics,
    build_metrics,
    serve_observability,
)
from tradewind_cluster.rpc.server import RpcServer
from tradewind_cluster.worker.executor import Attempt, Executor, KillKind
from tradewind_cluster.worker.forkserver import ForkServer
from tradewind_cluster.worker.heartbeats import Heartbeats, WorkerIdentity
from tradewind_cluster.worker.launch import Launch, SchedulerAccess, attempt_key
from tradewind_cluster.worker.link import SchedulerLink
from tradewind_cluster.worker.logs import LogShipper
from tradewind_cluster.worker.options import WorkerOptions, worker_rpc_options
from tradewind_cluster.worker.outcomes import PendingReport
from tradewind_cluster.worker.reporter import Reporter
from tradewind_cluster.worker.service import WorkerService
from tradewind_proto.v1 import scheduler_pb2

__all__ = ["WorkerAgent", "WorkerPorts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPorts:
    """Ports this worker actually bound (0 in config means "pick a free one")."""

    grpc: int
    health: int
    metrics: int | None


_REPORT_SENDERS = 4  # reports of different attempts go out in parallel


def _task_env(environ: dict[str, str], trace_env: dict[str, str]) -> dict[str, str]:
    # Configuration (and its secrets) stays with the agent; the trace context goes along.
    env = {
        k: v
        for k, v in environ.items()
        if not k.startswith("TRADEWIND__") and k not in ("TRACEPARENT", "TRACESTATE")
    }
    env.update(trace_env)
    return env


class WorkerAgent:
    """Wires a worker together: `start()` then `wait()`; `request_stop()` from a signal handler."""

    def __init__(
        self, settings: Settings, options: WorkerOptions, *, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.options = options
        self.worker_id = f"{options.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.hostname = socket.gethostname()
        self.rpc = worker_rpc_options(settings)
        self.metrics = metrics or build_metrics(settings.metrics)
        self.health = HealthState()
        self.draining = False
        self._halt = threading.Event()  # background threads stop
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._forkserver_lost = False
        self.forkserver = ForkServer(self._on_fork_message, direct_bash=self.options.direct_bash)
        # What every task's environment starts from, taken once: copying os.environ decodes
        # every variable, per attempt.
        self._base_env = _task_env(dict(os.environ), {})

    # -- start / stop ---------------------------------------------------------------------
    def start(self) -> WorkerPorts:
        """Start the fork server first, then everything that uses gRPC, then the threads."""
        self.forkserver.start()
        self.link = SchedulerLink(self.options.schedulers, self.rpc)
        timeout = self.rpc.call_timeout_s
        self.reporter = Reporter(
            self.link,
            self.worker_id,
            on_refused=self._on_refused,
            on_accepted=self._on_accepted,
            call_timeout_s=timeout,
        )
        self.shipper = LogShipper(
            self.link, max_message_bytes=self.rpc.max_message_bytes, call_timeout_s=timeout
        )
        self.executor = Executor(
            self.options,
            self.forkserver,
            submit_report=self.reporter.submit,
            on_finished=self._on_finished,
            metrics=self.metrics,
            offers=lambda: self.refusal() is None,
        )
        identity = WorkerIdentity(
            worker_id=self.worker_id,
            name=self.options.name,
            hostname=self.hostname,
            address="",  # known once the server is bound, before the first registration
            queues=self.options.queues,
            slots=self.options.slots,
            version=__version__,
        )
        self.heartbeats = Heartbeats(
            self.link,
            identity,
            self.executor,
            options=self.options,
            metrics=self.metrics,
            health=self.health,
            draining=lambda: self.draining,
            call_timeout_s=timeout,
        )
        self.service = WorkerService(self)
        self.rpc_server = RpcServer(self.rpc, [self.service.add_to], on_refused=self._refused_call)
        self.endpoints = serve_observability(
            self.settings, health=self.health, registry=self.metrics.prometheus_registry
        )
        self.ports = WorkerPorts(
            grpc=self.rpc_server.port,
            health=self.endpoints.health_port,
            metrics=self.endpoints.metrics_port,
        )
        host = advertise_host(self.settings.rpc)
        self.heartbeats.identity = replace(identity, address=f"{host}:{self.ports.grpc}")
        self._register_health()
        self.health_sync = HealthSync(self.health, self.rpc_server.set_serving).start()
        self._spawn("worker-heartbeat", lambda: self.heartbeats.run(self._halt))
        self._spawn("worker-monitor", self._monitor_loop)
        for i in range(_REPORT_SENDERS):
            self._spawn(f"worker-reporter-{i}", self.reporter.run)
        self._spawn(
            "worker-logs", lambda: self.shipper.run(self._halt, self.options.log_ship_interval_s)
        )
        self._spawn("worker-stopper", self._stop_when_requested)
        log.info(
            "worker %s started: grpc=%s health=%s queues=%s slots=%s schedulers=%s",
            self.worker_id,
            self.ports.grpc,
            self.ports.health,
            ",".join(self.options.queues),
            self.options.slots,
            ",".join(self.options.schedulers),
            extra={"event": "worker_started", "worker": self.worker_id},
        )
        return self.ports

    def request_stop(self) -> None:
        """Begin a graceful stop (safe from a signal handler: it only sets a flag)."""
        self._stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until fully stopped (or the timeout passed); True when stopped."""
        return self._stopped.wait(timeout)

    def _stop_when_requested(self) -> None:
        while not self._stop_requested.wait(0.2):
            if self._halt.is_set():  # stop() was called directly
                return
        self.stop()

    def stop(self) -> None:
        """Drain: take no more work, let attempts finish within shutdown_grace_s, kill the rest,
        deliver their reports, then close everything."""
        with self._stop_lock:
            if not self._stopped.is_set():
                self._drain_and_close()

    def _drain_and_close(self) -> None:
        opts = self.options
        self.draining = True
        log.info("draining: no new attempts; waiting up to %gs", opts.shutdown_grace_s)
        self.heartbeats.beat_once()  # tell the scheduler at once that we are draining
        if not self.executor.wait_idle(opts.shutdown_grace_s):
            reason = (
                "killed: the worker is shutting down "
                f"(shutdown_grace_s {opts.shutdown_grace_s:g}s passed)"
            )
            self.executor.kill_all(KillKind.SHUTDOWN, reason, grace_s=opts.kill_grace_s)
            self.executor.wait_idle(opts.kill_grace_s + 5)
        if not self.reporter.flush(self.rpc.call_timeout_s * 2):
            log.error("stopping with %s undelivered reports", self.reporter.pending())
        self.shipper.ship_once()
        self._halt.set()
        self.reporter.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(10)
        self.health_sync.stop()
        self.rpc_server.stop(grace_s=1.0)
        self.endpoints.stop()
        self.forkserver.stop()
        self.link.close()
        self.metrics.close()
        log.info("worker %s stopped", self.worker_id, extra={"event": "worker_stopped"})
        self._stopped.set()

    # -- what the service asks ------------------------------------------------------------
    def refusal(self) -> str | None:
        """Why no new attempt can start now, or None."""
        if self.draining or self._stop_requested.is_set():
            return "worker is draining (shutting down)"
        if self._forkserver_lost:
            return "worker cannot start task processes (its fork server is being restarted)"
        if not self.heartbeats.registered or not self.heartbeats.lease.held():
            return "worker holds no lease: no scheduler answered its heartbeats recently"
        return None

    def launch_for(self, attempt: Attempt, trace_env: dict[str, str]) -> Launch:
        """The launch order of an admitted attempt."""
        o, sec = attempt.order, self.rpc.security
        return Launch(
            ti_id=o.ti_id,
            token=o.token,
            dag_id=o.dag_id,
            run_id=o.run_id,
            task_id=o.task_id,
            try_number=o.try_number,
            logical_date=o.logical_date,
            fileloc=o.fileloc,
            file_hash=o.file_hash,
            task_json=o.task_json,
            context_json=o.context_json,
            queue=o.queue,
            log_path=str(attempt.log_path),
            dags_folder=str(self.options.dags_folder),
            default_timezone=self.options.default_timezone,
            max_xcom_bytes=self.options.max_xcom_bytes,
            hostname=self.hostname,
            env={
                **self._base_env,
                **trace_env,
                # The attempt's identity, for ledgers and tools inside the task.
                "TRADEWIND_TI_ID": str(o.ti_id),
                "TRADEWIND_ATTEMPT_TOKEN": str(o.token),
                "TRADEWIND_TRY_NUMBER": str(o.try_number),
            },
            access=SchedulerAccess(
                addresses=self.link.ordered(),
                token=sec.token,
                tls_ca=None if sec.tls_ca is None else str(sec.tls_ca),
                tls_cert=None if sec.tls_cert is None else str(sec.tls_cert),
                tls_key=None if sec.tls_key is None else str(sec.tls_key),
                max_message_bytes=self.rpc.max_message_bytes,
                call_timeout_s=self.rpc.call_timeout_s,
            ),
        )

    def track_logs(self, attempt: Attempt) -> None:
        """Ship this attempt's log while it runs (from where its part of the file starts)."""
        o = attempt.order
        attempt.log_start = self.shipper.track(
            o.key, ti_id=o.ti_id, token=o.token, try_number=o.try_number, path=attempt.log_path
        )

    def _monitor_loop(self) -> None:
        while not self._halt.wait(self.options.tick_s):
            try:
                self.heartbeats.check_lease()
                self.executor.tick()
                if self._forkserver_lost:
                    self._restart_forkserver()
            except Exception:  # the monitor must outlive any one failure
                log.exception("worker monitor pass failed")

    # -- callbacks ------------------------------------------------------------------------
    def _on_fork_message(self, message: dict[str, Any]) -> None:
        if message.get("ev") == "server_exit":
            log.error("the fork server exited; ending its attempts and restarting it")
            self._forkserver_lost = True
            self.executor.abandon_all("the worker's fork server died")
            return
        self.executor.handle(message)

    def _restart_forkserver(self) -> None:
        self.forkserver.stop(timeout_s=1.0)  # reap the dead one
        self.forkserver = ForkServer(self._on_fork_message, direct_bash=self.options.direct_bash)
        self.forkserver.start()
        self.executor.use_spawner(self.forkserver)
        log.info("fork server restarted (pid %s)", self.forkserver.pid)
        self._forkserver_lost = False

    def _notify_started(self, report: PendingReport, message: dict[str, Any]) -> None:
        if report.final:
            return
        try:
            self.forkserver.notify(attempt_key(report.ti_id, report.token), message)
        except RetryableError as exc:
            log.warning("cannot reach the task process of %s: %s", report.ti_id, exc)

    def _on_accepted(self, report: PendingReport, reply: scheduler_pb2.AttemptReportReply) -> None:
        self._notify_started(report, {"started": True})
        for request in reply.next:  # eager dispatch: the next attempt, for the slot offered
            self.service.execute_handed(request)

    def _on_refused(self, report: PendingReport, reason: str) -> None:
        self._notify_started(report, {"started": False, "reason": reason})
        log.warning(
            "scheduler refused the report of attempt %s/%s: %s",
            report.ti_id,
            report.token,
            reason,
            extra={"event": "report_refused", "attempt": report.ti_id},
        )
        self.executor.kill(
            report.ti_id,
            report.token,
            KillKind.REFUSED,
            f"killed: the scheduler refused this attempt's report ({reason})",
            grace_s=self.options.kill_grace_s,
        )

    def _on_finished(self, attempt: Attempt) -> None:
        self.shipper.finish(attempt.key)
        if attempt.span is not None:
            attempt.span.end()
        log.info(
            "attempt %s ended (%s)",
            attempt.key,
            attempt.result.outcome.value if attempt.result else f"status {attempt.exit_status}",
            extra={"event": "attempt_ended", "attempt": attempt.key},
        )

    def _refused_call(self, method: str) -> None:
        self.metrics.incr("rpc.errors", method=method, code="UNAUTHENTICATED")

    # -- plumbing -------------------------------------------------------------------------
    def _register_health(self) -> None:
        self.health.set_detail("kind", "worker")
        self.health.set_detail("worker_id", self.worker_id)
        self.health.set_detail("version", __version__)
        self.health.register("scheduler", threshold_s=self.options.lease_s)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
