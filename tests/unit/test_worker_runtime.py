"""The pure pieces of the worker: task and run decoding, bash environment and exit codes, branch
outcomes, final reports, XCom encoding and pulls, log chunking, log paths and the lease."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tradewind_cluster.worker as worker_package
from tradewind.dag import DAG
from tradewind.errors import BadInputError, ConfigError
from tradewind.operators.bash import BashOperator
from tradewind.serialization import dag_to_spec, spec_to_dict
from tradewind.spec import BranchKind, TaskKind
from tradewind_cluster.worker.bash import bash_environment, classify_exit
from tradewind_cluster.worker.heartbeats import Lease
from tradewind_cluster.worker.launch import (
    ChildResult,
    Launch,
    Outcome,
    SchedulerAccess,
    decode_line,
    encode_line,
)
from tradewind_cluster.worker.logs import attempt_log_path, split_utf8, utf8_complete
from tradewind_cluster.worker.options import parse_addresses
from tradewind_cluster.worker.outcomes import describe_status, final_report
from tradewind_cluster.worker.runtime import (
    branch_followed,
    decode_task,
    describe_error,
    task_header,
)
from tradewind_cluster.worker.task_api import (
    RuntimeTaskInstance,
    XComError,
    encode_xcom,
    order_pulled,
)
from tradewind_cluster.worker.task_context import RunInfo
from tradewind_proto.v1 import scheduler_pb2


def _dag() -> DAG:
    with DAG("d", schedule=None) as dag:
        BashOperator(task_id="b", bash_command="echo {{ ds }}", skip_on_exit_code=[3, 99])
    return dag


def test_package_exports_resolve() -> None:
    for name in worker_package.__all__:
        assert getattr(worker_package, name) is not None


def test_decode_task_reads_a_task_entry_or_a_whole_dag() -> None:
    spec = spec_to_dict(dag_to_spec(_dag()))
    entry = json.dumps(spec["dag"]["tasks"][0])
    task = decode_task(entry, "b")
    assert task.kind is TaskKind.BASH
    assert task.fields["skip_on_exit_code"] == [3, 99]
    assert decode_task(json.dumps(spec), "b") == task
    with pytest.raises(BadInputError, match="describes task 'b', not 'x'"):
        decode_task(entry, "x")
    with pytest.raises(BadInputError, match="not valid JSON"):
        decode_task("{", "b")
    with pytest.raises(BadInputError, match="not a serialized task"):
        decode_task('{"task_id": "b"}', "b")


def test_task_header_reads_kind_and_queue_as_the_full_decode_does() -> None:
    """The agent admits an attempt on the kind and queue alone, read without decoding the
    spec; they must be what decode_task would give, for every kind and in both forms."""
    from tradewind.operators.empty import EmptyOperator
    from tradewind.operators.python import PythonOperator

    with DAG("h", schedule=None) as dag:
        BashOperator(task_id="b", bash_command="true", queue="spark")
        EmptyOperator(task_id="e")
        PythonOperator(task_id="p", python_callable=print)
    spec = spec_to_dict(dag_to_spec(dag))
    whole = json.dumps(spec)
    for entry in spec["dag"]["tasks"]:
        task_id, text = entry["task_id"], json.dumps(entry)
        full = decode_task(text, task_id)
        assert task_header(text, task_id) == (full.kind, full.queue)
        assert task_header(whole, task_id) == (full.kind, full.queue)
    assert task_header(json.dumps(spec["dag"]["tasks"][0]), "b") == (TaskKind.BASH, "spark")
    with pytest.raises(BadInputError, match="not valid JSON"):
        task_header("{", "b")
    with pytest.raises(BadInputError, match="must be a JSON object"):
        task_header("[]", "b")
    with pytest.raises(BadInputError, match="describes task 'b', not 'x'"):
        task_header(json.dumps(spec["dag"]["tasks"][0]), "x")
    with pytest.raises(BadInputError, match="holds no task 'x'"):
        task_header(whole, "x")
    with pytest.raises(BadInputError, match="unknown task kind 'rocket'"):
        task_header('{"task_id": "b", "kind": "rocket"}', "b")
    with pytest.raises(BadInputError, match="queue must be a non-empty string"):
        task_header('{"task_id": "b", "kind": "bash", "queue": ""}', "b")


def test_run_info_defaults_and_errors() -> None:
    run = RunInfo.parse("", run_id="r", logical_date="2024-01-02T00:00:00+00:00")
    assert run.run_id == "r"
    assert run.run_type == "manual"
    assert run.data_interval_start == run.data_interval_end == datetime(2024, 1, 2, tzinfo=UTC)
    naive = RunInfo.parse('{"logical_date": "2024-01-02T05:00:00"}', run_id="r", logical_date="")
    assert naive.logical_date.tzinfo is UTC
    with pytest.raises(BadInputError, match="not valid JSON"):
        RunInfo.parse("{x", run_id="r", logical_date="2024-01-02")
    with pytest.raises(BadInputError, match="conf must be an object"):
        RunInfo.parse('{"conf": [1]}', run_id="r", logical_date="2024-01-02")
    with pytest.raises(BadInputError, match="is not ISO 8601"):
        RunInfo.parse("{}", run_id="r", logical_date="yesterday")


def test_bash_exit_codes_follow_airflows_order() -> None:
    assert classify_exit(0, [99]).outcome is Outcome.SUCCESS
    skipped = classify_exit(99, [99])
    assert skipped.outcome is Outcome.SKIPPED
    assert skipped.error == "Bash command returned exit code 99. Skipping."
    assert classify_exit(0, [0]).outcome is Outcome.SKIPPED  # a skip code wins, even 0
    failed = classify_exit(3, [99])
    assert failed.outcome is Outcome.FAILED
    assert failed.error == "Bash command failed. The command returned a non-zero exit code 3."
    assert classify_exit(99, []).outcome is Outcome.FAILED


def test_bash_environment() -> None:
    inherited = {"PATH": "/bin", "HOME": "/h"}
    ctx = {"AIRFLOW_CTX_DAG_ID": "d"}
    assert bash_environment(None, append_env=False, inherited=inherited, context_env=ctx) == {
        **inherited,
        **ctx,
    }
    own = bash_environment({"A": 1}, append_env=False, inherited=inherited, context_env=ctx)
    assert own == {"A": "1", **ctx}
    merged = bash_environment({"HOME": "/x"}, append_env=True, inherited=inherited, context_env=ctx)
    assert merged == {"PATH": "/bin", "HOME": "/x", **ctx}
    with pytest.raises(BadInputError, match="env must be a mapping"):
        bash_environment(["A=1"], append_env=False, inherited={}, context_env={})


def test_branch_outcomes() -> None:
    ids = ["a", "b", "c"]
    assert branch_followed(BranchKind.BRANCH, "a", ids) == ("a",)
    assert branch_followed(BranchKind.BRANCH, ["c", "a"], ids) == ("a", "c")
    assert branch_followed(BranchKind.BRANCH, None, ids) == ()
    with pytest.raises(BadInputError, match="Invalid tasks found"):
        branch_followed(BranchKind.BRANCH, "zzz", ids)
    assert branch_followed(BranchKind.SHORT_CIRCUIT, False, ids) == ()
    assert branch_followed(BranchKind.SHORT_CIRCUIT, [], ids) == ()
    assert branch_followed(BranchKind.SHORT_CIRCUIT, True, ids) is None
    assert branch_followed(None, "a", ids) is None


def test_final_reports() -> None:
    ok = final_report(
        ti_id=1, token=2, status=0, kill_reason=None,
        result=ChildResult(outcome=Outcome.SUCCESS, followed=("x",)),
    )  # fmt: skip
    assert ok.event == scheduler_pb2.ATTEMPT_EVENT_SUCCESS
    assert ok.followed == ("x",)
    assert ok.has_followed
    plain = final_report(
        ti_id=1, token=2, status=0, kill_reason="late", result=ChildResult(outcome=Outcome.SUCCESS)
    )
    assert not plain.has_followed
    assert plain.error == ""
    killed = final_report(ti_id=1, token=2, status=-9, kill_reason="Task timed out", result=None)
    assert killed.event == scheduler_pb2.ATTEMPT_EVENT_FAILED
    assert killed.error == (
        "Task timed out; the task process was killed by signal SIGKILL without reporting an outcome"
    )
    assert killed.exit_code == -9
    failed = final_report(
        ti_id=1, token=2, status=143, kill_reason="worker lease expired",
        result=ChildResult(outcome=Outcome.FAILED, error="Task received SIGTERM signal"),
    )  # fmt: skip
    assert failed.error == (
        "worker lease expired; Task received SIGTERM signal; the task process exited with code 143"
    )
    assert (
        final_report(
            ti_id=1, token=2, status=None, kill_reason=None, result=None, spawn_error="fork failed"
        ).error
        == "fork failed"
    )
    assert describe_status(3) == "exited with code 3"
    assert describe_status(-15) == "was killed by signal SIGTERM"


def test_describe_error() -> None:
    assert describe_error(BadInputError("DAG file differs")) == "DAG file differs"
    assert describe_error(ValueError("boom")) == "ValueError: boom"
    assert describe_error(KeyError()) == "KeyError"
    assert len(describe_error(ValueError("x" * 10_000))) == 4000


def test_xcom_values_are_json_within_the_limit() -> None:
    assert encode_xcom({"a": [1]}, key="k", task_id="t", limit=100) == '{"a": [1]}'
    with pytest.raises(XComError, match=r"more than core\.max_xcom_bytes"):
        encode_xcom("x" * 200, key="k", task_id="t", limit=100)
    with pytest.raises(XComError, match="is not JSON serializable"):
        encode_xcom({1, 2}, key="k", task_id="t", limit=100)


class FakeApi:
    def __init__(self, found: list[tuple[str, str]]) -> None:
        self.found = found
        self.asked: list[tuple[list[str], str | None]] = []
        launch = Launch(
            ti_id=1, token=1, dag_id="d", run_id="r", task_id="t", try_number=1,
            logical_date="", fileloc="", file_hash="", task_json="", context_json="",
            queue="default", log_path="", dags_folder="",
        )  # fmt: skip
        self.launch = launch

    def pull(self, task_ids: list[str], key: str | None, **kw: Any) -> list[tuple[str, str]]:
        self.asked.append((task_ids, key))
        return [(t, v) for t, v in self.found if not task_ids or t in task_ids]


def _ti(found: list[tuple[str, str]]) -> tuple[RuntimeTaskInstance, FakeApi]:
    api = FakeApi(found)
    ti = RuntimeTaskInstance(
        api,  # type: ignore[arg-type]
        task=None,
        logical_date=datetime(2024, 1, 2, tzinfo=UTC),
        hostname="h",
    )
    return ti, api


def test_xcom_pull_single_list_and_default() -> None:
    ti, api = _ti([("b", '"B"'), ("a", '{"x": 1}')])
    assert ti.xcom_pull(task_ids="a") == {"x": 1}
    assert ti.xcom_pull(task_ids="zz") is None
    assert ti.xcom_pull(task_ids="zz", default=5) == 5
    assert ti.xcom_pull(task_ids=["a", "b", "zz"]) == [{"x": 1}, "B"]
    assert ti.xcom_pull(task_ids=("b", "a")) == ["B", {"x": 1}]
    assert ti.xcom_pull() == "B"  # no task filter: the first found
    assert api.asked[0] == (["a"], "return_value")
    assert ti.xcom_pull(task_ids="a", key=None) == {"x": 1}
    with pytest.raises(XComError, match="include_prior_dates"):
        ti.xcom_pull(task_ids="a", include_prior_dates=True)


def test_xcomarg_resolution_of_missing_values() -> None:
    ti, _ = _ti([])
    assert ti.pull_for_xcomarg("up", "return_value", {}) is None
    assert ti.pull_for_xcomarg("up", "part", {"up": True}) is None
    with pytest.raises(XComError, match='XComArg result from up at d with key="part"'):
        ti.pull_for_xcomarg("up", "part", {"up": False})


def test_order_pulled_follows_task_ids() -> None:
    assert order_pulled(["b", "a"], [("a", "1"), ("b", "2"), ("c", "3")]) == ["2", "1", "3"]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60), st.integers(min_value=4, max_value=9))
def test_split_utf8_never_cuts_a_character(text: str, size: int) -> None:
    data = text.encode("utf-8")
    pieces = split_utf8(data, size)
    assert b"".join(pieces) == data
    assert all(len(p) <= size for p in pieces)
    assert "".join(p.decode("utf-8") for p in pieces) == text


def test_utf8_complete_holds_back_a_partial_character() -> None:
    snow = "☃".encode()
    assert utf8_complete(b"ab" + snow) == 5
    assert utf8_complete(b"ab" + snow[:2]) == 2
    assert utf8_complete(b"ab" + snow[:1]) == 2
    assert utf8_complete(b"") == 0


def test_attempt_log_path_layout_and_separators() -> None:
    path = attempt_log_path(Path("/l"), "d", "manual__2024/01", "..", 2)
    assert path == Path("/l/dag_id=d/run_id=manual__2024_01/task_id=_../attempt=2.log")


def test_parse_addresses() -> None:
    assert parse_addresses("a:1, b:2,a:1") == ("a:1", "b:2")
    assert parse_addresses("[::1]:7400") == ("[::1]:7400",)
    for bad in ("", "a", "a:x", ":1", "a:70000"):
        with pytest.raises(ConfigError):
            parse_addresses(bad)


def test_launch_round_trips_and_hides_the_token() -> None:
    access = SchedulerAccess(addresses=("a:1",), token="s3cret")
    launch = Launch(
        ti_id=1, token=2, dag_id="d", run_id="r", task_id="t", try_number=1, logical_date="x",
        fileloc="f", file_hash="h", task_json="{}", context_json="{}", queue="q",
        log_path="/l", dags_folder="/d", env={"A": "1"}, access=access,
    )  # fmt: skip
    assert Launch.from_dict(decode_line(encode_line(launch.to_dict()))) == launch
    assert "s3cret" not in repr(access)
    with pytest.raises(BadInputError):
        decode_line(b"[1]")
    with pytest.raises(BadInputError, match="malformed task result"):
        ChildResult.from_dict({"outcome": "maybe"})


def test_lease_is_held_for_lease_s_after_the_heartbeat_was_sent() -> None:
    now = [100.0]
    lease = Lease(4.0, clock=lambda: now[0])
    assert not lease.held()
    assert not lease.expired()
    lease.renew(99.0)
    assert lease.held()
    now[0] = 102.9
    assert lease.held()
    lease.renew(98.0)  # an older heartbeat's late answer does not extend it
    now[0] = 103.0
    assert lease.expired()


def test_returned_values_become_xcoms_and_a_repeated_key_keeps_the_last() -> None:
    from tradewind_cluster.worker.launch import Launch
    from tradewind_cluster.worker.runtime import returned_xcoms

    launch = Launch(
        ti_id=1, token=1, dag_id="d", run_id="r", task_id="t", try_number=1,
        logical_date="2024-01-01T00:00:00+00:00", fileloc="", file_hash="", task_json="",
        context_json="", queue="default", log_path="", dags_folder="",
    )  # fmt: skip

    class Task:
        do_xcom_push = True

    value = {"return_value": 1, "rows": 2}
    got = returned_xcoms(launch, Task(), value, multiple_outputs=True)
    assert got == (("return_value", '{"return_value": 1, "rows": 2}'), ("rows", "2"))
    assert returned_xcoms(launch, Task(), None) == ()
    Task.do_xcom_push = False
    assert returned_xcoms(launch, Task(), "x") == ()


def test_a_launch_in_json_is_plain_and_independent_of_the_launch() -> None:
    """to_dict is shallow but complete: every field, the env copied, access as a mapping."""
    launch = Launch(
        ti_id=1, token=2, dag_id="d", run_id="r", task_id="t", try_number=1,
        logical_date="2024-01-02T00:00:00+00:00", fileloc="/f.py", file_hash="h",
        task_json="{}", context_json="{}", queue="q", log_path="/l", dags_folder="/dags",
        env={"A": "1"}, access=SchedulerAccess(addresses=("a:1", "b:2"), token="s"),
    )  # fmt: skip
    data = launch.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["access"]["addresses"] == ["a:1", "b:2"]
    data["env"]["A"] = "changed"
    assert launch.env == {"A": "1"}
    assert Launch.from_dict(json.loads(json.dumps(launch.to_dict()))) == launch
