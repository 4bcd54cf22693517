"""The ExecuteRequest a worker gets for an attempt, and a task's canonical JSON in it: what the
dispatcher sends, built from the dispatch step's requests."""

from __future__ import annotations

import json
from dataclasses import replace

from tradewind.serialization import spec_to_dict
from tradewind.spec import DagSpec, ScheduleKind, ScheduleSpec, TaskSpec
from tradewind_cluster.scheduler.dispatching import DispatchRequest
from tradewind_cluster.scheduler.specs import canonical_task_json
from tradewind_proto.v1 import common_pb2, worker_pb2

__all__ = ["build_execute_request", "task_to_json"]

# A DagSpec shell around one task: the TaskSpec JSON is exactly what the DagSpec codec writes
# for that task, so it stays in step with spec_codec without reaching into its internals.
_SHELL = DagSpec(
    dag_id="_", fileloc="", schedule=ScheduleSpec(kind=ScheduleKind.NONE, label="None")
)


def task_to_json(task: TaskSpec) -> str:
    """One TaskSpec as canonical JSON (the DagSpec codec's form of a task) for task_json, when
    the spec cache has not got it already (CachedDag.task_json). The worker reads it back with
    worker.runtime.decode_task."""
    data = spec_to_dict(replace(_SHELL, tasks={task.task_id: task}))["dag"]["tasks"][0]
    return canonical_task_json(data)


def build_execute_request(
    req: DispatchRequest, *, traceparent: str | None = None
) -> worker_pb2.ExecuteRequest:
    """The ExecuteRequest for one attempt: everything the worker needs, nothing it must ask
    (`traceparent`: its task.dispatch span, for a batch, where call metadata is shared)."""
    a, task = req.attempt, req.task
    timeout = task.execution_timeout.total_seconds() if task.execution_timeout else 0.0
    return worker_pb2.ExecuteRequest(
        attempt=common_pb2.AttemptRef(ti_id=a.ti_id, token=a.token),
        dag_id=a.dag_id,
        run_id=a.run_id,
        task_id=a.task_id,
        try_number=a.try_number,
        logical_date=a.logical_date.isoformat(),
        fileloc=req.dag.fileloc,
        file_hash=req.file_hash,
        task_json=req.task_json or task_to_json(task),
        context_json=json.dumps(dict(req.run_context), sort_keys=True, allow_nan=False),
        execution_timeout_s=timeout,
        queue=a.queue,
        traceparent=traceparent or "",
    )
