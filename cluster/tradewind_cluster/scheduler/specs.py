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

__all__ = ["CachedDag", "SpecCache", "canonical_task_json"]


class CachedDag:
    """One stored version of a DAG: its decoded spec, the hash of the file it came from and
    its tasks' canonical JSON, all of the same version (dispatch takes them together)."""

    __slots__ = ("_task_json", "file_hash", "payload", "spec", "spec_hash")

    def __init__(
        self, spec_hash: str, spec: DagSpec, file_hash: str, payload: Mapping[str, Any]
    ) -> None:
        self.spec_hash = spec_hash
        self.spec = spec
        self.file_hash = file_hash
        self.payload = payload
        self._task_json: dict[str, str] | None = None

    def task_json(self, task_id: str) -> str | None:
        """The task's canonical JSON (what the DAG's codec stored for it, as task_json of an
        ExecuteRequest wants it), taken from the stored form instead of encoding the task
        again; None for a task this version has not got."""
        tasks = self._task_json
        if tasks is None:  # worked out once per version (twice at worst: same result)
            payload = self.payload
            stored = payload.get("dag", {}).get("tasks", []) if isinstance(payload, Mapping) else []
            tasks = self._task_json = {
                t["task_id"]: canonical_task_json(t)
                for t in stored
                if isinstance(t, Mapping) and isinstance(t.get("task_id"), str)
            }
        return tasks.get(task_id)


class SpecCache:
    """dag_id → its CachedDag, refreshed when the stored spec hash changes. Safe to share
    between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, CachedDag] = {}

    def entries(self, conn: Connection, dag_ids: Sequence[str]) -> dict[str, CachedDag]:
        """The current version of each DAG that has one (DAGs never parsed are left out)."""
        return self.for_hashes(conn, spec_hashes(conn, sorted(set(dag_ids))))

    def for_hashes(self, conn: Connection, hashes: Mapping[str, str]) -> dict[str, CachedDag]:
        """The version of each DAG with the given current spec hash (read by the caller along
        with something else); only a DAG whose hash changed is read and decoded again."""
        known, stale = self._lookup(hashes)
        if stale:
            rows = spec_payloads(conn, stale)
            fresh = {
                d: CachedDag(row.spec_hash, spec_from_dict(row.data), row.file_hash, row.data)
                for d, row in rows.items()
            }
            with self._lock:
                self._entries.update(fresh)
            known.update(fresh)
        return {d: e for d, e in known.items() if e is not None}

    def cached(self, hashes: Mapping[str, str]) -> dict[str, CachedDag] | None:
        """The version of each DAG with the given spec hash when every one is in the cache
        already (no statement needed), else None."""
        known, stale = self._lookup(hashes)
        return None if stale else {d: e for d, e in known.items() if e is not None}

    def latest(self, dag_id: str) -> CachedDag | None:
        """Whatever version of the DAG the cache holds (the caller checks it is current)."""
        with self._lock:
            return self._entries.get(dag_id)

    def _lookup(self, hashes: Mapping[str, str]) -> tuple[dict[str, CachedDag | None], list[str]]:
        """The cached entry of each DAG, and the DAGs whose entry is missing or of another
        version."""
        with self._lock:
            known = {d: self._entries.get(d) for d in hashes}
        stale = [d for d, h in hashes.items() if (e := known[d]) is None or e.spec_hash != h]
        return known, stale

    def get_many(self, conn: Connection, dag_ids: Sequence[str]) -> dict[str, DagSpec]:
        """The current spec of each DAG that has one (DAGs never parsed are left out)."""
        return {d: e.spec for d, e in self.entries(conn, dag_ids).items()}


def canonical_task_json(data: Mapping[str, Any]) -> str:
    """A task as the DagSpec codec encodes it, in canonical JSON text (sorted keys, no spaces):
    the form of an ExecuteRequest's task_json."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
