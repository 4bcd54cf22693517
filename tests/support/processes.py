"""Real `tradewind` processes for e2e tests: start, read their ports, probe, signal, stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Proc",
    "env_for",
    "http_json",
    "start_process",
    "start_scheduler",
    "start_worker",
    "wait_until",
]

_PORTS = re.compile(r"running: grpc=(\d+) health=(\d+)")


def env_for(db_url: str, home: Path, dags: Path, **extra: str) -> dict[str, str]:
    """A clean environment pointing a process at this database, home and dags folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND")}
    env.update(
        TRADEWIND_HOME=str(home),
        TRADEWIND__DATABASE__URL=db_url,
        TRADEWIND__CORE__DAGS_FOLDER=str(dags),
        TRADEWIND__CORE__DAGS_ARE_PAUSED_AT_CREATION="false",
        TRADEWIND__LOGGING__LEVEL="INFO",
        # in-process execution unless a test starts worker agents (then it passes "workers")
        TRADEWIND__SCHEDULER__EXECUTOR="local",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_json(port: int, path: str = "/health") -> tuple[int, dict[str, Any]]:
    """GET a JSON endpoint on 127.0.0.1; returns (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@dataclass
class Proc:
    """One started process with its log file."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)


def start_process(env: Mapping[str, str], log_dir: Path, name: str, *argv: str) -> Proc:
    """Start `tradewind ARGV...` and wait for the "running: grpc=P health=P" line it prints."""
    log_path = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", *argv]
    with log_path.open("wb") as out:  # the child keeps its own descriptor
        popen = subprocess.Popen(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    proc = Proc(popen=popen, log_path=log_path)

    def ports() -> dict[str, int] | None:
        if popen.poll() is not None:
            raise AssertionError(f"{name} exited {popen.returncode}:\n{proc.log()}")
        m = _PORTS.search(proc.log())
        return {"grpc": int(m.group(1)), "health": int(m.group(2))} if m else None

    proc.ports = wait_until(ports, 30, f"{name} to start")
    return proc


def start_scheduler(env: Mapping[str, str], log_dir: Path, name: str, *args: str) -> Proc:
    """Start `tradewind scheduler --name NAME` and wait for its ports line."""
    return start_process(env, log_dir, name, "scheduler", "--name", name, *args)


def start_worker(
    env: Mapping[str, str], log_dir: Path, name: str, schedulers: str, *args: str
) -> Proc:
    """Start `tradewind worker` (without database credentials) and wait for its ports line."""
    clean = {k: v for k, v in env.items() if not k.startswith("TRADEWIND__DATABASE__")}
    return start_process(
        clean, log_dir, name, "worker", "--name", name, "--schedulers", schedulers, *args
    )
