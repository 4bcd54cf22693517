"""Child processes of `tradewind standalone`: start, read the ports each one prints, restart a
crashed child with backoff, and stop them all so that none survives its parent."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "ChildSpec", "Supervisor"]

log = logging.getLogger(__name__)
_PORTS = re.compile(r"running: grpc=(\d+) health=(\d+)(?: metrics=(\d+|None))?")
_MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """How to start one child: `tradewind ARGS...` with this environment."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(slots=True, kw_only=True)
class Child:
    """A running child and what it told us."""

    spec: ChildSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int | None = None
    health_port: int | None = None
    metrics_port: int | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Owns the children; `stop_all()` leaves no process behind."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._next_restart: dict[str, float] = {}

    def start(self, spec: ChildSpec, *, ready_timeout_s: float = 60.0) -> Child:
        """Start a child and wait for its ports line."""
        child = self._spawn(spec)
        with self._lock:
            self.children[spec.name] = child
        self._await_ports(child, ready_timeout_s)
        return child

    def _spawn(self, spec: ChildSpec, restarts: int = 0) -> Child:
        path = self.log_dir / f"{spec.name}.log"
        cmd = [sys.executable, "-m", "tradewind_cluster.cli.main", *spec.args]
        with path.open("ab") as out:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                cmd,
                env=dict(spec.env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            )
        return Child(spec=spec, popen=popen, log_path=path, restarts=restarts)

    def _await_ports(self, child: Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        offset = child.log_path.stat().st_size if child.restarts else 0
        while time.monotonic() < deadline:
            text = child.log_path.read_text(errors="replace")[offset:]
            m = _PORTS.search(text)
            if m:
                child.grpc_port, child.health_port = int(m.group(1)), int(m.group(2))
                metrics = m.group(3)
                child.metrics_port = int(metrics) if metrics and metrics != "None" else None
                return
            if child.popen.poll() is not None:
                raise RuntimeError(
                    f"{child.spec.name} exited with status {child.popen.returncode}; "
                    f"see {child.log_path}:\n{text[-2000:]}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"{child.spec.name} did not report its ports within {timeout_s:.0f}s")

    def watch_once(self) -> list[str]:
        """Restart children that exited (with backoff); returns messages about what happened."""
        events: list[str] = []
        if self._stopping.is_set():
            return events
        now = time.monotonic()
        for name, child in list(self.children.items()):
            code = child.popen.poll()
            if code is None:
                continue
            due = self._next_restart.get(name)
            if due is None:
                backoff = min(_MAX_BACKOFF_S, 2.0 ** min(child.restarts, 5))
                self._next_restart[name] = now + backoff
                events.append(
                    f"{name} exited with status {code}; restarting in {backoff:.0f}s "
                    f"(log: {child.log_path})"
                )
                continue
            if now >= due:
                del self._next_restart[name]
                fresh = self._spawn(child.spec, restarts=child.restarts + 1)
                with self._lock:
                    self.children[name] = fresh
                events.append(f"{name} restarted (restart {fresh.restarts})")
        return events

    def stop_all(self, grace_s: float = 20.0, order: Sequence[str] | None = None) -> None:
        """SIGTERM every child (in `order` first), wait up to grace_s, then SIGKILL what is left."""
        self._stopping.set()
        names = list(order or ()) + [n for n in self.children if n not in (order or ())]
        for name in names:
            child = self.children.get(name)
            if child is not None and child.popen.poll() is None:
                _signal_group(child.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.popen.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time: killing it", child.spec.name)
                _signal_group(child.popen, signal.SIGKILL)
                child.popen.wait(5)


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # Each child leads its own session: signal the group so its task subprocesses go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)
