"""The cluster under test as separate processes: a fresh database (embedded PostgreSQL in the run
dir, or a new database on the server given), N `tradewind scheduler` and M `tradewind worker`
processes, their ports and logs, and stopping or killing them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from loadtest.netpart import Partition

__all__ = [
    "Cluster",
    "ClusterConfig",
    "HarnessError",
    "Proc",
    "Role",
    "Store",
    "close_store",
    "open_store",
]

_PORTS = re.compile(r"running: grpc=(\d+) health=(\d+)")
_START_TIMEOUT_S = 45.0


class HarnessError(RuntimeError):
    """The cluster could not be started or did not take the load: no measurement is possible."""


class Role(StrEnum):
    """What a measured process is."""

    SCHEDULER = "scheduler"
    WORKER = "worker"
    POSTGRES = "postgres"
    HARNESS = "harness"


@dataclass
class Proc:
    """One started process with its log file."""

    role: Role
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    killed_at: float | None = None
    earlier_starts: int = 0  # ports lines in the log from earlier incarnations of this name

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything it wrote so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self, *, tree: bool = False) -> float:
        """SIGKILL it (and its descendants when `tree`); returns the local time of the kill."""
        victims = [self.pid]
        if tree:
            with contextlib.suppress(psutil.Error):
                victims += [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        at = time.time()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.killed_at = at
        self.popen.wait(10)
        return at

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return int(self.popen.returncode)


@dataclass(frozen=True, slots=True, kw_only=True)
class Store:
    """The run's own database."""

    url: str
    embedded: bool
    pgdata: Path | None
    admin_url: str
    name: str

    def postgres_pid(self) -> int | None:
        """The postmaster's pid when the server is ours (embedded), else None."""
        if self.pgdata is None:
            return None
        pidfile = self.pgdata / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().splitlines()[0])
        return None


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _normalise(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg2://{rest}"
    return url


def open_store(
    run_dir: Path, server_url: str | None, *, migrate: bool = True
) -> tuple[Store, object | None]:
    """Create a fresh database, migrated to Tradewind's schema unless `migrate` is false;
    returns it and the embedded server's handle."""
    from tradewind_cluster.embedded import EmbeddedPostgres
    from tradewind_cluster.store.database import Database
    from tradewind_cluster.store.migrate import upgrade

    handle: EmbeddedPostgres | None = None
    pgdata: Path | None = None
    if server_url is None:
        pgdata = run_dir / "pgdata"
        handle = EmbeddedPostgres(pgdata)
        admin = handle.start()
    else:
        admin = _normalise(server_url)
    name = f"tw_loadtest_{datetime.now(UTC):%Y%m%d_%H%M%S}_{os.getpid()}"
    engine = _admin_engine(admin)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    if migrate:
        db = Database(url)
        try:
            upgrade(db)
        finally:
            db.dispose()
    store = Store(url=url, embedded=handle is not None, pgdata=pgdata, admin_url=admin, name=name)
    return store, handle


def close_store(store: Store, handle: object | None, *, keep: bool) -> None:
    """Drop the run's database (unless kept) and leave the embedded server."""
    if not keep and not store.embedded:
        engine = _admin_engine(store.admin_url)
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{store.name}" WITH (FORCE)'))
        engine.dispose()
    stop = getattr(handle, "stop", None)
    if stop is not None:
        stop()
    if not keep and store.pgdata is not None:
        shutil.rmtree(store.pgdata, ignore_errors=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """What to start."""

    run_dir: Path
    schedulers: int
    workers: int
    slots: int
    parallelism: int
    settings: Mapping[str, str]
    queues: str = "default"


class Cluster:
    """N schedulers and M workers against one store; workers reach the schedulers directly,
    except one (w0) that goes through `partition` when one is given."""

    def __init__(
        self, config: ClusterConfig, store: Store, partition: Partition | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.partition = partition
        self.schedulers: list[Proc] = []
        self.workers: list[Proc] = []
        self.logs = config.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- environment -----------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """Environment shared by every process: no inherited TRADEWIND settings."""
        cfg = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
        env.update(
            TRADEWIND_HOME=str(cfg.run_dir / "home"),
            TRADEWIND__CORE__DAGS_FOLDER=str(cfg.run_dir / "dags"),
            TRADEWIND__CORE__DAGS_ARE_PAUSED_AT_CREATION="false",
            TRADEWIND__CORE__PARALLELISM=str(cfg.parallelism),
            TRADEWIND__WORKER__SLOTS=str(cfg.slots),
            # No workers: each scheduler runs attempts itself (its in-process executor).
            TRADEWIND__SCHEDULER__EXECUTOR="workers" if cfg.workers else "local",
            PYTHONUNBUFFERED="1",
        )
        env.update(cfg.settings)
        return env

    def scheduler_env(self) -> dict[str, str]:
        """A scheduler's environment: the store's URL, and where to bind."""
        env = self.base_env()
        env["TRADEWIND__DATABASE__URL"] = self.store.url
        if self.partition is not None:
            env["TRADEWIND__RPC__BIND_HOST"] = self.partition.scheduler_host
            env["TRADEWIND__RPC__ADVERTISE_HOST"] = self.partition.scheduler_host
        return env

    # -- processes -------------------------------------------------------------------
    def _spawn(self, role: Role, name: str, cmd: list[str], env: Mapping[str, str]) -> Proc:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as out:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=self.config.run_dir
            )
        # a restarted process appends to its old log: count the ports lines before this one
        earlier = sum(1 for p in self._all() if p.name == name)
        return Proc(role=role, name=name, popen=popen, log_path=log_path, earlier_starts=earlier)

    def _await_ports(self, procs: list[Proc]) -> None:
        """Wait until every process printed its ports line (they start in parallel)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        waiting = list(procs)
        while waiting:
            for proc in list(waiting):
                if not proc.alive():
                    code, tail = proc.popen.returncode, proc.log()[-3000:]
                    raise HarnessError(f"{proc.role} {proc.name} exited {code}:\n{tail}")
                found = _PORTS.findall(proc.log())
                if len(found) > proc.earlier_starts:
                    proc.ports = {"grpc": int(found[-1][0]), "health": int(found[-1][1])}
                    waiting.remove(proc)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                raise HarnessError(f"{names} did not start within {_START_TIMEOUT_S:.0f}s")
            time.sleep(0.05)

    def _all(self) -> list[Proc]:
        return [*self.schedulers, *self.workers]

    def spawn_scheduler(self, name: str) -> Proc:
        """Start `tradewind scheduler --name NAME` (without waiting for it)."""
        cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", "scheduler", "--name", name]
        cmd += ["--grpc-port", "0", "--health-port", "0"]
        proc = self._spawn(Role.SCHEDULER, name, cmd, self.scheduler_env())
        self.schedulers.append(proc)
        return proc

    def spawn_worker(self, name: str) -> Proc:
        """Start `tradewind worker` pointed at every live scheduler (w0 through the partition)."""
        ports = [p.ports["grpc"] for p in self.schedulers if p.alive()]
        env = self.base_env()
        prefix: list[str] = []
        if self.partition is not None and name == "w0":
            addresses = self.partition.worker_addresses(ports)
            env.update(self.partition.worker_settings())
            prefix = self.partition.worker_prefix()
        else:
            host = self.partition.scheduler_host if self.partition else "127.0.0.1"
            addresses = [f"{host}:{port}" for port in ports]
        cmd = [*prefix, sys.executable, "-m", "tradewind_cluster.cli.worker_cmd"]
        cmd += ["--schedulers", ",".join(addresses), "--queues", self.config.queues]
        cmd += ["--slots", str(self.config.slots), "--name", name]
        cmd += ["--grpc-port", "0", "--health-port", "0"]
        proc = self._spawn(Role.WORKER, name, cmd, env)
        self.workers.append(proc)
        return proc

    def start(self) -> None:
        """Start every scheduler, then every worker (they need the schedulers' ports)."""
        self._await_ports([self.spawn_scheduler(f"s{i}") for i in range(self.config.schedulers)])
        self._await_ports([self.spawn_worker(f"w{i}") for i in range(self.config.workers)])

    def restart(self, proc: Proc) -> Proc:
        """Start a stopped or killed process again under the same name, and wait for it."""
        spawn = self.spawn_scheduler if proc.role is Role.SCHEDULER else self.spawn_worker
        new = spawn(proc.name)
        self._await_ports([new])
        return new

    def live(self, role: Role) -> list[Proc]:
        """Running processes of a role."""
        return [p for p in self._all() if p.role is role and p.alive()]

    def measured(self) -> list[tuple[Role, str, int]]:
        """(role, name, pid) of every live process to measure (a dead one's pid may be reused;
        its last sample stands)."""
        found = [(p.role, p.name, p.pid) for p in self._all() if p.alive()]
        pg = self.store.postgres_pid()
        if pg is not None:
            found.append((Role.POSTGRES, "postgres", pg))
        return found

    def stop(self) -> dict[str, int]:
        """Stop workers (they drain), then schedulers; returns each one's exit status."""
        codes: dict[str, int] = {}
        for proc in [*self.workers, *self.schedulers]:
            if proc.killed_at is None:
                codes[f"{proc.name}#{proc.pid}"] = proc.stop()
        return codes
