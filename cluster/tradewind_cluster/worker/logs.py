"""Attempt logs on the worker: where each attempt's output is written (Airflow's
dag_id=/run_id=/task_id=/attempt=N.log layout under <home>/logs), shipping new bytes to a
scheduler in chunks while the attempt runs and after it ends, and reading them for Tail."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tradewind.errors import BadInputError, RetryableError
from tradewind_cluster.worker.link import SchedulerLink
from tradewind_proto.v1 import common_pb2, scheduler_pb2

__all__ = [
    "LogShipper",
    "attempt_log_path",
    "read_chunks",
    "split_utf8",
    "tail_file",
    "utf8_complete",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
_SEQ_MEMORY = 10_000


def _part(value: str) -> str:
    safe = value.replace("/", "_").replace("\\", "_").replace("\0", "_")
    return f"_{safe}" if safe in ("", ".", "..") else safe


def attempt_log_path(
    logs_dir: Path, dag_id: str, run_id: str, task_id: str, try_number: int
) -> Path:
    """<logs>/dag_id=<d>/run_id=<r>/task_id=<t>/attempt=<n>.log, path separators neutralised."""
    return (
        logs_dir
        / f"dag_id={_part(dag_id)}"
        / f"run_id={_part(run_id)}"
        / f"task_id={_part(task_id)}"
        / f"attempt={int(try_number)}.log"
    )


def utf8_complete(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
        return end if back >= need or byte < 0x80 else end - back
    return end


def split_utf8(data: bytes, size: int) -> list[bytes]:
    """`data` in pieces of at most `size` bytes, never cutting a UTF-8 character in two."""
    pieces: list[bytes] = []
    while data:
        cut = len(data) if len(data) <= size else utf8_complete(data[:size]) or size
        pieces.append(data[:cut])
        data = data[cut:]
    return pieces


def read_chunks(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to `limit` bytes of the file from `offset`; (data, new offset)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


@dataclass(slots=True)
class _Shipping:
    ti_id: int
    token: int
    try_number: int
    path: Path
    offset: int
    seq: int = 0
    final: bool = False


class LogShipper:
    """Ships each tracked attempt's new log bytes with ShipLogs; a failed call is retried on the
    next pass from the same offset, so chunks are neither lost nor duplicated by this worker."""

    def __init__(
        self, link: SchedulerLink, *, max_message_bytes: int, call_timeout_s: float
    ) -> None:
        self._link = link
        self._timeout_s = call_timeout_s
        # Leave room for the message envelope: one call carries at most half the limit.
        self._budget = max(CHUNK_BYTES, max_message_bytes // 2)
        self._lock = threading.Lock()
        self._pass = threading.Lock()  # one pass at a time, or two could ship the same bytes
        self._tracked: dict[str, _Shipping] = {}
        # Chunks are keyed by (ti_id, try_number, seq): a later attempt of the same try (a new
        # token) appends to the same file and must continue its numbering, not restart it.
        self._next_seq: collections.OrderedDict[Path, int] = collections.OrderedDict()

    def track(self, key: str, *, ti_id: int, token: int, try_number: int, path: Path) -> int:
        """Start shipping a new attempt's log from the file's current end (returned)."""
        offset = path.stat().st_size if path.exists() else 0
        with self._lock:
            self._tracked[key] = _Shipping(
                ti_id=ti_id,
                token=token,
                try_number=try_number,
                path=path,
                offset=offset,
                seq=self._next_seq.get(path, 0),
            )
        return offset

    def finish(self, key: str) -> None:
        """The attempt ended: ship the rest, then forget it."""
        with self._lock:
            found = self._tracked.get(key)
            if found is not None:
                found.final = True

    def tracked(self) -> int:
        """Attempts with bytes possibly left to ship."""
        with self._lock:
            return len(self._tracked)

    def ship_once(self) -> int:
        """One pass over every tracked attempt; returns the number of chunks stored."""
        with self._pass:
            return self._pass_once()

    def _pass_once(self) -> int:
        """New bytes of every tracked attempt (up to the budget) in one ShipLogs call; on
        success each attempt's offset moves on, on failure none does (the next pass resends)."""
        with self._lock:
            items = list(self._tracked.items())
        budget = self._budget
        # key, shipping, bytes, chunks, and whether it had ended when its bytes were read: only
        # then is "nothing left" final (it may write its last lines while the call is out)
        batch: list[tuple[str, _Shipping, int, int, bool]] = []
        chunks: list[scheduler_pb2.LogChunk] = []
        for key, shipping in items:
            if budget <= 0:
                break
            ended = shipping.final
            data = self._pending(shipping, budget, final=ended)
            pieces = split_utf8(data, CHUNK_BYTES)
            ref = common_pb2.AttemptRef(ti_id=shipping.ti_id, token=shipping.token)
            chunks.extend(
                scheduler_pb2.LogChunk(
                    attempt=ref,
                    try_number=shipping.try_number,
                    seq=shipping.seq + i,
                    data=piece.decode("utf-8", errors="replace"),
                )
                for i, piece in enumerate(pieces)
            )
            batch.append((key, shipping, len(data), len(pieces), ended))
            budget -= len(data)
        if chunks:
            try:
                self._link.call(
                    "ShipLogs",
                    scheduler_pb2.LogChunksRequest(chunks=chunks),
                    timeout_s=self._timeout_s,
                )
            except (RetryableError, BadInputError) as exc:
                log.debug("log shipping deferred: %s", exc)
                return 0
        for key, shipping, size, count, ended in batch:
            shipping.offset += size
            shipping.seq += count
            with self._lock:
                if count:
                    self._next_seq[shipping.path] = shipping.seq
                    self._next_seq.move_to_end(shipping.path)
                    while len(self._next_seq) > _SEQ_MEMORY:
                        self._next_seq.popitem(last=False)
                if ended and size == 0:
                    self._tracked.pop(key, None)
        return len(chunks)

    def _pending(self, shipping: _Shipping, budget: int, *, final: bool) -> bytes:
        """The attempt's bytes not yet shipped, never ending inside a character while it runs."""
        data, _ = read_chunks(shipping.path, shipping.offset, budget)
        cut = len(data) if final else utf8_complete(data)
        return data[:cut]

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Ship every interval until stopped."""
        while not stop.wait(interval_s):
            try:
                self.ship_once()
            except Exception:  # the shipper must outlive any one failure
                log.exception("log shipping pass failed")


def tail_file(path: Path, offset: int = 0) -> Iterator[bytes]:
    """The file's bytes from offset, in chunks (for Tail)."""
    while True:
        data, offset = read_chunks(path, offset, CHUNK_BYTES)
        if not data:
            return
        yield data
