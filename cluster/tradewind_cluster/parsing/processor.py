"""The parse step of the scheduler loop: list the dags folder once per parse interval (one
replica per interval), lease the DAG files that are due, parse each in a subprocess with a
timeout, and store the results. A file is parsed by one live replica per interval."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from tradewind.errors import BadInputError, DagDefinitionError, SerializationError
from tradewind.serialization import spec_from_dict, spec_hash
from tradewind_cluster.config.settings import Settings
from tradewind_cluster.example_dags import FOLDER as EXAMPLES_FOLDER
from tradewind_cluster.parsing.discovery import list_dag_files
from tradewind_cluster.store import dag_files as store
from tradewind_cluster.store.dag_files import DagFileRow, FileResult, ParsedDag, StoredFile
from tradewind_cluster.store.database import Database

__all__ = [
    "DagFileProcessor",
    "DiscoveryReport",
    "FileOutcome",
    "FileReport",
    "ParseReport",
    "ProcessorOptions",
    "decode_runner_output",
]

log = logging.getLogger(__name__)

_RUNNER = "tradewind_cluster.parsing.runner"
_STDERR_TAIL = 2_000
_COUNT_CAP = 1_000_000
# A file due but not leased (a peer's claim held its row for that instant): look again soon.
_MIN_IDLE_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessorOptions:
    """How the parse step runs (from the core and scheduler config sections)."""

    dags_folder: Path
    parse_interval_s: float = 30.0
    parse_timeout_s: float = 60.0
    safe_mode: bool = True
    default_timezone: str = "UTC"
    catchup_by_default: bool = True
    load_examples: bool = False  # parse the bundled example DAGs beside the dags folder
    paused_at_creation: bool = True
    lease_margin_s: float = 5.0  # covers the store step and clock skew between replicas
    max_files_per_run: int = 2  # parsed in parallel, like Airflow's parsing_processes
    max_missing_per_run: int = 1_000
    # Airflow re-parses unchanged files too (a file may read a YAML beside it or import a
    # helper module); skipping them is an opt-in saving.
    skip_unchanged: bool = False
    python: str = field(default=sys.executable)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ProcessorOptions:
        """Options from validated settings; keyword overrides win."""
        values: dict[str, Any] = {
            "dags_folder": settings.core.dags_folder,
            "parse_interval_s": settings.scheduler.parse_interval_s,
            "parse_timeout_s": settings.scheduler.parse_timeout_s,
            "safe_mode": settings.core.dag_discovery_safe_mode,
            "default_timezone": settings.core.default_timezone,
            "catchup_by_default": settings.scheduler.catchup_by_default,
            "load_examples": settings.core.load_examples,
            "paused_at_creation": settings.core.dags_are_paused_at_creation,
        }
        return cls(**{**values, **overrides})


class FileOutcome(StrEnum):
    """What became of one leased file this run."""

    PARSED = "parsed"  # parsed (cleanly or not) and stored
    UNCHANGED = "unchanged"  # same bytes as its last clean parse: only re-armed
    STALE = "stale"  # our lease was taken over before we stored: result dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class FileReport:
    """One leased file: how long parsing took, what it held, what was stored."""

    path: str
    outcome: FileOutcome
    duration_s: float
    dag_ids: tuple[str, ...] = ()
    error: str | None = None
    stored: StoredFile | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryReport:
    """One listing of the dags folder."""

    files: int
    new_or_back: int
    removed: tuple[str, ...] = ()
    deactivated_dags: tuple[str, ...] = ()
    released_leases: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseReport:
    """What one run of the parse step did; totals are set on runs that refresh them."""

    files: tuple[FileReport, ...] = ()
    discovery: DiscoveryReport | None = None
    dag_bag_size: int | None = None
    import_errors_total: int | None = None

    @property
    def files_parsed(self) -> int:
        """Files parsed and stored this run."""
        return sum(f.outcome is FileOutcome.PARSED for f in self.files)

    @property
    def dags_found(self) -> int:
        """DAGs found in the files parsed this run."""
        return sum(len(f.dag_ids) for f in self.files if f.outcome is FileOutcome.PARSED)

    @property
    def import_errors(self) -> int:
        """Files parsed this run that have an import error."""
        return sum(f.error is not None for f in self.files if f.outcome is FileOutcome.PARSED)

    @property
    def durations(self) -> Mapping[str, float]:
        """Parse seconds per file (the `dag_processing.last_duration` metric)."""
        return {f.path: f.duration_s for f in self.files}

    @property
    def total_parse_time_s(self) -> float:
        """Seconds spent parsing this run (the `dag_processing.total_parse_time` metric)."""
        return sum(f.duration_s for f in self.files)


# ------------------------------------------------------------------------- runner's output
def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _crash(path: str, code: int, stderr: bytes, parse_ms: float, what: str) -> FileResult:
    tail = stderr.decode("utf-8", errors="replace")[-_STDERR_TAIL:].rstrip()
    message = f"the parser of {path} {what} ({_exit_description(code)})"
    return FileResult(path=path, error=f"{message}\n{tail}" if tail else message, parse_ms=parse_ms)


def decode_runner_output(
    path: str, returncode: int, stdout: bytes, stderr: bytes, parse_ms: float
) -> FileResult:
    """The parse subprocess's exit status and output as one file's result."""
    if returncode != 0:
        return _crash(path, returncode, stderr, parse_ms, "crashed")
    try:
        doc = json.loads(stdout)
        raw_dags, error, file_hash = doc["dags"], doc["error"], doc["file_hash"]
        if not isinstance(raw_dags, list) or not isinstance(error, str | None):
            raise TypeError("malformed document")
    except (ValueError, KeyError, TypeError):
        return _crash(path, returncode, stderr, parse_ms, "printed no valid result")
    errors = [error] if error else []
    dags: list[ParsedDag] = []
    for data in raw_dags:
        try:
            spec = spec_from_dict(data)
        except SerializationError as exc:
            errors.append(f"SerializationError: {exc}")
            continue
        dags.append(ParsedDag(spec=spec, data=data, spec_hash=spec_hash(spec)))
    return FileResult(
        path=path,
        dags=tuple(dags),
        error="\n".join(errors) or None,
        file_hash=str(file_hash) if file_hash else None,
        parse_ms=parse_ms,
    )


# ------------------------------------------------------------------------------ processor
class DagFileProcessor:
    """The parse step; `run_once(now)` is one bounded iteration of it."""

    def __init__(self, db: Database, options: ProcessorOptions, member_id: str) -> None:
        self.db = db
        self.options = options
        self.member_id = member_id
        self._listed_at: datetime | None = None

    @property
    def _interval(self) -> timedelta:
        return timedelta(seconds=self.options.parse_interval_s)

    def run_once(self, now: datetime) -> ParseReport:
        """List the folder if an interval has passed, then lease, parse and store due files."""
        discovery, bag_size, errors_total = self._maybe_discover(now)
        lease_until = now + timedelta(
            seconds=self.options.parse_timeout_s + self.options.lease_margin_s
        )
        claimed = self.db.transaction(
            lambda conn: store.claim_due_files(
                conn,
                member_id=self.member_id,
                now=now,
                lease_until=lease_until,
                limit=self.options.max_files_per_run,
            )
        )
        files = self._process(claimed, now) if claimed else ()
        return ParseReport(
            files=files,
            discovery=discovery,
            dag_bag_size=bag_size,
            import_errors_total=errors_total,
        )

    def idle_s(self, now: datetime, cap_s: float) -> float:
        """How long the parse step may sleep after a pass that found nothing: until a file
        can next be leased (so every replica wakes when files fall due and they share them,
        where a fixed sleep let one replica's phase take every file), `cap_s` at most."""
        due = self.db.read(
            lambda conn: store.next_claimable_at(conn, member_id=self.member_id, now=now)
        )
        if due is None:
            return cap_s
        return min(cap_s, max(_MIN_IDLE_S, (due - now).total_seconds()))

    # -- discovery ------------------------------------------------------------------------
    def _maybe_discover(
        self, now: datetime
    ) -> tuple[DiscoveryReport | None, int | None, int | None]:
        if self._listed_at is not None and now < self._listed_at + self._interval:
            return None, None, None
        self._listed_at = now
        report = self.discover(now)
        bag_size, errors_total = self.db.read(
            lambda conn: (
                store.count_active_dags(conn, cap=_COUNT_CAP),
                store.count_import_errors(conn, cap=_COUNT_CAP),
            )
        )
        return report, bag_size, errors_total

    def discover(self, now: datetime) -> DiscoveryReport | None:
        """List the dags folder and sync dag_file rows, if this replica wins this interval's
        listing lease; None when another replica has it or the folder is missing."""
        folder = self.options.dags_folder
        if not folder.is_dir():
            # An unmounted folder must not read as "every file deleted".
            log.warning("dags folder %s not found", folder, extra={"event": "dags_folder_missing"})
            return None
        won = self.db.transaction(
            lambda conn: store.claim_discovery(
                conn, member_id=self.member_id, now=now, until=now + self._interval
            )
        )
        if not won:
            return None
        paths = list_dag_files(folder, safe_mode=self.options.safe_mode)
        if self.options.load_examples and EXAMPLES_FOLDER.resolve() != folder.resolve():
            examples = list_dag_files(EXAMPLES_FOLDER, safe_mode=self.options.safe_mode)
            paths = sorted({*paths, *examples})

        def sync(conn: Any) -> DiscoveryReport:
            back = store.upsert_present_files(conn, paths, now=now)
            removed, dag_ids = store.mark_missing_files(
                conn, paths, limit=self.options.max_missing_per_run
            )
            released = store.release_dead_leases(
                conn, member_id=self.member_id, limit=self.options.max_missing_per_run
            )
            return DiscoveryReport(
                files=len(paths),
                new_or_back=back,
                removed=tuple(removed),
                deactivated_dags=tuple(dag_ids),
                released_leases=released,
            )

        report = self.db.transaction(sync)
        for path in report.removed:
            log.info("DAG file %s is gone", path, extra={"event": "dag_file_removed"})
        return report

    # -- parsing --------------------------------------------------------------------------
    def _process(self, claimed: Sequence[DagFileRow], now: datetime) -> tuple[FileReport, ...]:
        # Files are parsed in parallel so the whole batch ends within one parse timeout, which
        # is what each file's lease covers.
        with ThreadPoolExecutor(max_workers=len(claimed), thread_name_prefix="dag-parse") as pool:
            futures = [(row, pool.submit(self._parse_or_skip, row)) for row in claimed]
            return tuple(self._store(row, future.result(), now) for row, future in futures)

    def _parse_or_skip(self, row: DagFileRow) -> FileResult | None:
        """The file's parse result, or None when its bytes are those of its last clean parse."""
        if self.options.skip_unchanged and row.content_hash is not None:
            try:
                current = hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
            except OSError:
                current = None
            if current == row.content_hash:
                return None
        return self._run_parser(row.path)

    def _run_parser(self, path: str) -> FileResult:
        command = [
            self.options.python,
            "-m",
            _RUNNER,
            path,
            "--dags-folder",
            str(self.options.dags_folder.absolute()),
            "--default-timezone",
            self.options.default_timezone,
            "--catchup-by-default",
            "true" if self.options.catchup_by_default else "false",
        ]
        started = time.monotonic()
        # Its own session, so that a timeout kills whatever the DAG file started too.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=self.options.parse_timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return FileResult(path=path, error=self._timeout_message(path), parse_ms=_ms(started))
        return decode_runner_output(path, proc.returncode, stdout, stderr, _ms(started))

    def _timeout_message(self, path: str) -> str:
        return (
            f"DagFileTimeout: parsing {path} timed out after {self.options.parse_timeout_s:g}s "
            "and was killed; keep the top-level code of DAG files fast (no network calls, no "
            "heavy imports at module level)"
        )

    # -- storing --------------------------------------------------------------------------
    def _store(self, row: DagFileRow, result: FileResult | None, now: datetime) -> FileReport:
        if result is None:
            return self._rearm(row.path, now)
        stored = self._apply(result, now)
        if result.error is not None:
            log.warning(
                "import error in %s: %s",
                result.path,
                result.error.splitlines()[-1] if result.error.strip() else "",
                extra={"event": "dag_import_error", "path": result.path},
            )
        return FileReport(
            path=result.path,
            outcome=FileOutcome.PARSED if stored is not None else FileOutcome.STALE,
            duration_s=result.parse_ms / 1000,
            dag_ids=tuple(d.spec.dag_id for d in result.dags),
            error=result.error,
            stored=stored,
        )

    def _apply(self, result: FileResult, now: datetime) -> StoredFile | None:
        def write(conn: Any, what: FileResult) -> StoredFile | None:
            return store.store_file_result(
                conn,
                what,
                member_id=self.member_id,
                now=now,
                next_parse_at=now + self._interval,
                paused_at_creation=self.options.paused_at_creation,
            )

        try:
            return self.db.transaction(lambda conn: write(conn, result))
        except (DagDefinitionError, BadInputError) as exc:
            # A DAG that parsed but cannot be scheduled (e.g. its next run cannot be computed)
            # is that file's import error like any other.
            failed = FileResult(
                path=result.path,
                error=f"{type(exc).__name__}: {exc}",
                parse_ms=result.parse_ms,
            )
            return self.db.transaction(lambda conn: write(conn, failed))

    def _rearm(self, path: str, now: datetime) -> FileReport:
        kept = self.db.transaction(
            lambda conn: store.rearm_file(
                conn, path, member_id=self.member_id, next_parse_at=now + self._interval
            )
        )
        return FileReport(
            path=path,
            outcome=FileOutcome.UNCHANGED if kept else FileOutcome.STALE,
            duration_s=0.0,
        )


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        # A grandchild that left the session still holds the pipes; stop waiting for it.
        proc.kill()
        proc.wait()
