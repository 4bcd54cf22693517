"""Rows for store tests, inserted with plain SQL so tests do not depend on the code under test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tradewind_cluster.store.schema import dag, dag_run, task_instance

__all__ = ["T0", "insert_dag", "insert_run", "insert_ti"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def insert_dag(
    conn: Connection, dag_id: str, *, due: datetime | None = T0, **values: object
) -> None:
    """A registered, active, unpaused DAG whose next run is due at `due`."""
    conn.execute(
        sa.insert(dag).values(
            dag_id=dag_id, fileloc=f"/dags/{dag_id}.py", next_dagrun_create_after=due, **values
        )
    )


def insert_run(
    conn: Connection,
    dag_id: str,
    *,
    day: int = 0,
    run_id: str | None = None,
    state: str = "running",
) -> int:
    """A run of dag_id at T0 + day; returns its primary key."""
    logical = T0 + timedelta(days=day)
    result = conn.execute(
        sa.insert(dag_run)
        .values(
            dag_id=dag_id,
            run_id=run_id or f"scheduled__{logical.isoformat()}",
            logical_date=logical,
            run_type="scheduled",
            state=state,
        )
        .returning(dag_run.c.id)
    )
    return int(result.scalar_one())


def insert_ti(
    conn: Connection,
    run_pk: int,
    task_id: str,
    *,
    state: str = "none",
    token: int = 0,
    **values: object,
) -> int:
    """A task instance of the run; returns its primary key."""
    run = conn.execute(sa.select(dag_run).where(dag_run.c.id == run_pk)).mappings().one()
    result = conn.execute(
        sa.insert(task_instance)
        .values(
            run_pk=run_pk,
            dag_id=run["dag_id"],
            run_id=run["run_id"],
            task_id=task_id,
            logical_date=run["logical_date"],
            state=state,
            token=token,
            **values,
        )
        .returning(task_instance.c.id)
    )
    return int(result.scalar_one())
