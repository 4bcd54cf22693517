"""One scheduler replica as a process: its member row and heartbeat thread, the gRPC server
(peer pings, health), /health and /metrics, the DAG parser thread and the loop thread.

A replica that finds itself declared dead exits at once with status 3; its supervisor starts
it again under a new identity. It never acts on a stale identity: before an iteration that
follows a long pause, it heartbeats synchronously first."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from tradewind import __version__
from tradewind_cluster.config import Settings, advertise_host
from tradewind_cluster.observability import (
    HealthState,
    HealthSync,
    build_metrics,
    serve_observability,
)
from tradewind_cluster.parsing.processor import (
    DagFileProcessor,
    FileOutcome,
    ParseReport,
    ProcessorOptions,
)
from tradewind_cluster.rpc.scheduler_service import SchedulerService, SchedulerServiceOptions
from tradewind_cluster.rpc.server import RpcOptions, RpcServer, rpc_options_from
from tradewind_cluster.scheduler.context import SchedulerContext, SchedulerOptions
from tradewind_cluster.scheduler.dispatching import Dispatcher
from tradewind_cluster.scheduler.grpc_dispatch import GrpcDispatcher
from tradewind_cluster.scheduler.local_dispatch import LocalDispatcher
from tradewind_cluster.scheduler.loop import SchedulerLoop
from tradewind_cluster.scheduler.membership import Membership, MembershipOptions, PeerService
from tradewind_cluster.scheduler.reports import ReportHandler
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database
from tradewind_cluster.xcom import load_xcom_backend

__all__ = ["EXIT_DECLARED_DEAD", "ReplicaPorts", "SchedulerReplica", "rpc_options"]

log = logging.getLogger(__name__)
EXIT_DECLARED_DEAD = 3
_PARSE_TIMEOUT = "DagFileTimeout:"  # how the processor words a parse it killed


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaPorts:
    """Ports this replica actually bound (0 in config means "pick a free one")."""

    grpc: int
    health: int
    metrics: int | None


def rpc_options(settings: Settings, port: int) -> RpcOptions:
    """gRPC options for a scheduler (see rpc.server.rpc_options_from)."""
    return rpc_options_from(settings, port)


def _exit_declared_dead(reason: str) -> None:
    log.critical("stopping at once: %s", reason, extra={"event": "declared_dead"})
    logging.shutdown()
    os._exit(EXIT_DECLARED_DEAD)


class SchedulerReplica:
    """Wires a replica together; `start()` then `wait()`, or `stop()` from a signal handler."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        name: str | None = None,
        dispatcher: Callable[[ReportHandler], Dispatcher] | None = None,
        parse: bool = True,
        on_declared_dead: Callable[[str], None] = _exit_declared_dead,
    ) -> None:
        self.settings = settings
        self.db = db
        host = socket.gethostname()
        self.name = name or host
        self.member_id = f"{self.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.hostname = host
        self.metrics = build_metrics(settings.metrics)
        options = SchedulerOptions.from_settings(settings)
        self.ctx = SchedulerContext(
            db=db, member_id=self.member_id, options=options, metrics=self.metrics
        )
        self.reports = ReportHandler(self.ctx)
        self.xcom_backend = load_xcom_backend(settings.core.xcom_backend)  # ConfigError at start-up
        self.dispatcher = (dispatcher or self._default_dispatcher)(self.reports)
        self.loop = SchedulerLoop(
            self.ctx,
            self.dispatcher,
            watch_peers=self._watch_peers,
            store_ok_for=self._store_ok_for,
        )
        self.reports.on_change = self._attempt_ended
        self._parser = (
            DagFileProcessor(db, ProcessorOptions.from_settings(settings), self.member_id)
            if parse
            else None
        )
        self._on_declared_dead = on_declared_dead
        self.health = HealthState()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ports: ReplicaPorts | None = None
        self.membership: Membership | None = None

    # -- start / stop ------------------------------------------------------------------
    def start(self) -> ReplicaPorts:
        """Bind servers, register the member row, start heartbeat, parser and loop threads."""
        s = self.settings
        rpc = rpc_options(s, s.rpc.scheduler_port)
        service = SchedulerService(
            self.reports, SchedulerServiceOptions.from_settings(s), self.xcom_backend
        )
        self.rpc_server = RpcServer(
            rpc, [self._add_peer_service, service.add_to], on_refused=self._count_refused
        )
        self.endpoints = serve_observability(
            s, health=self.health, registry=self.metrics.prometheus_registry
        )
        self.ports = ReplicaPorts(
            grpc=self.rpc_server.port,
            health=self.endpoints.health_port,
            metrics=self.endpoints.metrics_port,
        )
        host = advertise_host(s.rpc)
        self.db.transaction(
            lambda c: members.register_member(
                c,
                member_id=self.member_id,
                name=self.name,
                hostname=self.hostname,
                pid=os.getpid(),
                version=__version__,
                grpc_address=f"{host}:{self.ports.grpc}",  # type: ignore[union-attr]
                health_address=f"{host}:{self.ports.health}",  # type: ignore[union-attr]
                metrics_address=f"{host}:{self.ports.metrics}" if self.ports.metrics else None,  # type: ignore[union-attr]
            )
        )
        self._register_health()
        self.membership = Membership(
            self.db,
            self.member_id,
            MembershipOptions(
                heartbeat_interval_s=s.scheduler.heartbeat_interval_s,
                health_threshold_s=s.scheduler.health_threshold_s,
                peer_ping_interval_s=s.scheduler.peer_ping_interval_s,
            ),
            rpc,
            on_self_dead=self._on_declared_dead,
            progress=lambda: self.loop.progress_at,
            on_beat=self._on_heartbeat,
        )
        self.membership.start()
        self.health_sync = HealthSync(self.health, self.rpc_server.set_serving).start()
        self._spawn("scheduler-loop", self._run_loop)
        if self._parser is not None:
            self._spawn("dag-parser", self._run_parser)
        log.info(
            "scheduler %s started: grpc=%s health=%s metrics=%s",
            self.member_id,
            self.ports.grpc,
            self.ports.health,
            self.ports.metrics,
            extra={"event": "scheduler_started", "member": self.member_id},
        )
        return self.ports

    def stop(self) -> None:
        """Graceful stop: finish the iteration, leave the membership (our queued attempts are
        adopted by peers at once), close servers."""
        self._stop.set()
        self.loop.waker.wake()
        for t in self._threads:
            t.join(30)
        if self.membership is not None:
            self.membership.stop()
        try:
            self.db.transaction(lambda c: members.mark_stopped(c, self.member_id))
        except Exception:  # noqa: BLE001 - the store may be gone; peers will declare us dead
            log.warning("could not mark this replica stopped", extra={"event": "stop_unrecorded"})
        self.health_sync.stop()
        self.rpc_server.stop()
        self.endpoints.stop()
        close = getattr(self.dispatcher, "close", None)
        if close is not None:
            close()
        self.loop.close()
        self.metrics.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() was called (or the timeout passed); True when stopped."""
        return self._stop.wait(timeout)

    def _default_dispatcher(self, reports: ReportHandler) -> Dispatcher:
        if self.settings.scheduler.executor == "local":
            # in-process attempts are recorded as run by this replica
            return LocalDispatcher(
                reports, slots=self.settings.worker.slots, worker_id=self.member_id
            )
        return GrpcDispatcher.for_replica(self.ctx, self.settings, rpc_options(self.settings, 0))

    def _parse_once(self, parser: DagFileProcessor) -> ParseReport:
        report = parser.run_once(self.ctx.clock())
        self._emit_parse(report)
        return report

    def _emit_parse(self, report: ParseReport) -> None:
        """Airflow's dag_processing metrics for one parse pass (file names as their stems)."""
        m = self.metrics
        if report.files_parsed:
            m.gauge("dag_processing.total_parse_time", report.total_parse_time_s)
        for f in report.files:
            if f.outcome is FileOutcome.PARSED:
                m.timing("dag_processing.last_duration", f.duration_s, file=Path(f.path).stem)
            if f.error is not None and f.error.startswith(_PARSE_TIMEOUT):
                m.incr("dag_processing.processor_timeouts")
        if report.import_errors_total is not None:
            m.gauge("dag_processing.import_errors", report.import_errors_total)
        if report.dag_bag_size is not None:
            m.gauge("dagbag_size", report.dag_bag_size)

    # -- threads -----------------------------------------------------------------------
    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _run_loop(self) -> None:
        self.loop.run_forever(
            self._stop, guard=self._guard_identity, on_iteration=self._on_iteration
        )

    def _run_parser(self) -> None:
        parser = self._parser
        assert parser is not None
        cap_s = min(self.settings.scheduler.parse_interval_s, 5.0)
        while not self._stop.is_set():
            try:
                busy = bool(self._parse_once(parser).files)
                self.health.beat("parser")
            except Exception as exc:
                # only the exception type in /health: its text may carry a secret
                self.health.set_failure("parser", type(exc).__name__)
                self.metrics.incr("dag_file_refresh_error")
                log.exception("DAG parsing pass failed", extra={"event": "parse_failed"})
                # A failed pass may keep its leases on due files, which idle_s counts as
                # due now: wait the whole cap, not a moment, before trying again.
                self._stop.wait(cap_s)
                continue
            if not busy:  # files were due: look again at once, more may be due
                self._stop.wait(self._parser_idle_s(parser, cap_s))

    def _parser_idle_s(self, parser: DagFileProcessor, cap_s: float) -> float:
        try:
            return parser.idle_s(self.ctx.clock(), cap_s)
        except Exception:  # noqa: BLE001 - the store may be down: the next pass will say so
            return cap_s

    # -- health ------------------------------------------------------------------------
    def _register_health(self) -> None:
        s = self.settings.scheduler
        self.health.set_detail("kind", "scheduler")
        self.health.set_detail("member_id", self.member_id)
        self.health.set_detail("version", __version__)
        self.health.register("heartbeat", threshold_s=s.health_threshold_s)
        self.health.register("loop", threshold_s=s.loop_stall_threshold_s)
        if self._parser is not None:
            self.health.register("parser", threshold_s=s.parse_interval_s + 2 * s.parse_timeout_s)

    def _on_heartbeat(self, ok: bool, error: str | None) -> None:
        if ok:
            self.health.beat("heartbeat")
            self.health.beat("store")
            self.metrics.incr("scheduler_heartbeat")
        else:
            self.health.set_failure("store", error or "heartbeat failed")
            self.metrics.incr("scheduler_job_heartbeat_failure")

    def _on_iteration(self) -> None:
        if self.loop.store_ok:
            self.health.beat("loop")
        else:
            self.health.set_failure("loop", self.loop.last_error or "store unavailable")

    def _guard_identity(self) -> None:
        """Before acting: if our last good heartbeat is old (a pause, a partition), heartbeat
        now; a 'dead' verdict ends the process before the iteration runs."""
        m = self.membership
        if m is None:
            return
        last = m.last_heartbeat_ok
        if (
            last is None
            or time.monotonic() - last > self.settings.scheduler.heartbeat_interval_s * 3
        ):
            m.beat_once()

    def _store_ok_for(self) -> float:
        """Seconds our heartbeats have succeeded without a gap (0 while the store is down)."""
        since = self.membership.store_ok_since if self.membership is not None else None
        return 0.0 if since is None else time.monotonic() - since

    def _attempt_ended(self) -> None:
        """A report ended an attempt here: its slot is free and its run is due for examination."""
        self.dispatcher.capacity_changed()
        self.loop.waker.wake()

    def _watch_peers(self) -> list[str]:
        return self.membership.watch_peers_once() if self.membership is not None else []

    def _add_peer_service(self, server: grpc.Server) -> None:
        PeerService(self.member_id, lambda: "alive").add_to(server)

    def _count_refused(self, method: str) -> None:
        self.metrics.incr("rpc.errors", method=method, code="UNAUTHENTICATED")
