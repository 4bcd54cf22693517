"""BashOperator attempts the fork server starts itself: the command's `bash` is the task process,
with no Python process between it and the fork server. Most bash tasks render their templates
from the run context alone; those are rendered in the fork server and `bash -c` is spawned
directly (vfork + exec: about a millisecond, where forking a warm interpreter costs ten).

An attempt whose templates call the task API (an XCom pull, a Variable) or that fails to render
takes the ordinary path, a forked task process, which does everything again and reports what
went wrong. The fork server never opens a gRPC channel: the API here refuses every call.

The log reads as the task process would write it: the same header lines, the command's output
as it printed it, the exit code and the final state; the last line of output is the return
value, as Airflow's BashOperator pushes it."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tradewind.errors import TradewindError
from tradewind.models import clear_task_runtime, install_task_runtime
from tradewind.spec import TaskKind
from tradewind.timezones import set_default_timezone
from tradewind_cluster.worker.bash import BashPlan, bash_result, plan_bash_task
from tradewind_cluster.worker.launch import ChildEvent, ChildResult, Launch, Outcome
from tradewind_cluster.worker.runtime import decode_task
from tradewind_cluster.worker.task_api import TaskApi
from tradewind_cluster.worker.task_context import RunInfo

__all__ = [
    "RENDER_BUDGET_S",
    "DirectBash",
    "NeedsTaskProcessError",
    "on_render_alarm",
    "plan_direct",
    "result_event",
    "start_direct",
    "started_event",
]

_TAIL_BYTES = 64 * 1024
# Templates render in the single-threaded fork server: one that takes longer than this (a
# sleep, a huge loop) is abandoned there and rendered again in a task process, so it cannot
# hold up every other spawn, signal and reap on the worker.
RENDER_BUDGET_S = 0.1
_FORMAT = logging.Formatter("[%(asctime)s] {%(filename)s:%(lineno)d} %(levelname)s - %(message)s")
_FILENAME = os.path.basename(__file__)
_LEVELS = {level: logging.getLevelName(level) for level in (logging.INFO, logging.ERROR)}


class NeedsTaskProcessError(TradewindError):
    """The attempt's templates call the task API: only a task process may do that."""


class _NoApi(TaskApi):
    """The task API as the fork server offers it: every call needs a task process."""

    def _call(self, method: str, request: Any) -> Any:
        raise NeedsTaskProcessError(f"the templates call {method}")


@dataclass(slots=True, kw_only=True)
class DirectBash:
    """A bash attempt the fork server runs: its process, log and what the outcome needs."""

    launch: Launch
    plan: BashPlan
    popen: subprocess.Popen[bytes]
    log_fd: int
    output_at: int  # where the command's output starts in the log
    tmpdir: str | None

    @property
    def pid(self) -> int:
        """The bash process (it leads its own process group)."""
        return self.popen.pid

    def finish(self, status: int) -> ChildResult | None:
        """Close the attempt after its process was reaped with exit `status` (negative: the
        signal that killed it). None when killed: the agent reports the signal and why."""
        self.popen.returncode = status  # reaped by the fork server, not by Popen
        try:
            if status < 0:
                return None
            last_line = self._last_line()
            end = os.lseek(self.log_fd, 0, os.SEEK_END)
            if end > self.output_at and os.pread(self.log_fd, 1, end - 1) != b"\n":
                os.write(self.log_fd, b"\n")  # output without a final newline: end its line
            _log(self.log_fd, logging.INFO, f"Command exited with return code {status}")
            try:
                result = bash_result(
                    self.plan,
                    status,
                    last_line,
                    task_id=self.launch.task_id,
                    max_xcom_bytes=self.launch.max_xcom_bytes,
                )
            except TradewindError as exc:
                _log(self.log_fd, logging.ERROR, f"Task failed with exception: {exc}")
                result = ChildResult(outcome=Outcome.FAILED, error=str(exc))
            if result.outcome is Outcome.SKIPPED:
                _log(self.log_fd, logging.INFO, f"Task skipped: {result.error}")
            elif result.outcome is Outcome.FAILED and result.error:
                _log(self.log_fd, logging.ERROR, result.error)
            _log(self.log_fd, logging.INFO, f"Marking task as {result.outcome.value.upper()}.")
            return result
        finally:
            os.close(self.log_fd)

    def cleanup(self) -> None:
        """Remove the attempt's temporary directory: after its outcome went out, so a report
        never waits for the file system."""
        if self.tmpdir is not None:
            _remove_tmpdir(self.tmpdir)
            self.tmpdir = None

    def _last_line(self) -> str:
        """The last line the command printed ("" for none), as Airflow's readline loop sees
        it: split on newlines only, trailing whitespace stripped. Read backwards from the end;
        a line too long to be an XCom anyway is not read further."""
        start, pos = self.output_at, os.lseek(self.log_fd, 0, os.SEEK_END)
        if pos > start and os.pread(self.log_fd, 1, pos - 1) == b"\n":
            pos -= 1
        limit = 4 * self.launch.max_xcom_bytes + _TAIL_BYTES
        line = b""
        while pos > start and len(line) <= limit:
            size = min(_TAIL_BYTES, pos - start)
            chunk = os.pread(self.log_fd, size, pos - size)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                line = chunk[cut + 1 :] + line
                break
            line, pos = chunk + line, pos - size
        return line.decode(self.plan.encoding, errors="backslashreplace").rstrip()


def _line(level: int, message: str) -> str:
    """A line as `_FORMAT` writes it (logging's asctime: local time, milliseconds after a
    comma), built directly: a LogRecord and a Formatter cost a tenth of the fork server's time
    per attempt, for the five lines a direct attempt writes."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    millis = int((now - int(now)) * 1000)  # as LogRecord computes msecs
    return f"[{stamp},{millis:03d}] {{{_FILENAME}:0}} {_LEVELS[level]} - {message}\n"


def _write(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]


def _log(fd: int, level: int, message: str) -> None:
    _write(fd, _line(level, message))


def _remove_tmpdir(path: str) -> None:
    """Remove an attempt's temporary directory. Most commands leave it empty, and one rmdir
    is a single system call where rmtree walks the tree with a dozen (a fifth of the fork
    server's time per attempt, measured); anything left inside goes the long way."""
    try:
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


@functools.lru_cache(maxsize=64)
def _bash_for(path: str | None) -> str:
    """The bash executable on PATH (cached: a spawn would otherwise stat every PATH entry)."""
    return shutil.which("bash", path=path) or "bash"


def plan_direct(launch: Launch, *, alarm_installed: bool = False) -> BashPlan | None:
    """The rendered plan when the fork server can start this attempt itself, else None.
    `alarm_installed`: the caller installed `on_render_alarm` for SIGALRM once (the fork
    server), so the render budget only arms a timer; otherwise the handler is swapped in and
    back for the render."""
    try:
        spec = decode_task(launch.task_json, launch.task_id)
        if spec.kind is not TaskKind.BASH:
            return None
        set_default_timezone(launch.default_timezone)
        run = RunInfo.parse(
            launch.context_json, run_id=launch.run_id, logical_date=launch.logical_date
        )
        api = _NoApi(launch)
        # Variable.get (var.value / var.json, with or without a default) asks the API, which
        # refuses here: such templates render in a task process, with the real values.
        install_task_runtime(variables=api)
        try:
            with _time_limit(RENDER_BUDGET_S, swap_handler=not alarm_installed):
                return plan_bash_task(launch, spec, run, api, launch.env)
        finally:
            clear_task_runtime()
    except Exception:  # noqa: BLE001 - the task process renders again and reports the failure
        return None


class _RenderTimeoutError(Exception):
    """Rendering in the fork server took longer than RENDER_BUDGET_S."""


_armed = False


def on_render_alarm(signum: int, frame: object) -> None:
    """The SIGALRM handler that ends a render over its budget (a no-op outside a render)."""
    if _armed:  # a late alarm, after the render, must not interrupt the server loop
        raise _RenderTimeoutError


@contextlib.contextmanager
def _time_limit(seconds: float, *, swap_handler: bool = True) -> Iterator[None]:
    """Interrupt the block after `seconds` (SIGALRM; the fork server is single-threaded). An
    interval timer set before is put back with what was left of it, and with `swap_handler`
    the previous handler too (signal.signal costs a failed enum lookup per call: the fork
    server installs the handler once instead)."""
    global _armed
    previous = signal.signal(signal.SIGALRM, on_render_alarm) if swap_handler else None
    began = time.monotonic()
    _armed = True
    left, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if swap_handler:
            signal.signal(signal.SIGALRM, previous)
        if left > 0:
            remaining = max(left - (time.monotonic() - began), 0.001)
            signal.setitimer(signal.ITIMER_REAL, remaining, interval)


def start_direct(launch: Launch, plan: BashPlan) -> DirectBash:
    """Write the log header and start `bash -c` in its own process group; OSError when it
    cannot start (the caller reports the spawn failure)."""
    os.makedirs(os.path.dirname(launch.log_path) or ".", exist_ok=True)
    fd = os.open(launch.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    tmpdir = None
    try:
        bash = _bash_for(plan.env.get("PATH"))
        _write(
            fd,
            _line(
                logging.INFO,
                f"Running <TaskInstance: {launch.dag_id}.{launch.task_id} {launch.run_id} "
                f"[running]> try {launch.try_number} on host {launch.hostname}",
            )
            + _line(logging.INFO, f"Running command: {[bash, '-c', plan.command]}")
            + _line(logging.INFO, "Output:"),
        )
        cwd = plan.cwd
        if cwd is None:
            cwd = tmpdir = tempfile.mkdtemp(prefix="tradewindtmp")
        output_at = os.lseek(fd, 0, os.SEEK_END)
        popen = subprocess.Popen(
            [bash, "-c", plan.command],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=plan.env,
            process_group=0,
        )
    except BaseException as exc:
        os.close(fd)
        if tmpdir is not None:
            _remove_tmpdir(tmpdir)
        if isinstance(exc, FileNotFoundError):
            _bash_for.cache_clear()  # bash moved since it was looked up: look again next time
        raise
    return DirectBash(
        launch=launch, plan=plan, popen=popen, log_fd=fd, output_at=output_at, tmpdir=tmpdir
    )


def started_event() -> dict[str, Any]:
    """The STARTED event a task process would have written."""
    return {"kind": ChildEvent.STARTED.value, "at": time.time()}


def result_event(result: ChildResult) -> dict[str, Any]:
    """The RESULT event a task process would have written."""
    return {"kind": ChildEvent.RESULT.value, "at": time.time(), **result.to_dict()}
