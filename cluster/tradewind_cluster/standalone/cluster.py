"""One-machine cluster: embedded PostgreSQL, migrations, N schedulers and M workers as child
processes, a lock so a second standalone on the same home refuses, and a clean stop."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tradewind.errors import ConfigError
from tradewind_cluster.config import Settings, pgdata_dir
from tradewind_cluster.embedded import EmbeddedPostgres
from tradewind_cluster.standalone.supervisor import Child, ChildSpec, Supervisor
from tradewind_cluster.store import migrate
from tradewind_cluster.store.database import Connection, Database

__all__ = ["StandaloneCluster", "StandaloneOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class StandaloneOptions:
    """What `tradewind standalone` starts."""

    schedulers: int = 2
    workers: int = 2
    slots: int = 4
    dags_folder: Path | None = None  # None: the shipped example DAGs


class StandaloneCluster:
    """Start with `start()`, supervise with `watch_once()`, end with `stop()`."""

    def __init__(self, settings: Settings, options: StandaloneOptions) -> None:
        self.settings = settings
        self.options = options
        self.home = settings.core.home
        self.log_dir = self.home / "logs" / "standalone"
        self.supervisor = Supervisor(self.log_dir)
        self._lock_file: IO[str] | None = None
        self._pg: EmbeddedPostgres | None = None
        self.database_url: str | None = None
        self.dags_folder: Path = options.dags_folder or _examples()

    # -- life cycle ----------------------------------------------------------------------
    def start(self, on_progress: Callable[[str], None] = lambda _: None) -> None:
        """Lock the home, start PostgreSQL, migrate, start schedulers then workers."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        on_progress("starting PostgreSQL")
        url = self._database_url()
        db = Database(url)
        try:
            migrate.upgrade(db, default_pool_slots=self.settings.core.default_pool_slots)
            _ensure_example_pool(db)
        finally:
            db.dispose()
        env = self._child_env(url)
        for i in range(1, self.options.schedulers + 1):
            on_progress(f"starting scheduler-{i}")
            self.supervisor.start(
                ChildSpec(
                    name=f"scheduler-{i}", args=("scheduler", "--name", f"scheduler-{i}"), env=env
                )
            )
        # Workers hold no database credentials: they talk to schedulers only.
        worker_env = {k: v for k, v in env.items() if not k.startswith("TRADEWIND__DATABASE__")}
        addresses = ",".join(f"127.0.0.1:{c.grpc_port}" for c in self.schedulers())
        for i in range(1, self.options.workers + 1):
            on_progress(f"starting worker-{i}")
            args = (
                "worker",
                "--name",
                f"worker-{i}",
                "--schedulers",
                addresses,
                "--slots",
                str(self.options.slots),
            )
            self.supervisor.start(ChildSpec(name=f"worker-{i}", args=args, env=worker_env))

    def stop(self) -> None:
        """Stop workers first (they drain), then schedulers, then PostgreSQL; release the lock."""
        workers = [n for n in self.supervisor.children if n.startswith("worker")]
        self.supervisor.stop_all(order=workers)
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
            (self.home / "standalone.lock").unlink(missing_ok=True)

    def watch_once(self) -> list[str]:
        """Restart crashed children; returns what happened."""
        return self.supervisor.watch_once()

    def schedulers(self) -> list[Child]:
        """The scheduler children, in start order."""
        return [c for n, c in self.supervisor.children.items() if n.startswith("scheduler")]

    def workers(self) -> list[Child]:
        """The worker children, in start order."""
        return [c for n, c in self.supervisor.children.items() if n.startswith("worker")]

    # -- pieces --------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        path = self.home / "standalone.lock"
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"another `tradewind standalone` (pid {owner}) is already running on {self.home}; "
                "stop it first or set TRADEWIND_HOME to another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _database_url(self) -> str:
        if self.settings.database.url is not None:
            return self.settings.database.url.get_secret_value()
        self._pg = EmbeddedPostgres(pgdata_dir(self.settings))
        self.database_url = self._pg.start()
        return self.database_url

    def _child_env(self, url: str) -> dict[str, str]:
        env = dict(os.environ)
        token = (
            self.settings.rpc.token.get_secret_value()
            if self.settings.rpc.token
            else secrets.token_urlsafe(24)
        )
        env.update(
            TRADEWIND_HOME=str(self.home),
            TRADEWIND__DATABASE__URL=url,
            TRADEWIND__CORE__DAGS_FOLDER=str(self.dags_folder),
            TRADEWIND__CORE__DAGS_ARE_PAUSED_AT_CREATION="false",
            TRADEWIND__RPC__TOKEN=token,
            TRADEWIND__RPC__BIND_HOST="127.0.0.1",
            TRADEWIND__HEALTH__BIND_HOST="127.0.0.1",
            TRADEWIND__METRICS__BIND_HOST="127.0.0.1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("TRADEWIND__DATABASE__URL_CMD", None)
        env.pop("TRADEWIND__RPC__TOKEN_CMD", None)
        return env


def _examples() -> Path:
    from tradewind_cluster.example_dags import FOLDER

    return FOLDER


def _ensure_example_pool(db: Database) -> None:
    from tradewind_cluster.store.pools import get_pool, set_pool

    def ensure(conn: Connection) -> None:
        if get_pool(conn, "example_pool") is None:  # an operator's own setting is kept
            set_pool(conn, "example_pool", 2, "Used by example_pool_fanout")

    db.transaction(ensure)


def wait_forever(
    cluster: StandaloneCluster, report: Callable[[str], None], stop: Callable[[], bool]
) -> None:
    """Supervise until `stop()` says so."""
    while not stop():
        for event in cluster.watch_once():
            report(event)
        time.sleep(0.5)
