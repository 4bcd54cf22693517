"""DAG serialization: an authored DAG becomes a validated DagSpec (cycles checked, priority
weights computed, operator arguments reduced to JSON), stored as versioned canonical JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tradewind.baseoperator import BaseOperator
from tradewind.dag import DAG
from tradewind.errors import SerializationError
from tradewind.priority import priority_weight_totals
from tradewind.spec import DagSpec, TaskSpec
from tradewind.spec_codec import (
    SERIALIZATION_VERSION,
    check_json,
    spec_from_dict,
    spec_from_json,
    spec_hash,
    spec_to_dict,
    spec_to_json,
)
from tradewind.xcomarg import encode_xcomargs

__all__ = [
    "SERIALIZATION_VERSION",
    "dag_to_spec",
    "spec_from_dict",
    "spec_from_json",
    "spec_hash",
    "spec_to_dict",
    "spec_to_json",
]


def _json_argument(value: Any, *, dag_id: str, task_id: str, field: str) -> Any:
    encoded = encode_xcomargs(value)
    try:
        check_json(encoded, field)
    except SerializationError as exc:
        raise SerializationError(
            f"task {task_id!r} of DAG {dag_id!r}: argument {field!r} cannot be serialized "
            f"({str(exc).removeprefix('serialized DAG: ')}); operator arguments must be "
            "None, bool, int, float, str, or lists / str-keyed dicts of those"
        ) from None
    return encoded


def _task_fields(dag: DAG, task: BaseOperator) -> dict[str, Any]:
    raw = task.serialize_fields()
    if task.params != dag.params:
        raw["params"] = task.params  # the worker renders templates with the task's params
    return {
        name: _json_argument(value, dag_id=dag.dag_id, task_id=task.task_id, field=name)
        for name, value in raw.items()
    }


def _doc(task: BaseOperator) -> str | None:
    for doc in (task.doc_md, task.doc, task.doc_rst, task.doc_json, task.doc_yaml):
        if doc is not None:
            return str(doc)
    return None


def _task_spec(dag: DAG, task: BaseOperator, priority_weight_total: int) -> TaskSpec:
    return TaskSpec(
        task_id=task.task_id,
        operator=task.operator_name,
        kind=task.task_kind,
        upstream_task_ids=tuple(sorted(task.upstream_task_ids)),
        downstream_task_ids=tuple(sorted(task.downstream_task_ids)),
        trigger_rule=task.trigger_rule,
        retries=task.retries,
        retry_delay=task.retry_delay,
        retry_exponential_backoff=task.retry_exponential_backoff,
        max_retry_delay=task.max_retry_delay,
        execution_timeout=task.execution_timeout,
        depends_on_past=task.depends_on_past,
        pool=task.pool,
        pool_slots=task.pool_slots,
        priority_weight=task.priority_weight,
        weight_rule=task.weight_rule,
        priority_weight_total=priority_weight_total,
        queue=task.queue,
        max_active_tis_per_dag=task.max_active_tis_per_dag,
        do_xcom_push=task.do_xcom_push,
        owner=task.owner,
        doc=_doc(task),
        branching=task.branching,
        ignore_downstream_trigger_rules=bool(
            getattr(task, "ignore_downstream_trigger_rules", True)
        ),
        template_fields=tuple(task.template_fields),
        fields=_task_fields(dag, task),
    )


def _time_restriction(dag: DAG) -> tuple[datetime | None, datetime | None]:
    """The DAG's effective first and last logical dates, as Airflow's _time_restriction:
    task dates only matter where the DAG sets none (tasks are clipped to the DAG's)."""
    start = dag.start_date
    if start is None:
        start = min((t.start_date for t in dag.tasks if t.start_date is not None), default=None)
    end = dag.end_date
    task_ends = [t.end_date for t in dag.tasks if t.end_date is not None]
    if end is None and task_ends and len(task_ends) == dag.task_count:
        end = max(task_ends)
    return start, end


def dag_to_spec(dag: DAG) -> DagSpec:
    """Validate `dag` (CycleError, dangling edges) and build its DagSpec, tasks in
    topological order; SerializationError names a task argument that is not JSON."""
    dag.validate()
    order = [task.task_id for task in dag.topological_sort()]
    totals = priority_weight_totals(
        dag.task_ids,
        dag.downstream_map(),
        {tid: task.priority_weight for tid, task in dag.task_dict.items()},
        {tid: task.weight_rule for tid, task in dag.task_dict.items()},
        dag_id=dag.dag_id,
    )
    params = encode_xcomargs(dag.params)  # a fresh copy, tuples as lists
    try:
        check_json(params, "params")
    except SerializationError as exc:
        raise SerializationError(f"DAG {dag.dag_id!r}: {exc}") from None
    start, end = _time_restriction(dag)
    return DagSpec(
        dag_id=dag.dag_id,
        fileloc=dag.fileloc,
        schedule=dag.schedule,
        start_date=start,
        end_date=end,
        timezone=dag.timezone,
        catchup=dag.catchup,
        max_active_runs=dag.max_active_runs,
        max_active_tasks=dag.max_active_tasks,
        dagrun_timeout=dag.dagrun_timeout,
        description=dag.description,
        tags=dag.tags,
        params=params,
        is_paused_upon_creation=dag.is_paused_upon_creation,
        tasks={tid: _task_spec(dag, dag.task_dict[tid], totals[tid]) for tid in order},
    )
