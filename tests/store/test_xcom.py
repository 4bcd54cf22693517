"""XComs on a real PostgreSQL and the pluggable backends: pushes only under the current token of
a running attempt and within core.max_xcom_bytes; pulls filter and order as Airflow's
XCom.get_many; clearing a task instance purges through the configured backend."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.errors import BadInputError, ConfigError
from tradewind.scheduling.admission import admit
from tradewind_cluster.store import xcom as store_xcom
from tradewind_cluster.store.attempts import record_start, requeue_attempt
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.queueing import QueuedAttempt, queue_pool
from tradewind_cluster.xcom import (
    XCOM_RETURN_KEY,
    BaseXComBackend,
    DatabaseXComBackend,
    XComLike,
    XComRecord,
    load_xcom_backend,
)

pytestmark = pytest.mark.store
NOW = datetime(2026, 3, 1, tzinfo=UTC)
LIMIT = 1024


class ShoutingBackend(BaseXComBackend):
    """A custom backend: upper-cased JSON strings, and a record of what it purged."""

    purged: list[str] = []

    def serialize_value(
        self, value: Any, *, key: str, dag_id: str, run_id: str, task_id: str
    ) -> str:
        return json.dumps(str(value).upper())

    def deserialize_value(self, xcom: XComLike) -> Any:
        return json.loads(xcom.value)

    def orm_deserialize_value(self, xcom: XComLike) -> Any:
        return f"<{len(xcom.value)} bytes>"

    def purge(self, xcom: XComLike) -> None:
        ShoutingBackend.purged.append(f"{xcom.task_id}:{xcom.key}")


class NotABackend:
    pass


class BrokenBackend(BaseXComBackend):
    def __init__(self) -> None:
        raise RuntimeError("needs a bucket")


def running(db: Database, *task_ids: str) -> dict[str, QueuedAttempt]:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d", run_id="r")
        for task_id in task_ids:
            insert_ti(conn, run, task_id, state="scheduled")

    db.transaction(setup)
    outcome = db.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert outcome is not None
    for q in outcome.queued:
        db.transaction(lambda c, q=q: record_start(c, q.ti_id, q.token, worker_id="w", now=NOW))
    return {q.task_id: q for q in outcome.queued}


def push(
    db: Database, q: QueuedAttempt, key: str, value: str, token: int | None = None
) -> store_xcom.XComPushResult:
    return db.transaction(
        lambda c: store_xcom.push_xcom(
            c, q.ti_id, q.token if token is None else token, key=key, value=value, max_bytes=LIMIT
        )
    )


def test_the_return_key_is_airflows() -> None:
    assert XCOM_RETURN_KEY == "return_value"


def test_a_running_attempt_pushes_and_a_second_push_replaces_the_value(database: Database) -> None:
    a = running(database, "a")["a"]
    assert push(database, a, XCOM_RETURN_KEY, "1").accepted
    assert push(database, a, XCOM_RETURN_KEY, "2").accepted  # Airflow's XCom.set replaces
    rows = database.read(lambda c: store_xcom.list_xcoms(c, dag_id="d", run_id="r"))
    assert [(r.task_id, r.key, r.value) for r in rows] == [("a", "return_value", "2")]


def test_pushes_are_refused_outside_a_running_attempt_under_its_token(database: Database) -> None:
    a = running(database, "a")["a"]
    stale = push(database, a, "k", "1", token=a.token - 1)
    assert not stale.accepted
    assert stale.reason == f"stale token {a.token - 1}: the current attempt has token {a.token}"
    unknown = database.transaction(
        lambda c: store_xcom.push_xcom(c, 999_999, 1, key="k", value="1", max_bytes=LIMIT)
    )
    assert unknown.reason == "unknown task instance 999999"
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE task_instance SET state = 'success'"))
    done = push(database, a, "k", "1")
    assert done.reason == "task instance is success, not running"
    assert database.read(lambda c: store_xcom.list_xcoms(c, dag_id="d", run_id="r")) == []


def test_a_value_over_max_xcom_bytes_is_refused_with_the_limit_named(database: Database) -> None:
    a = running(database, "a")["a"]
    assert push(database, a, "fits", "x" * LIMIT).accepted
    over = push(database, a, "big", "é" * (LIMIT // 2 + 1))  # bytes, not characters, count
    assert not over.accepted
    assert over.reason.startswith(
        f"XCom 'big' is {LIMIT + 2} bytes, over core.max_xcom_bytes ({LIMIT})"
    )
    assert not push(database, a, "", "1").accepted
    assert "non-empty" in push(database, a, "", "1").reason
    assert "NUL" in push(database, a, "k", "a\x00b").reason
    keys = [
        r.key for r in database.read(lambda c: store_xcom.list_xcoms(c, dag_id="d", run_id="r"))
    ]
    assert keys == ["fits"]


def test_pull_filters_by_task_ids_in_their_order_and_by_key(database: Database) -> None:
    tis = running(database, "a", "b", "c")
    push(database, tis["a"], "return_value", '"A"')
    push(database, tis["b"], "return_value", '"B"')
    push(database, tis["b"], "other", '"B2"')

    def pull(task_ids: list[str] | None, key: str | None) -> list[tuple[str, str]]:
        rows = database.read(
            lambda c: store_xcom.pull_xcoms(c, dag_id="d", run_id="r", task_ids=task_ids, key=key)
        )
        return [(r.task_id, r.value) for r in rows]

    assert pull(["b", "a", "c"], "return_value") == [("b", '"B"'), ("a", '"A"')]
    assert pull(["b"], None) == [("b", '"B2"'), ("b", '"B"')]  # no key filter: newest first
    assert pull(["b"], "") == pull(["b"], None)  # Airflow: a falsy key removes the filter
    assert pull([], "return_value") == []
    assert pull(None, "other") == [("b", '"B2"')]
    other_run = database.read(
        lambda c: store_xcom.pull_xcoms(c, dag_id="d", run_id="nope", task_ids=["a"], key=None)
    )
    assert other_run == []


def test_newest_xcom_is_what_a_pull_without_task_ids_returns(database: Database) -> None:
    tis = running(database, "a", "b")
    push(database, tis["a"], "return_value", '"A"')
    push(database, tis["b"], "return_value", '"B"')
    push(database, tis["a"], "note", '"n"')
    newest = database.read(
        lambda c: store_xcom.newest_xcom(c, dag_id="d", run_id="r", key="return_value")
    )
    assert newest is not None
    assert (newest.task_id, newest.value) == ("b", '"B"')
    anything = database.read(lambda c: store_xcom.newest_xcom(c, dag_id="d", run_id="r", key=None))
    assert anything is not None
    assert (anything.task_id, anything.key) == ("a", "note")
    assert (
        database.read(lambda c: store_xcom.newest_xcom(c, dag_id="d", run_id="r", key="x")) is None
    )


def test_clear_deletes_one_task_instances_xcoms_and_purges_each(database: Database) -> None:
    tis = running(database, "a", "b")
    push(database, tis["a"], "return_value", '"A"')
    push(database, tis["a"], "k", '"K"')
    push(database, tis["b"], "return_value", '"B"')
    backend = ShoutingBackend()
    ShoutingBackend.purged = []
    n = database.transaction(lambda c: backend.clear(c, dag_id="d", run_id="r", task_id="a"))
    assert n == 2
    assert sorted(ShoutingBackend.purged) == ["a:k", "a:return_value"]
    left = database.read(lambda c: store_xcom.list_xcoms(c, dag_id="d", run_id="r"))
    assert [(r.task_id, r.key) for r in left] == [("b", "return_value")]


def test_a_requeued_attempt_cannot_push(database: Database) -> None:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        insert_ti(conn, insert_run(conn, "d", run_id="r"), "a", state="scheduled")

    database.transaction(setup)
    outcome = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert outcome is not None
    q = outcome.queued[0]
    database.transaction(lambda c: requeue_attempt(c, q.ti_id, q.token, reason="t", now=NOW))
    assert push(database, q, "k", "1").reason == "task instance is scheduled, not running"


def test_the_database_backend_round_trips_json_and_names_non_json_values() -> None:
    backend = DatabaseXComBackend()
    text = backend.serialize_value(
        {"n": [1, 2.5, None]}, key="k", dag_id="d", run_id="r", task_id="t"
    )
    record = XComRecord(dag_id="d", run_id="r", task_id="t", key="k", value=text)
    assert backend.deserialize_value(record) == {"n": [1, 2.5, None]}
    assert backend.orm_deserialize_value(record) == {"n": [1, 2.5, None]}
    with pytest.raises(
        BadInputError, match=r"XCom 'k' of task 't' \(DAG 'd'\) is not JSON serializable"
    ):
        backend.serialize_value(object(), key="k", dag_id="d", run_id="r", task_id="t")


def test_a_custom_backend_is_loaded_by_dotted_path() -> None:
    backend = load_xcom_backend(f"{__name__}.ShoutingBackend")
    assert type(backend).__name__ == "ShoutingBackend"
    text = backend.serialize_value("hi", key="k", dag_id="d", run_id="r", task_id="t")
    record = XComRecord(dag_id="d", run_id="r", task_id="t", key="k", value=text)
    assert backend.deserialize_value(record) == "HI"
    assert backend.orm_deserialize_value(record) == "<4 bytes>"
    assert isinstance(
        load_xcom_backend("tradewind_cluster.xcom.DatabaseXComBackend"), DatabaseXComBackend
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_pkg.Backend", "cannot import module 'no_such_pkg': ModuleNotFoundError"),
        (
            "tradewind_cluster.xcom.Missing",
            "module 'tradewind_cluster.xcom' has no attribute 'Missing'",
        ),
        (
            f"{__name__}.NotABackend",
            "NotABackend is not a subclass of tradewind_cluster.xcom.BaseXComBackend",
        ),
        ("tradewind_cluster.xcom.XCOM_RETURN_KEY", "XCOM_RETURN_KEY is not a subclass"),
        (
            f"{__name__}.BrokenBackend",
            "BrokenBackend() could not be created: RuntimeError: needs a bucket",
        ),
        ("Backend", "is not a dotted path"),
    ],
)
def test_a_bad_backend_path_is_a_config_error_naming_it(path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_xcom_backend(path)
    assert f"core.xcom_backend {path!r}" in str(info.value)
    assert message in str(info.value)


def test_the_base_backend_says_what_a_subclass_must_implement() -> None:
    record = XComRecord(dag_id="d", run_id="r", task_id="t", key="k", value="1")
    with pytest.raises(
        NotImplementedError, match="BaseXComBackend does not implement deserialize_value"
    ):
        BaseXComBackend().deserialize_value(record)


def test_replacing_a_task_instances_xcoms_keeps_the_last_of_a_repeated_key(
    database: Database,
) -> None:
    def setup(conn: sa.Connection) -> None:
        insert_dag(conn, "d")
        run = insert_run(conn, "d", run_id="r")
        insert_ti(conn, run, "t")
        conn.execute(
            sa.text(
                "INSERT INTO xcom (dag_id, run_id, task_id, key, value, created_at) VALUES "
                "('d', 'r', 't', 'stale', '0', now()), ('d', 'r', 't', 'rows', '1', now())"
            )
        )

    database.transaction(setup)
    values = [("rows", "2"), ("return_value", '{"a": 1}'), ("return_value", '{"a": 2}')]
    database.transaction(
        lambda c: store_xcom.replace_task_xcoms(
            c, dag_id="d", run_id="r", task_id="t", values=values
        )
    )
    rows = database.read(lambda c: store_xcom.list_xcoms(c, dag_id="d", run_id="r"))
    assert sorted((r.key, r.value) for r in rows) == [("return_value", '{"a": 2}'), ("rows", "2")]
