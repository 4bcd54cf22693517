"""An in-process cache of deserialized DAGs keyed by spec hash, so each loop reads only the
hashes and decodes a DAG's JSON again only when it changed."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tradewind.serialization import spec_from_dict
from tradewind.spec import DagSpec
from tradewind_cluster.store.database import Connection
from tradewind_cluster.store.serialized import spec_hashes, spec_payloads

__all__ = ["SpecCache"]


class SpecCache:
    """dag_id → (hash, DagSpec, file hash). Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, tuple[str, DagSpec, str]] = {}

    def get_many(self, conn: Connection, dag_ids: Sequence[str]) -> dict[str, DagSpec]:
        """The current spec of each DAG that has one (DAGs never parsed are left out)."""
        ids = sorted(set(dag_ids))
        hashes = spec_hashes(conn, ids)
        with self._lock:
            stale = [d for d, h in hashes.items() if self._specs.get(d, ("",))[0] != h]
        if stale:
            fresh = {
                d: (row.spec_hash, spec_from_dict(row.data), row.file_hash)
                for d, row in spec_payloads(conn, stale).items()
            }
            with self._lock:
                self._specs.update(fresh)
        with self._lock:
            return {d: self._specs[d][1] for d in hashes if d in self._specs}

    def file_hash(self, dag_id: str) -> str | None:
        """The hash of the DAG file the cached spec came from."""
        with self._lock:
            entry = self._specs.get(dag_id)
        return None if entry is None else entry[2]
