"""A fake Scheduler service on a real gRPC server, for testing the real worker process: it records
registrations, heartbeats, reports and log chunks, stores XComs and Variables, and can answer
heartbeats with `unwanted`, refuse reports, forget the worker, or stop answering."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from tests.support.processes import Proc, wait_until
from tradewind.dag import DAG
from tradewind.serialization import dag_to_spec, spec_to_dict
from tradewind_cluster.rpc.security import RpcSecurity, call_metadata
from tradewind_cluster.rpc.server import RpcOptions, RpcServer, open_channel
from tradewind_proto.v1 import (
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

__all__ = [
    "TOKEN",
    "FakeScheduler",
    "WorkerClient",
    "execute_request",
    "file_hash",
    "start_worker",
    "task_entry",
    "wait_registered",
    "worker_command",
]

TOKEN = "test-shared-token"
_PORTS = re.compile(r"worker (\S+) running: grpc=(\d+) health=(\d+)")


@dataclass
class _Run:
    dag_id: str
    run_id: str
    task_id: str


@dataclass
class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Answers a worker as a scheduler would; every field is safe to read under `lock`."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    registrations: list[scheduler_pb2.RegisterWorkerRequest] = field(default_factory=list)
    heartbeats: list[scheduler_pb2.WorkerHeartbeatRequest] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)  # time.time() of answered beats
    reports: list[scheduler_pb2.AttemptReport] = field(default_factory=list)
    chunks: list[scheduler_pb2.LogChunk] = field(default_factory=list)
    xcoms: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    attempts: dict[int, _Run] = field(default_factory=dict)
    unwanted: set[tuple[int, int]] = field(default_factory=set)
    refuse: dict[tuple[int, int], str] = field(default_factory=dict)
    # eager dispatch: attempts the reply to an attempt's SUCCESS hands the worker
    hand: dict[tuple[int, int], list[worker_pb2.ExecuteRequest]] = field(default_factory=dict)
    silent: bool = False
    forget_worker: bool = False
    server: RpcServer | None = None

    # -- test controls --------------------------------------------------------------------
    def start(self, port: int = 0, token: str | None = TOKEN) -> int:
        """Serve on a free port (or `port`); returns the port."""
        options = RpcOptions(port=port, security=RpcSecurity(token=token))
        self.server = RpcServer(
            options, [lambda s: scheduler_pb2_grpc.add_SchedulerServicer_to_server(self, s)]
        )
        return self.server.port

    def stop(self) -> None:
        """Stop serving at once."""
        if self.server is not None:
            self.server.server.stop(0).wait(5)

    def expect(self, ti_id: int, dag_id: str, run_id: str, task_id: str) -> None:
        """Tell the fake which task instance an attempt id belongs to (for XComs)."""
        with self.lock:
            self.attempts[ti_id] = _Run(dag_id=dag_id, run_id=run_id, task_id=task_id)

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `check` (under the lock) until truthy."""

        def locked() -> Any:
            with self.lock:
                return check()

        return wait_until(locked, timeout, what, interval=0.02)

    def reports_for(self, ti_id: int) -> list[scheduler_pb2.AttemptReport]:
        """Reports received for one attempt id, in order."""
        with self.lock:
            return [r for r in self.reports if r.attempt.ti_id == ti_id]

    def final_report(self, ti_id: int, timeout: float = 15) -> scheduler_pb2.AttemptReport:
        """Wait for the attempt's final report."""
        return self.wait(
            lambda: next(
                (
                    r
                    for r in self.reports
                    if r.attempt.ti_id == ti_id and r.event != scheduler_pb2.ATTEMPT_EVENT_STARTED
                ),
                None,
            ),
            timeout,
            f"the final report of attempt {ti_id}",
        )

    def log_text(self, ti_id: int) -> str:
        """Every shipped log chunk of an attempt, in order."""
        with self.lock:
            got = sorted((c.seq, c.data) for c in self.chunks if c.attempt.ti_id == ti_id)
        return "".join(data for _, data in got)

    # -- the service ----------------------------------------------------------------------
    def _gate(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            silent = self.silent
        if silent:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake scheduler is not answering")

    def RegisterWorker(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        with self.lock:
            self.registrations.append(request)
            self.answered_at.append(time.time())
            self.forget_worker = False
            self.lock.notify_all()
        return scheduler_pb2.RegisterWorkerReply(scheduler_id="fake-1")

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        with self.lock:
            self.heartbeats.append(request)
            running = {(r.ti_id, r.token) for r in request.running}
            unwanted = [common_pb2.AttemptRef(ti_id=t, token=k) for t, k in self.unwanted & running]
            known = not self.forget_worker
            self.answered_at.append(time.time())
            self.lock.notify_all()
        return scheduler_pb2.WorkerHeartbeatReply(unwanted=unwanted, known=known)

    def ReportAttempt(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        key = (request.attempt.ti_id, request.attempt.token)
        with self.lock:
            self.reports.append(request)
            reason = self.refuse.get(key)
            if reason is None and request.event == scheduler_pb2.ATTEMPT_EVENT_SUCCESS:
                run = self._run(request.attempt)  # returned values travel with the outcome
                for entry in request.xcoms:
                    self.xcoms[(run.dag_id, run.run_id, run.task_id, entry.key)] = entry.value
            handed = (
                self.hand.pop(key, [])
                if reason is None and request.event == scheduler_pb2.ATTEMPT_EVENT_SUCCESS
                else []
            )
            self.lock.notify_all()
        return scheduler_pb2.AttemptReportReply(
            accepted=reason is None, reason=reason or "", next=handed
        )

    def _run(self, ref: common_pb2.AttemptRef) -> _Run:
        return self.attempts.get(ref.ti_id) or _Run(dag_id="?", run_id="?", task_id="?")

    def PushXCom(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        with self.lock:
            run = self._run(request.attempt)
            self.xcoms[(run.dag_id, run.run_id, run.task_id, request.key)] = request.value
        return scheduler_pb2.XComPushReply(accepted=True)

    def PullXCom(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        with self.lock:
            run = self._run(request.attempt)
            dag_id, run_id = request.dag_id or run.dag_id, request.run_id or run.run_id
            values = []
            for task_id in request.task_ids:
                found = self.xcoms.get((dag_id, run_id, task_id, request.key))
                values.append(
                    scheduler_pb2.XComValue(
                        task_id=task_id, found=found is not None, value=found or ""
                    )
                )
        return scheduler_pb2.XComPullReply(values=values)

    def GetVariable(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        with self.lock:
            value = self.variables.get(request.key)
        return scheduler_pb2.VariableReply(found=value is not None, value=value or "")

    def ShipLogs(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._gate(context)
        with self.lock:
            self.chunks.extend(request.chunks)
        return scheduler_pb2.LogChunksReply(stored=len(request.chunks))


# ----------------------------------------------------------------------------- the worker


def worker_command() -> list[str]:
    """`tradewind worker` through the CLI entry point once it has the command, else the
    worker command module on its own."""
    try:
        from tradewind_cluster.cli.main import build_parser

        sub = next(a for a in build_parser()._actions if a.dest == "command")
        choices = sub.choices or {}
    except Exception:  # noqa: BLE001 - the rest of the CLI is not the worker's concern
        choices = {}
    if "worker" in choices:
        return [sys.executable, "-m", "tradewind_cluster.cli.main", "worker"]
    return [sys.executable, "-m", "tradewind_cluster.cli.worker_cmd"]


def start_worker(
    tmp: Path,
    schedulers: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    name: str = "w1",
) -> Proc:
    """Start a real worker process and wait for its ports line."""
    home = tmp / "home"
    (home / "dags").mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    base.update(
        TRADEWIND_HOME=str(home),
        TRADEWIND__CORE__DAGS_FOLDER=str(home / "dags"),
        TRADEWIND__RPC__TOKEN=TOKEN,
        TRADEWIND__WORKER__HEARTBEAT_INTERVAL_S="0.2",
        TRADEWIND__WORKER__LEASE_S="1.5",
        TRADEWIND__WORKER__LEASE_MARGIN_S="1.0",
        TRADEWIND__WORKER__KILL_GRACE_S="1.0",
        TRADEWIND__WORKER__SHUTDOWN_GRACE_S="5",
        TRADEWIND__SCHEDULER__ZOMBIE_THRESHOLD_S="3",
        TRADEWIND__LOGGING__LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    base.update(env or {})
    log_path = tmp / f"{name}.log"
    cmd = [*worker_command(), "--schedulers", schedulers, "--name", name, *args]
    out: IO[bytes]
    with log_path.open("wb") as out:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(cmd, env=base, stdout=out, stderr=subprocess.STDOUT)
    proc = Proc(popen=popen, log_path=log_path)

    def ports() -> dict[str, int] | None:
        if popen.poll() is not None:
            raise AssertionError(f"worker {name} exited {popen.returncode}:\n{proc.log()}")
        m = _PORTS.search(proc.log())
        return {"grpc": int(m.group(2)), "health": int(m.group(3))} if m else None

    proc.ports = wait_until(ports, 30, f"worker {name} to start")
    return proc


class WorkerClient:
    """Calls the worker's gRPC API with (or without) the shared token."""

    def __init__(self, port: int, token: str | None = TOKEN, max_bytes: int = 64 << 20) -> None:
        options = RpcOptions(max_message_bytes=max_bytes, security=RpcSecurity(token=token))
        self.channel = open_channel(f"127.0.0.1:{port}", options)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        self.metadata = call_metadata(options.security)

    def execute(
        self, request: worker_pb2.ExecuteRequest, metadata: tuple[tuple[str, str], ...] = ()
    ) -> worker_pb2.ExecuteReply:
        return self.stub.Execute(request, timeout=10, metadata=(*self.metadata, *metadata))

    def serving(self) -> bool:
        """What grpc.health.v1 says about the whole server."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def status(self) -> worker_pb2.WorkerStatus:
        return self.stub.Status(worker_pb2.StatusRequest(), timeout=10, metadata=self.metadata)

    def tail(self, ti_id: int, token: int, follow: bool) -> Iterator[worker_pb2.TailChunk]:
        ref = common_pb2.AttemptRef(ti_id=ti_id, token=token)
        request = worker_pb2.TailRequest(attempt=ref, follow=follow)
        return self.stub.Tail(request, timeout=20, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()


# ----------------------------------------------------------------------------- requests


def task_entry(dag: DAG, task_id: str) -> str:
    """ExecuteRequest.task_json for one task of an authored DAG."""
    tasks = spec_to_dict(dag_to_spec(dag))["dag"]["tasks"]
    return json.dumps(next(t for t in tasks if t["task_id"] == task_id))


def execute_request(
    *,
    ti_id: int,
    token: int = 1,
    dag_id: str,
    task_id: str,
    task_json: str,
    fileloc: str = "",
    file_hash: str = "",
    run_id: str = "manual__2024-01-02T00:00:00+00:00",
    logical_date: str = "2024-01-02T00:00:00+00:00",
    conf: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    timeout_s: float = 0.0,
    queue: str = "default",
    try_number: int = 1,
) -> worker_pb2.ExecuteRequest:
    """An Execute request as a scheduler would send it."""
    context = {
        "run_id": run_id,
        "run_type": "manual",
        "logical_date": logical_date,
        "data_interval_start": logical_date,
        "data_interval_end": "2024-01-03T00:00:00+00:00",
        "conf": dict(conf or {}),
        "params": dict(params or {}),
    }
    return worker_pb2.ExecuteRequest(
        attempt=common_pb2.AttemptRef(ti_id=ti_id, token=token),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        try_number=try_number,
        logical_date=logical_date,
        fileloc=fileloc,
        file_hash=file_hash,
        task_json=task_json,
        context_json=json.dumps(context),
        execution_timeout_s=timeout_s,
        queue=queue,
    )


def file_hash(path: Path) -> str:
    """sha256 of a DAG file's bytes, as the parser records it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_registered(fake: FakeScheduler, timeout: float = 15) -> None:
    """Wait until the worker registered and heartbeats at least once."""
    fake.wait(lambda: fake.registrations, timeout, "the worker to register")
    start = time.monotonic()
    fake.wait(lambda: len(fake.heartbeats) > 0, timeout, "a heartbeat")
    assert time.monotonic() - start < timeout
