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

__all__ = ["SpecCache", "canonical_task_json"]


class SpecCache:
    """dag_id → (hash, DagSpec, file hash). Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, tuple[str, DagSpec, str]] = {}
        self._payloads: dict[str, Mapping[str, Any]] = {}  # dag_id -> its stored JSON
        self._task_json: dict[str, dict[str, str]] = {}  # dag_id -> task_id -> its JSON

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
                    self._task_json.pop(d, None)
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
        with self._lock:
            tasks = self._task_json.get(dag_id)
            payload = self._payloads.get(dag_id)
        if tasks is None:
            if payload is None:
                return None
            stored = payload.get("dag", {}).get("tasks", []) if isinstance(payload, Mapping) else []
            tasks = {
                t["task_id"]: canonical_task_json(t)
                for t in stored
                if isinstance(t, Mapping) and isinstance(t.get("task_id"), str)
            }
            with self._lock:
                if self._payloads.get(dag_id) is payload:  # not replaced meanwhile
                    self._task_json[dag_id] = tasks
        return tasks.get(task_id)


def canonical_task_json(data: Mapping[str, Any]) -> str:
    """A task as the DagSpec codec encodes it, in canonical JSON text (sorted keys, no spaces):
    the form of an ExecuteRequest's task_json."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
