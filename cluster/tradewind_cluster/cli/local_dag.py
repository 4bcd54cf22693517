"""Importing a DAG in this process for the commands that run tasks here (`dags test`, `tasks
test`, `tasks render`): from -S/--subdir (a file or folder, as Airflow's) or from the file the
store recorded for it; and the run a task sees when no scheduler made one."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tradewind.dag import DAG, set_catchup_by_default
from tradewind.errors import BadInputError
from tradewind.schedules import RunType, manual_data_interval, run_id_for
from tradewind.serialization import dag_to_spec
from tradewind.spec import DagSpec
from tradewind_cluster.config import Settings
from tradewind_cluster.parsing.discovery import list_dag_files
from tradewind_cluster.parsing.runner import load_dag_file
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.listing import get_dag
from tradewind_cluster.store.snapshots import RunRow
from tradewind_cluster.worker.task_context import RunInfo

__all__ = ["LocalDag", "load_local_dag", "open_local_dag", "run_info_for"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalDag:
    """A DAG imported in this process from its file, with the spec built from it."""

    dag: DAG
    spec: DagSpec
    fileloc: str
    file_hash: str
    dags_folder: str
    default_timezone: str = "UTC"
    max_xcom_bytes: int = 1024 * 1024


def _load_file(path: str) -> tuple[str, list[DAG]]:
    try:
        source = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read DAG file {path}: {exc.strerror}") from None
    _module, dags = load_dag_file(path, source)
    for dag in dags:
        dag.fileloc = path  # as the parser does: a DAG belongs to the file it was found in
    return hashlib.sha256(source).hexdigest(), dags


def _candidates(fileloc: str | None, subdir: Path | None, safe_mode: bool) -> list[str]:
    if subdir is None:
        return [fileloc] if fileloc else []
    if subdir.is_file():
        return [str(subdir.absolute())]
    if not subdir.is_dir():
        raise BadInputError(f"--subdir {subdir} is neither a file nor a folder")
    return list_dag_files(subdir, safe_mode=safe_mode)


def load_local_dag(
    dag_id: str,
    *,
    fileloc: str | None,
    subdir: Path | None,
    dags_folder: Path,
    safe_mode: bool = True,
) -> tuple[DAG, DagSpec, str, str]:
    """Import the DAG from `subdir` (a file or folder, as Airflow's -S) or else from the file
    the store recorded for it; returns the DAG, its spec, its file and the file's hash."""
    if str(dags_folder) not in sys.path:
        sys.path.insert(0, str(dags_folder))  # as Airflow: DAG files import their neighbours
    errors: list[str] = []
    for path in _candidates(fileloc, subdir, safe_mode):
        try:
            file_hash, dags = _load_file(path)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a DAG file's code is untrusted
            errors.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        for dag in dags:
            if dag.dag_id == dag_id:
                return dag, dag_to_spec(dag), path, file_hash
    where = f" in {subdir}" if subdir is not None else (f" in {fileloc}" if fileloc else "")
    detail = f"; import errors: {'; '.join(errors)}" if errors else ""
    raise BadInputError(f"DAG {dag_id!r} not found{where}{detail}")


def open_local_dag(
    settings: Settings, db: Database, dag_id: str, *, subdir: Path | None
) -> LocalDag:
    """Import the DAG for a test command: from --subdir, else from the file the store has."""
    info = db.read(lambda c: get_dag(c, dag_id))
    if info is None and subdir is None:
        raise BadInputError(
            f"DAG {dag_id!r} not found (`tradewind dags list` shows the DAGs the schedulers "
            "have parsed; -S/--subdir names a file or folder to import it from instead)"
        )
    set_catchup_by_default(settings.scheduler.catchup_by_default)  # as the parser does
    dag, spec, path, file_hash = load_local_dag(
        dag_id,
        fileloc=info.fileloc if info is not None else None,
        subdir=subdir,
        dags_folder=settings.core.dags_folder,
        safe_mode=settings.core.dag_discovery_safe_mode,
    )
    return LocalDag(
        dag=dag,
        spec=spec,
        fileloc=path,
        file_hash=file_hash,
        dags_folder=str(settings.core.dags_folder),
        default_timezone=settings.core.default_timezone,
        max_xcom_bytes=settings.core.max_xcom_bytes,
    )


def run_info_for(spec: DagSpec, logical_date: datetime, *, run: RunRow | None = None) -> RunInfo:
    """What a task sees of its run: the stored run when there is one, else a manual run at
    `logical_date` with the data interval Airflow infers for it."""
    if run is not None:
        return RunInfo(
            run_id=run.run_id,
            run_type=run.run_type,
            logical_date=run.logical_date,
            data_interval_start=run.data_interval_start or run.logical_date,
            data_interval_end=run.data_interval_end or run.logical_date,
            conf=dict(run.conf),
            params=dict(spec.params),
        )
    interval = manual_data_interval(spec, logical_date)
    return RunInfo(
        run_id=run_id_for(RunType.MANUAL, logical_date),
        run_type=RunType.MANUAL.value,
        logical_date=logical_date,
        data_interval_start=interval.start,
        data_interval_end=interval.end,
        params=dict(spec.params),
    )
