"""An in-process cache of deserialized DAGs keyed by spec hash, so each loop reads only the
hashes and decodes a DAG's JSON again only when it changed."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

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
        self._payloads: dict[str, Mapping[str, Any]] = {}  # dag_id -> its stored JSON
        self._task_json: dict[tuple[str, str], str] = {}

    def get_many(self, conn: Connection, dag_ids: Sequence[str]) -> dict[str, DagSpec]:
        """The current spec of each DAG that has one (DAGs never parsed are left out)."""
        ids = sorted(set(dag_ids))
        hashes = spec_hashes(conn, ids)
        with self._lock:
            stale = [d for d, h in hashes.items() if self._specs.get(d, ("",))[0] != h]
        if stale:
            rows = spec_payloads(conn, stale)
            fresh = {
                d: (row.spec_hash, spec_from_dict(row.data), row.file_hash)
                for d, row in rows.items()
            }
            with self._lock:
                self._specs.update(fresh)
                for d, row in rows.items():
                    self._payloads[d] = row.data
                    for key in [k for k in self._task_json if k[0] == d]:
                        del self._task_json[key]
        with self._lock:
            return {d: self._specs[d][1] for d in hashes if d in self._specs}

    def file_hash(self, dag_id: str) -> str | None:
        """The hash of the DAG file the cached spec came from."""
        with self._lock:
            entry = self._specs.get(dag_id)
        return None if entry is None else entry[2]

    def task_json(self, dag_id: str, task_id: str) -> str | None:
        """The task's canonical JSON (what the DAG's codec stored for it, as task_json of an
        ExecuteRequest wants it), taken from the cached DAG's stored form instead of encoding
        the task again; None when the cache does not hold it."""
        key = (dag_id, task_id)
        with self._lock:
            found = self._task_json.get(key)
            payload = self._payloads.get(dag_id)
        if found is not None or payload is None:
            return found
        tasks = payload.get("dag", {}).get("tasks", []) if isinstance(payload, Mapping) else []
        entry = next(
            (t for t in tasks if isinstance(t, Mapping) and t.get("task_id") == task_id), None
        )
        if entry is None:
            return None
        text = json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False)
        with self._lock:
            if self._payloads.get(dag_id) is payload:  # not replaced meanwhile
                self._task_json[key] = text
        return text
