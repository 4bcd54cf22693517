"""Reading serialized DAGs: the scheduler decides with these, never with DAG files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.schema import serialized_dag

__all__ = ["SerializedRow", "spec_hashes", "spec_payloads"]

sd = serialized_dag


@dataclass(frozen=True, slots=True, kw_only=True)
class SerializedRow:
    """One stored serialized DAG."""

    dag_id: str
    spec_hash: str
    file_hash: str
    data: Any


def spec_hashes(conn: Connection, dag_ids: Sequence[str]) -> dict[str, str]:
    """The current spec hash of each DAG (cheap: lets callers skip unchanged payloads)."""
    if not dag_ids:
        return {}
    rows = conn.execute(
        sa.select(sd.c.dag_id, sd.c.spec_hash).where(sd.c.dag_id.in_(list(dag_ids)))
    )
    return {d: h for d, h in rows}


def spec_payloads(conn: Connection, dag_ids: Sequence[str]) -> dict[str, SerializedRow]:
    """The serialized JSON of each DAG."""
    if not dag_ids:
        return {}
    rows = conn.execute(
        sa.select(sd.c.dag_id, sd.c.spec_hash, sd.c.file_hash, sd.c.data).where(
            sd.c.dag_id.in_(list(dag_ids))
        )
    ).mappings()
    return {
        r["dag_id"]: SerializedRow(
            dag_id=r["dag_id"], spec_hash=r["spec_hash"], file_hash=r["file_hash"], data=r["data"]
        )
        for r in rows
    }
