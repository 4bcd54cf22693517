"""Registering DAGs in the store the way the parser does, for tests that do not parse files."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from tradewind.dag import DAG
from tradewind.schedules import RunType, manual_data_interval, run_id_for
from tradewind.scheduling.runs import due_runs
from tradewind.serialization import dag_to_spec, spec_hash, spec_to_dict
from tradewind.spec import DagSpec
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.runs import NewRun, trigger_run
from tradewind_cluster.store.schema import dag as dag_table
from tradewind_cluster.store.schema import serialized_dag

__all__ = ["register", "trigger"]


def register(db: Database, dag: DAG | DagSpec, *, now: datetime, paused: bool = False) -> DagSpec:
    """Upsert the dag and serialized_dag rows for a DAG, as a parse would."""
    spec = dag if isinstance(dag, DagSpec) else dag_to_spec(dag)
    first = due_runs(spec, None, now, 0, 1)
    nxt = first.runs[0] if first.runs else first.next_run

    def apply(conn: sa.Connection) -> None:
        values = {
            "dag_id": spec.dag_id,
            "fileloc": spec.fileloc,
            "is_paused": paused,
            "max_active_runs": spec.max_active_runs,
            "max_active_tasks": spec.max_active_tasks,
            "schedule_label": spec.schedule.label,
            "next_dagrun_create_after": nxt.run_after if nxt else None,
        }
        conn.execute(
            pg_insert(dag_table)
            .values(values)
            .on_conflict_do_update(index_elements=["dag_id"], set_=values)
        )
        sd = {
            "dag_id": spec.dag_id,
            "fileloc": spec.fileloc,
            "data": spec_to_dict(spec),
            "spec_hash": spec_hash(spec),
            "file_hash": "test",
        }
        conn.execute(
            pg_insert(serialized_dag)
            .values(sd)
            .on_conflict_do_update(index_elements=["dag_id"], set_=sd)
        )

    db.transaction(apply)
    return spec


def trigger(
    db: Database, spec: DagSpec, logical_date: datetime, conf: dict[str, object] | None = None
) -> int:
    """Trigger a manual run, as `tradewind dags trigger` does."""
    interval = manual_data_interval(spec, logical_date)
    run = NewRun(
        run_id=run_id_for(RunType.MANUAL, logical_date),
        logical_date=logical_date,
        data_interval_start=interval.start,
        data_interval_end=interval.end,
        run_type=RunType.MANUAL.value,
        conf=conf,
    )
    pk = db.transaction(lambda c: trigger_run(c, spec.dag_id, run, created_by="test"))
    assert pk is not None
    return pk
