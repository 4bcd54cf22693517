"""The spec cache hands out each DAG's decoded spec and, for dispatch, each task's canonical
JSON taken from the stored form: it must be exactly what encoding the task gives."""

from __future__ import annotations

import functools
import importlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.dags import register
from tradewind.dag import DAG
from tradewind_cluster.scheduler.execute_requests import task_to_json
from tradewind_cluster.scheduler.specs import SpecCache
from tradewind_cluster.store.database import Database
from tradewind_cluster.worker.runtime import decode_task

pytestmark = pytest.mark.store
EXAMPLES = [
    "tutorial",
    "branching",
    "trigger_rules",
    "pool_fanout",
    "taskflow_xcom",
    "retries",
    "catchup",
]


def _dags(module: str) -> list[DAG]:
    mod = importlib.import_module(f"tradewind_cluster.example_dags.{module}")
    return [v for v in vars(mod).values() if isinstance(v, DAG)]


@pytest.mark.parametrize("module", EXAMPLES)
def test_task_json_from_the_stored_spec_is_the_encoded_task(
    database: Database, module: str
) -> None:
    cache = SpecCache()
    now = datetime.now(UTC)
    dags = _dags(module)
    assert dags, f"no DAG in example {module}"
    for dag in dags:
        register(database, dag, now=now)
        dag_id = dag.dag_id
        cached = database.read(functools.partial(cache.entries, dag_ids=[dag_id]))[dag_id]
        spec = cached.spec
        assert spec.tasks
        for task_id, task in spec.tasks.items():
            stored = cached.task_json(task_id)
            assert stored == task_to_json(task)
            assert decode_task(stored, task.task_id) == task
        assert cached.task_json("no-such-task") is None


def test_task_json_is_dropped_with_a_new_version_of_the_dag(database: Database) -> None:
    from tradewind.operators.bash import BashOperator

    cache = SpecCache()
    now = datetime.now(UTC)
    with DAG("versions", schedule=None, start_date=datetime(2026, 1, 1)) as first:
        BashOperator(task_id="t", bash_command="echo one")
    register(database, first, now=now)
    current = lambda: database.read(lambda c: cache.entries(c, ["versions", "elsewhere"]))  # noqa: E731
    assert "echo one" in (current()["versions"].task_json("t") or "")
    with DAG("versions", schedule=None, start_date=datetime(2026, 1, 1)) as second:
        BashOperator(task_id="t", bash_command="echo two")
    register(database, second, now=now)
    found = current()
    assert "echo two" in (found["versions"].task_json("t") or "")
    assert "elsewhere" not in found


def test_an_entry_keeps_one_version_while_the_cache_moves_on(database: Database) -> None:
    """Dispatch takes spec, file hash and task JSON from one entry: a refresh by another thread
    in between must not pair one version's task JSON with another's spec."""
    from tradewind.operators.bash import BashOperator

    cache = SpecCache()
    now = datetime.now(UTC)
    with DAG("pinned", schedule=None, start_date=datetime(2026, 1, 1)) as first:
        BashOperator(task_id="t", bash_command="echo one")
    register(database, first, now=now)
    old = database.read(lambda c: cache.entries(c, ["pinned"]))["pinned"]
    with DAG("pinned", schedule=None, start_date=datetime(2026, 1, 1)) as second:
        BashOperator(task_id="t", bash_command="echo two", execution_timeout=timedelta(seconds=5))
    register(database, second, now=now)
    new = database.read(lambda c: cache.entries(c, ["pinned"]))["pinned"]
    assert new.spec_hash != old.spec_hash
    assert "echo one" in (old.task_json("t") or "")
    assert old.spec.tasks["t"].execution_timeout is None
    assert decode_task(old.task_json("t") or "", "t") == old.spec.tasks["t"]
    assert "echo two" in (new.task_json("t") or "")
    assert decode_task(new.task_json("t") or "", "t") == new.spec.tasks["t"]
    assert database.read(lambda c: cache.entries(c, ["pinned"]))["pinned"] is new
