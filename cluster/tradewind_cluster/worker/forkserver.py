"""The warm interpreter task processes are forked from. The agent starts it (fork+exec) before it
creates any gRPC object, so it never holds gRPC state; it preloads tradewind, jinja2 and the task
runtime, then forks one process per attempt on request and reports each one's events and exit.

Wire: the agent writes JSON lines to its stdin (`spawn`, `signal`, `notify`); it answers on
stdout with `ready`, `spawned`, `child` (an event a task process wrote on its pipe) and `exited`.
`notify` passes a line to a task process on its own inbound pipe (e.g. "STARTED accepted")."""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from tradewind.errors import BadInputError, RetryableError
from tradewind_cluster.worker.bash import BashPlan
from tradewind_cluster.worker.direct_bash import (
    DirectBash,
    on_render_alarm,
    plan_direct,
    result_event,
    start_direct,
    started_event,
)
from tradewind_cluster.worker.launch import ChildResult, Launch, Outcome, decode_line, encode_line

__all__ = ["PRELOAD", "ForkServer", "main"]

log = logging.getLogger(__name__)

PRELOAD = (
    "tradewind",
    "tradewind.models",
    "tradewind.exceptions",
    "tradewind.serialization",
    "jinja2",
    "jinja2.sandbox",
    "jinja2.nativetypes",
    "tradewind_cluster.parsing.runner",
    "tradewind_cluster.worker.runtime",
)
"""Imported once by the fork server so each task process starts with them loaded. grpc is
imported but never initialised there: a task process creates its own channel after the fork."""

_EXIT_CHILD_SETUP = 70


@dataclass(slots=True)
class _Child:
    key: str
    pid: int
    events: int  # read end of the task process's event pipe
    notes: int  # write end of the pipe the task process reads notifications from
    buffer: bytearray = field(default_factory=bytearray)


class _Server:
    """The loop inside the fork server process: one thread, one selector."""

    def __init__(self, ctl_in: int, ctl_out: int, *, direct_bash: bool = True) -> None:
        self.ctl_in, self.ctl_out = ctl_in, ctl_out
        self.direct_bash = direct_bash
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}
        self.by_key: dict[str, int] = {}
        self.by_events: dict[int, int] = {}  # event pipe fd -> pid
        self.direct: dict[int, DirectBash] = {}  # bash attempts started without a task process
        self.inbuf = bytearray()
        self.running = True
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGALRM, on_render_alarm)  # once: renders only arm the timer
        self.sel.register(ctl_in, selectors.EVENT_READ, self._on_control)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_sigchld)

    def send(self, *messages: dict[str, Any]) -> None:
        """Write the messages to the agent, in one write (one wake-up of its reader)."""
        data = b"".join(encode_line(m) for m in messages)
        while data:
            data = data[os.write(self.ctl_out, data) :]

    def run(self) -> None:
        self.send({"ev": "ready", "pid": os.getpid()})
        while self.running:
            for key, _ in self.sel.select():
                key.data(key.fd)
        self._kill_all()

    # -- control channel --------------------------------------------------------------
    def _on_control(self, fd: int) -> None:
        data = os.read(fd, 1 << 16)
        if not data:  # the agent is gone: nobody holds the lease for our children any more
            self.running = False
            return
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf = bytearray(rest)
            try:
                self._handle(decode_line(line))
            except Exception as exc:  # noqa: BLE001 - one bad order must not stop the server
                print(f"tradewind fork server: bad order: {exc}", file=sys.stderr, flush=True)

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "spawn":
            self._spawn(message["launch"])
        elif op == "signal":
            self._signal(str(message["key"]), int(message["signal"]))
        elif op == "notify":
            self._notify(str(message["key"]), message["message"])
        else:
            raise BadInputError(f"unknown op {op!r}")

    def _spawn(self, data: dict[str, Any]) -> None:
        launch = Launch.from_dict(data)
        plan = plan_direct(launch, alarm_installed=True) if self.direct_bash else None
        if plan is not None:
            self._spawn_direct(launch, plan)
            return
        read_end, write_end = os.pipe()
        notes_r, notes_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (read_end, write_end, notes_r, notes_w):
                os.close(fd)
            self.send({"ev": "spawn_failed", "key": launch.key, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            own = [self.ctl_in, self.ctl_out, self.wake_r, self.wake_w, read_end, notes_w]
            own += [fd for c in self.children.values() for fd in (c.events, c.notes)]
            _child_main(launch, write_end, notes_r, own)
        os.close(write_end)
        os.close(notes_r)
        os.set_blocking(read_end, False)
        os.set_blocking(notes_w, False)
        self.children[pid] = _Child(key=launch.key, pid=pid, events=read_end, notes=notes_w)
        self.by_key[launch.key] = pid
        self.by_events[read_end] = pid
        self.sel.register(read_end, selectors.EVENT_READ, self._on_child_events)
        self.send({"ev": "spawned", "key": launch.key, "pid": pid})

    def _spawn_direct(self, launch: Launch, plan: BashPlan) -> None:
        started = started_event()
        try:
            attempt = start_direct(launch, plan)
        except OSError as exc:
            # As a task process whose Popen failed: the try started and failed (and may retry).
            failed = ChildResult(outcome=Outcome.FAILED, error=f"cannot start bash: {exc}")
            self.send(
                {"ev": "child", "key": launch.key, "event": started},
                {"ev": "child", "key": launch.key, "event": result_event(failed)},
                {"ev": "exited", "key": launch.key, "pid": 0, "status": 1},
            )
            return
        self.direct[attempt.pid] = attempt
        self.by_key[launch.key] = attempt.pid
        self.send(
            {"ev": "spawned", "key": launch.key, "pid": attempt.pid},
            {"ev": "child", "key": launch.key, "event": started},
        )

    def _finish_direct(self, attempt: DirectBash, code: int) -> None:
        key = attempt.launch.key
        self.by_key.pop(key, None)
        try:
            result = attempt.finish(code)
        except Exception as exc:  # noqa: BLE001 - say why; the agent reports a failed attempt
            print(f"tradewind fork server: ending {key}: {exc}", file=sys.stderr, flush=True)
            result = None
        exited = {"ev": "exited", "key": key, "pid": attempt.pid, "status": code}
        try:
            if result is not None:
                self.send({"ev": "child", "key": key, "event": result_event(result)}, exited)
            else:
                self.send(exited)
        finally:
            attempt.cleanup()

    def _signal(self, key: str, signum: int) -> None:
        pid = self.by_key.get(key)
        if pid is None:
            return
        # The task process leads its own group: bash and anything else it started go too.
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _notify(self, key: str, message: dict[str, Any]) -> None:
        pid = self.by_key.get(key)
        child = None if pid is None else self.children.get(pid)
        if child is None or child.notes < 0:
            return
        # A notification is a few bytes into an empty pipe; if the task never reads, drop it.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(child.notes, encode_line(message))

    # -- task processes ---------------------------------------------------------------
    def _on_child_events(self, fd: int) -> None:
        pid = self.by_events.get(fd)
        child = None if pid is None else self.children.get(pid)
        if child is not None:
            self._drain(child)

    def _drain(self, child: _Child) -> None:
        while True:
            try:
                data = os.read(child.events, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self._close_events(child)
                return
            child.buffer += data
            while b"\n" in child.buffer:
                line, _, rest = bytes(child.buffer).partition(b"\n")
                child.buffer = bytearray(rest)
                with contextlib.suppress(BadInputError):
                    self.send({"ev": "child", "key": child.key, "event": decode_line(line)})

    def _close_events(self, child: _Child) -> None:
        if child.events < 0:
            return
        self.by_events.pop(child.events, None)
        self.sel.unregister(child.events)
        os.close(child.events)
        child.events = -1

    def _on_sigchld(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 512):
                pass
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            self._reap(info.si_pid)

    def _reap(self, pid: int) -> None:
        # Before reaping, while the pid cannot be reused: what the task left behind in its
        # process group dies with it, as Airflow reaps a finished task's process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        direct = self.direct.pop(pid, None)
        if direct is not None:
            self._finish_direct(direct, os.waitstatus_to_exitcode(status))
            return
        child = self.children.pop(pid, None)
        if child is None:
            return
        if child.events >= 0:
            self._drain(child)
            self._close_events(child)
        self.by_key.pop(child.key, None)
        os.close(child.notes)
        child.notes = -1
        code = os.waitstatus_to_exitcode(status)
        self.send({"ev": "exited", "key": child.key, "pid": pid, "status": code})

    def _kill_all(self) -> None:
        for pid in [*self.children, *self.direct]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _redirect_stdio(log_path: str) -> None:
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _child_main(launch: Launch, events: int, notes: int, close: list[int]) -> NoReturn:
    """Inside the forked task process: never returns into the server loop."""
    code = _EXIT_CHILD_SETUP
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        # The server's own handlers (SIGALRM: the render budget) are not the task's.
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        _redirect_stdio(launch.log_path)
        # The agent's environment without its configuration secrets, plus the trace context.
        os.environ.clear()
        os.environ.update(launch.env)
        from tradewind_cluster.worker.runtime import run_task

        code = run_task(launch, events, notes)
    except BaseException:  # noqa: BLE001 - the last resort of a task process: say why, exit
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _preload(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a task process imports it again, reports it
            print(f"tradewind fork server: cannot preload {name}: {exc}", file=sys.stderr)
    try:
        from tradewind_cluster.worker.runtime import warm_up

        warm_up()
    except Exception as exc:  # noqa: BLE001 - only a speed-up; tasks still run without it
        print(f"tradewind fork server: warm-up failed: {exc}", file=sys.stderr)
    # Objects loaded so far are never collected: children do not copy their pages on gc.
    gc.freeze()


def _not_for_us(signum: int, frame: object) -> None:
    """SIGINT / SIGTERM reach the fork server with its group; only the agent stops it."""


def main() -> int:
    """Entry point of `python -m tradewind_cluster.worker.forkserver`."""
    # The control pipes move off fds 0/1, so a stray print can never corrupt the protocol.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # Ctrl-C reaches the agent, which drains; the agent decides when tasks stop. Caught, not
    # ignored (SIG_IGN): an ignored signal stays ignored across exec, and the bash processes
    # spawned from here must die of (or trap) the SIGTERM that ends their attempt.
    signal.signal(signal.SIGINT, _not_for_us)
    signal.signal(signal.SIGTERM, _not_for_us)
    _preload(PRELOAD)
    _Server(ctl_in, ctl_out, direct_bash="--no-direct-bash" not in sys.argv[1:]).run()
    return 0


class ForkServer:
    """The agent's handle on the fork server process; messages arrive on `on_message` from a
    reader thread, in the order the server sent them."""

    def __init__(
        self,
        on_message: Callable[[dict[str, Any]], None],
        *,
        python: str = sys.executable,
        start_timeout_s: float = 60.0,
        direct_bash: bool = True,
    ) -> None:
        self._on_message = on_message
        self._python = python
        self._start_timeout_s = start_timeout_s
        self._direct_bash = direct_bash
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._stopping = False
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The fork server's pid once started."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the process and wait until it has preloaded and is ready."""
        cmd = [self._python, "-m", "tradewind_cluster.worker.forkserver"]
        if not self._direct_bash:
            cmd.append("--no-direct-bash")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="forkserver-reader", daemon=True
        )
        self._reader.start()
        if not self._ready.wait(self._start_timeout_s):
            self.stop()
            raise RetryableError("the fork server did not become ready")

    def spawn(self, launch: Launch) -> None:
        """Ask for a task process for this attempt."""
        self._write({"op": "spawn", "launch": launch.to_dict()})

    def signal(self, key: str, signum: int) -> None:
        """Signal an attempt's process group (ignored when it already exited)."""
        self._write({"op": "signal", "key": key, "signal": int(signum)})

    def notify(self, key: str, message: dict[str, Any]) -> None:
        """Pass a message to an attempt's task process (ignored when it already exited)."""
        self._write({"op": "notify", "key": key, "message": message})

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the control pipe: the server kills what still runs and exits."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        with self._write_lock, contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(timeout_s)
        if proc.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            proc.stdout.close()  # an agent run in process (tests) must not leak the pipe

    def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RetryableError("the fork server is not running")
        data = encode_line(message)
        with self._write_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise RetryableError(f"the fork server is gone: {exc}") from None

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                message = decode_line(line)
            except BadInputError:
                log.warning("fork server sent a malformed line", extra={"event": "forkserver_bad"})
                continue
            if message.get("ev") == "ready":
                self._ready.set()
                continue
            try:
                self._on_message(message)
            except Exception:  # the reader must outlive a failing handler
                log.exception("handling a fork server message failed")
        if not self._stopping:
            self._on_message({"ev": "server_exit"})


if __name__ == "__main__":
    raise SystemExit(main())
