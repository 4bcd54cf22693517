"""The template context of a running task, with Airflow 2's names (ds, ts, logical_date,
data_interval_*, run_id, dag_run, ti, params, var, macros...), built from the run information the
scheduler sends (ExecuteRequest.context_json); and the AIRFLOW_CTX_* environment variables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tradewind.errors import BadInputError
from tradewind.models import Variable
from tradewind_cluster.worker.templating import macros_namespace

__all__ = [
    "DagRunView",
    "DagView",
    "RunInfo",
    "TaskView",
    "VariableAccessor",
    "airflow_context_env",
    "build_context",
    "task_params",
]


def _parse_date(value: object, what: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise BadInputError(f"context_json: {what} must be an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(f"context_json: {what} {value!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _mapping(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInputError(f"context_json: {what} must be an object, got {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """The DAG run an attempt belongs to."""

    run_id: str
    run_type: str
    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    conf: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, context_json: str, *, run_id: str, logical_date: str) -> RunInfo:
        """Read ExecuteRequest.context_json (run_id / logical_date fall back to the request's
        own fields); BadInputError names what is malformed."""
        try:
            raw = json.loads(context_json) if context_json.strip() else {}
        except ValueError as exc:
            raise BadInputError(f"context_json is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise BadInputError("context_json must be a JSON object")
        logical = _parse_date(raw.get("logical_date") or logical_date, "logical_date")
        start = raw.get("data_interval_start")
        end = raw.get("data_interval_end")
        return cls(
            run_id=str(raw.get("run_id") or run_id),
            run_type=str(raw.get("run_type") or "manual"),
            logical_date=logical,
            data_interval_start=logical if start is None else _parse_date(start, "start"),
            data_interval_end=logical if end is None else _parse_date(end, "end"),
            conf=_mapping(raw.get("conf"), "conf"),
            params=_mapping(raw.get("params"), "params"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DagRunView:
    """`dag_run` in the context: the run's identity, dates and conf."""

    dag_id: str
    run_id: str
    run_type: str
    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    conf: dict[str, Any]

    @property
    def execution_date(self) -> datetime:
        """The pre-2.2 name of logical_date."""
        return self.logical_date

    @property
    def external_trigger(self) -> bool:
        """True for runs triggered by a user rather than the schedule."""
        return self.run_type == "manual"


@dataclass(frozen=True, slots=True, kw_only=True)
class DagView:
    """`dag` in the context of a task that runs without importing its DAG file (bash)."""

    dag_id: str
    fileloc: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskView:
    """`task` in the context of a task that runs without importing its DAG file (bash)."""

    task_id: str
    dag_id: str
    operator_name: str
    owner: str
    queue: str
    pool: str
    retries: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def task_type(self) -> str:
        """The operator's name."""
        return self.operator_name


class VariableAccessor:
    """`var.value.<key>` / `var.json.<key>` in templates, and `.get(key, default)`."""

    def __init__(self, *, deserialize_json: bool) -> None:
        self._json = deserialize_json

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return Variable.get(key, deserialize_json=self._json)

    def get(self, key: str, default_var: Any = None) -> Any:
        """The Variable's value, or default_var when it does not exist."""
        return Variable.get(key, default_var, deserialize_json=self._json)

    def __repr__(self) -> str:
        return f"<VariableAccessor json={self._json}>"


def task_params(run: RunInfo, task_fields: Mapping[str, Any]) -> dict[str, Any]:
    """The task's params: the DAG's, then the task's own, then the run conf over them (Airflow's
    dag_run_conf_overrides_params, on by default)."""
    params = dict(run.params)
    own = task_fields.get("params")
    if isinstance(own, Mapping):
        params.update(own)
    params.update(run.conf)
    return params


def build_context(
    *,
    run: RunInfo,
    dag_id: str,
    task_id: str,
    dag: object,
    task: object,
    ti: object,
    params: Mapping[str, Any],
    try_number: int,
) -> dict[str, Any]:
    """The context a task's templates render in and execute() receives."""
    logical = run.logical_date.astimezone(UTC)
    ds = logical.strftime("%Y-%m-%d")
    ts = logical.isoformat()
    yesterday = (logical - timedelta(days=1)).strftime("%Y-%m-%d")
    tomorrow = (logical + timedelta(days=1)).strftime("%Y-%m-%d")
    dag_run = DagRunView(
        dag_id=dag_id,
        run_id=run.run_id,
        run_type=run.run_type,
        logical_date=logical,
        data_interval_start=run.data_interval_start,
        data_interval_end=run.data_interval_end,
        conf=run.conf,
    )
    return {
        "conf": run.conf,
        "dag": dag,
        "dag_run": dag_run,
        "data_interval_start": run.data_interval_start,
        "data_interval_end": run.data_interval_end,
        "ds": ds,
        "ds_nodash": ds.replace("-", ""),
        "execution_date": logical,
        "expanded_ti_count": None,
        "inlets": [],
        "logical_date": logical,
        "macros": macros_namespace(),
        "outlets": [],
        "params": dict(params),
        "run_id": run.run_id,
        "task": task,
        "task_instance": ti,
        "task_instance_key_str": f"{dag_id}__{task_id}__{ds.replace('-', '')}",
        "test_mode": False,
        "ti": ti,
        "tomorrow_ds": tomorrow,
        "tomorrow_ds_nodash": tomorrow.replace("-", ""),
        "try_number": try_number,
        "ts": ts,
        "ts_nodash": logical.strftime("%Y%m%dT%H%M%S"),
        "ts_nodash_with_tz": ts.replace("-", "").replace(":", ""),
        "var": {
            "json": VariableAccessor(deserialize_json=True),
            "value": VariableAccessor(deserialize_json=False),
        },
        "yesterday_ds": yesterday,
        "yesterday_ds_nodash": yesterday.replace("-", ""),
    }


def airflow_context_env(
    *, dag_id: str, task_id: str, run: RunInfo, try_number: int, owner: str
) -> dict[str, str]:
    """AIRFLOW_CTX_* variables Airflow exports to a task's environment (bash and Python)."""
    return {
        "AIRFLOW_CTX_DAG_OWNER": owner,
        "AIRFLOW_CTX_DAG_ID": dag_id,
        "AIRFLOW_CTX_TASK_ID": task_id,
        "AIRFLOW_CTX_EXECUTION_DATE": run.logical_date.astimezone(UTC).isoformat(),
        "AIRFLOW_CTX_TRY_NUMBER": str(try_number),
        "AIRFLOW_CTX_DAG_RUN_ID": run.run_id,
    }
