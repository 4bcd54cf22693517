"""The real worker process running real attempts against a fake scheduler: bash outcomes and
templating, Python callables with XComs and Variables, branching, the DAG file hash check, XCom
limits, shipped logs and Tail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fake_scheduler import (
    FakeScheduler,
    WorkerClient,
    execute_request,
    file_hash,
    start_worker,
    task_entry,
    wait_registered,
)
from tests.support.processes import Proc
from tradewind.dag import DAG
from tradewind.operators.bash import BashOperator
from tradewind.serialization import dag_to_spec, spec_to_dict
from tradewind_cluster.parsing.runner import parse_file
from tradewind_proto.v1 import scheduler_pb2, worker_pb2

pytestmark = pytest.mark.cluster

SUCCESS = scheduler_pb2.ATTEMPT_EVENT_SUCCESS
FAILED = scheduler_pb2.ATTEMPT_EVENT_FAILED
SKIPPED = scheduler_pb2.ATTEMPT_EVENT_SKIPPED
RUN_ID = "manual__2024-01-02T00:00:00+00:00"

DAG_FILE = """
import signal
import sys
from tradewind import DAG, PythonOperator, BranchPythonOperator, ShortCircuitOperator, task
from tradewind.exceptions import AirflowSkipException
from tradewind.models import Variable, get_current_context

def _boom():
    raise ValueError("boom")

def _skip():
    raise AirflowSkipException("nothing to do today")

with DAG("py", schedule=None, params={"p": "dag"}) as dag:
    @task
    def produce(ti=None):
        ti.xcom_push(key="table_name", value="events_" + Variable.get("env"))
        return {"rows": 3, "name": Variable.get("cfg", deserialize_json=True)["name"]}

    @task(multiple_outputs=True)
    def split():
        return {"left": 1, "right": [2]}

    @task
    def consume(data, right, ds=None, params=None, ti=None):
        ctx = get_current_context()
        table = ti.xcom_pull(task_ids="produce", key="table_name")
        both = ti.xcom_pull(task_ids=["split", "produce"])
        return [data["rows"], right, ds, params["p"], table, ctx["run_id"], len(both)]

    consume(produce(), split()["right"])

    PythonOperator(task_id="templated", python_callable=lambda a: a, op_args=["{{ ds_nodash }}"])
    PythonOperator(task_id="boom", python_callable=_boom)
    PythonOperator(task_id="skip", python_callable=_skip)
    PythonOperator(task_id="exit0", python_callable=lambda: sys.exit(0))
    PythonOperator(task_id="big", python_callable=lambda: "x" * 5000)
    PythonOperator(task_id="quiet", python_callable=lambda: "v", do_xcom_push=False)
    PythonOperator(
        task_id="signals",
        python_callable=lambda: [
            signal.getsignal(s) is signal.SIG_DFL
            for s in (signal.SIGALRM, signal.SIGCHLD, signal.SIGINT)
        ],
    )
    pick = BranchPythonOperator(task_id="pick", python_callable=lambda: ["b2", "b1"])
    pick >> [task(lambda: 1, task_id="b1")(), task(lambda: 2, task_id="b2")()]
    gate = ShortCircuitOperator(task_id="gate", python_callable=lambda **kw: kw["params"]["go"])
    gate >> task(lambda: 3, task_id="after")()
"""


@dataclass
class Cluster:
    fake: FakeScheduler
    worker: Proc
    client: WorkerClient
    dags: Path
    dag_file: Path
    tasks: dict[str, str]
    next_ti: int = 100

    def ti(self) -> int:
        self.next_ti += 1
        return self.next_ti

    def run_python(
        self, task_id: str, *, file_hash_: str | None = None, **kwargs: object
    ) -> scheduler_pb2.AttemptReport:
        ti = self.ti()
        self.fake.expect(ti, "py", RUN_ID, task_id)
        request = execute_request(
            ti_id=ti, dag_id="py", task_id=task_id, task_json=self.tasks[task_id],
            fileloc=str(self.dag_file),
            file_hash=file_hash(self.dag_file) if file_hash_ is None else file_hash_,
            run_id=RUN_ID, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        assert self.client.execute(request).accepted
        return self.fake.final_report(ti)

    def run_bash(self, dag: DAG, task_id: str, **kwargs: object) -> scheduler_pb2.AttemptReport:
        ti = self.ti()
        self.fake.expect(ti, dag.dag_id, RUN_ID, task_id)
        request = execute_request(
            ti_id=ti, dag_id=dag.dag_id, task_id=task_id, task_json=task_entry(dag, task_id),
            fileloc=str(self.dags / "bash_dags.py"), run_id=RUN_ID, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        assert self.client.execute(request).accepted
        return self.fake.final_report(ti)

    def xcom(self, dag_id: str, task_id: str, key: str = "return_value") -> object:
        with self.fake.lock:
            text = self.fake.xcoms.get((dag_id, RUN_ID, task_id, key))
        return None if text is None else json.loads(text)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("worker-tasks")
    fake = FakeScheduler()
    fake.variables.update(env="prod", cfg='{"name": "cfg-name"}')
    port = fake.start()
    worker = start_worker(tmp, f"127.0.0.1:{port}", env={"TRADEWIND__CORE__MAX_XCOM_BYTES": "2000"})
    dags = tmp / "home" / "dags"
    dag_file = dags / "py_dag.py"
    dag_file.write_text(DAG_FILE)
    (dags / "script.sh").write_text("echo from script {{ ds_nodash }}\n")
    parsed = parse_file(str(dag_file))
    assert not parsed.errors, parsed.errors
    tasks = {t["task_id"]: json.dumps(t) for t in parsed.dags[0]["dag"]["tasks"]}
    client = WorkerClient(worker.ports["grpc"])
    try:
        wait_registered(fake)
        yield Cluster(fake, worker, client, dags, dag_file, tasks)
    finally:
        client.close()
        assert worker.stop() == 0, worker.log()
        fake.stop()


def bash_dag(command: str, **kwargs: object) -> DAG:
    with DAG("sh", schedule=None, params={"p": "dag"}) as dag:
        BashOperator(task_id="run", bash_command=command, **kwargs)  # type: ignore[arg-type]
    return dag


@pytest.mark.parametrize(
    ("command", "event", "exit_code", "error"),
    [
        ("echo one; echo two", SUCCESS, 0, ""),
        ("echo oops >&2; exit 3", FAILED, 3, "non-zero exit code 3."),
        ("exit 99", SKIPPED, 99, "Bash command returned exit code 99. Skipping."),
    ],
)
def test_bash_outcomes(
    cluster: Cluster, command: str, event: int, exit_code: int, error: str
) -> None:
    report = cluster.run_bash(bash_dag(command), "run")
    assert report.event == event
    assert report.exit_code == exit_code
    assert report.error.endswith(error)
    # a try shorter than worker.start_report_delay_s sends one report: its start rides along
    assert [r.event for r in cluster.fake.reports_for(report.attempt.ti_id)] == [event]
    assert 0 < report.started_at_unix <= report.at_unix
    if event == SUCCESS:
        assert cluster.xcom("sh", "run") == "two"  # the last line, as Airflow pushes it


def test_bash_templates_env_and_cwd(cluster: Cluster, tmp_path: Path) -> None:
    with cluster.fake.lock:
        cluster.fake.xcoms[("sh", RUN_ID, "foo", "table_name")] = json.dumps("events_2024")
    command = (
        "echo {{ ti.xcom_pull(task_ids='foo', key='table_name') }} {{ params.p }} "
        "{{ var.value.env }} $AIRFLOW_CTX_DAG_ID $MINE $(pwd)"
    )
    dag = bash_dag(command, env={"MINE": "{{ ds }}", "PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    report = cluster.run_bash(dag, "run", conf={"p": "conf"})
    assert report.event == SUCCESS, report.error
    assert cluster.xcom("sh", "run") == f"events_2024 conf prod sh 2024-01-02 {tmp_path}"


def shipped_log(cluster: Cluster, ti: int, needle: str) -> str:
    text: str = cluster.fake.wait(
        lambda: needle in cluster.fake.log_text(ti) and cluster.fake.log_text(ti),
        10,
        f"{needle!r} in the shipped log",
    )
    return text


def test_a_try_longer_than_the_start_report_delay_reports_its_start_first(
    cluster: Cluster,
) -> None:
    report = cluster.run_bash(bash_dag("sleep 0.4"), "run")
    assert report.event == SUCCESS, report.error
    reports = cluster.fake.reports_for(report.attempt.ti_id)
    assert [r.event for r in reports] == [scheduler_pb2.ATTEMPT_EVENT_STARTED, SUCCESS]
    assert report.started_at_unix == 0
    assert reports[1].at_unix - reports[0].at_unix >= 0.35


def test_a_bash_task_needing_only_the_run_context_runs_as_bash_itself(cluster: Cluster) -> None:
    # no Python task process: bash's parent is the fork server, which also wrote the log header
    report = cluster.run_bash(bash_dag("echo {{ run_id }} >&2; printf 'a\\nb'"), "run")
    assert report.event == SUCCESS, report.error
    log = shipped_log(cluster, report.attempt.ti_id, "Marking task as SUCCESS.")
    assert "{direct_bash.py:0} INFO - Running command:" in log
    assert f"{RUN_ID}\na\nb\n[" in log  # output as printed; the last line is ended for the log
    assert cluster.xcom("sh", "run") == "b"


def test_a_bash_template_calling_the_task_api_runs_in_a_task_process(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("echo {{ var.value.env }}"), "run")
    assert report.event == SUCCESS, report.error
    log = shipped_log(cluster, report.attempt.ti_id, "Marking task as SUCCESS.")
    assert "direct_bash.py" not in log
    assert "Running command:" in log
    assert cluster.xcom("sh", "run") == "prod"


def test_a_variable_with_a_default_in_a_bash_template_reads_the_real_variable(
    cluster: Cluster,
) -> None:
    report = cluster.run_bash(bash_dag("echo {{ var.value.get('env', 'dev') }}"), "run")
    assert report.event == SUCCESS, report.error
    assert cluster.xcom("sh", "run") == "prod"


def test_a_slow_bash_template_renders_in_a_task_process_not_the_fork_server(
    cluster: Cluster,
) -> None:
    report = cluster.run_bash(bash_dag("echo {{ macros.time.sleep(0.3) or 'slow' }}"), "run")
    assert report.event == SUCCESS, report.error
    assert cluster.xcom("sh", "run") == "slow"
    log = shipped_log(cluster, report.attempt.ti_id, "Marking task as SUCCESS.")
    assert "direct_bash.py" not in log


def test_the_bash_return_value_is_the_last_newline_separated_line(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("printf 'x\\na\\rb  \\n'"), "run")
    assert report.event == SUCCESS, report.error
    assert cluster.xcom("sh", "run") == "a\rb"  # a carriage return does not end a line


def test_bash_that_cannot_start_fails_the_try_with_the_reason(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("true", env={"PATH": "/nonexistent"}), "run")
    assert report.event == FAILED
    assert "cannot start bash" in report.error
    assert report.started_at_unix > 0  # the try counts as started, so it may retry


def test_a_direct_bash_return_value_over_the_limit_fails_the_try(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("head -c 3000 /dev/zero | tr '\\0' x; echo"), "run")
    assert report.event == FAILED
    assert "more than core.max_xcom_bytes (2000)" in report.error


def test_trace_context_reaches_the_task_process(cluster: Cluster) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    dag = bash_dag("echo $TRACEPARENT")
    ti = cluster.ti()
    cluster.fake.expect(ti, "sh", RUN_ID, "run")
    request = execute_request(
        ti_id=ti, dag_id="sh", task_id="run", task_json=task_entry(dag, "run"), run_id=RUN_ID
    )
    assert cluster.client.execute(request, metadata=(("traceparent", parent),)).accepted
    assert cluster.fake.final_report(ti).event == SUCCESS
    child = str(cluster.xcom("sh", "run"))
    assert child.startswith(f"00-{trace_id}-")  # the worker's "execute" span, same trace
    assert child != parent


def test_tasks_do_not_inherit_the_workers_secrets(cluster: Cluster) -> None:
    report = cluster.run_bash(
        bash_dag('echo "${TRADEWIND__RPC__TOKEN:-unset} $TRADEWIND_HOME"'), "run"
    )
    assert report.event == SUCCESS
    assert cluster.xcom("sh", "run") == f"unset {cluster.dags.parent}"


def test_bash_script_files_are_templates(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("script.sh"), "run")
    assert report.event == SUCCESS, report.error
    assert cluster.xcom("sh", "run") == "from script 20240102"


def test_undefined_template_names_fail_the_attempt(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("echo {{ not_a_name }}"), "run")
    assert report.event == FAILED
    assert "'not_a_name' is undefined" in report.error
    log = cluster.fake.wait(
        lambda: (
            "Exception rendering" in cluster.fake.log_text(report.attempt.ti_id)
            and cluster.fake.log_text(report.attempt.ti_id)
        ),
        10,
        "the shipped log",
    )
    assert "echo {{ not_a_name }}" in log


def test_a_missing_cwd_fails_as_airflow_says(cluster: Cluster) -> None:
    report = cluster.run_bash(bash_dag("true", cwd="/no/such/dir"), "run")
    assert report.event == FAILED
    assert report.error == "Can not find the cwd: /no/such/dir"


def test_python_callables_share_xcoms_and_read_variables(cluster: Cluster) -> None:
    for task_id in ("produce", "split"):
        report = cluster.run_python(task_id)
        assert report.event == SUCCESS, report.error
    assert cluster.xcom("py", "produce") == {"rows": 3, "name": "cfg-name"}
    assert cluster.xcom("py", "produce", "table_name") == "events_prod"
    assert cluster.xcom("py", "split") == {"left": 1, "right": [2]}
    assert cluster.xcom("py", "split", "left") == 1
    report = cluster.run_python("consume")
    assert report.event == SUCCESS, report.error
    assert cluster.xcom("py", "consume") == [3, [2], "2024-01-02", "dag", "events_prod", RUN_ID, 2]


def test_python_template_fields_render(cluster: Cluster) -> None:
    assert cluster.run_python("templated").event == SUCCESS
    assert cluster.xcom("py", "templated") == "20240102"


@pytest.mark.parametrize(
    ("task_id", "event", "error"),
    [
        ("boom", FAILED, "ValueError: boom"),
        ("skip", SKIPPED, "nothing to do today"),
        ("exit0", SUCCESS, ""),
        ("quiet", SUCCESS, ""),
    ],
)
def test_python_outcomes(cluster: Cluster, task_id: str, event: int, error: str) -> None:
    report = cluster.run_python(task_id)
    assert report.event == event
    assert report.error == error
    if task_id == "quiet":
        assert cluster.xcom("py", "quiet") is None


def test_a_python_task_starts_with_default_signal_handlers(cluster: Cluster) -> None:
    """None of the fork server's own handlers (SIGALRM: its render budget) reach a task (the
    task runtime then sets its own SIGTERM handler)."""
    assert cluster.run_python("signals").event == SUCCESS
    assert cluster.xcom("py", "signals") == [True, True, True]


def test_an_oversized_xcom_fails_the_attempt(cluster: Cluster) -> None:
    report = cluster.run_python("big")
    assert report.event == FAILED
    assert "XCom 'return_value' of task 'big' is 5002 bytes" in report.error
    assert "core.max_xcom_bytes (2000)" in report.error


def test_branches_are_reported(cluster: Cluster) -> None:
    pick = cluster.run_python("pick")
    assert pick.event == SUCCESS
    assert pick.has_followed
    assert list(pick.followed) == ["b1", "b2"]
    closed = cluster.run_python("gate", conf={"go": False})
    assert closed.event == SUCCESS
    assert closed.has_followed
    assert list(closed.followed) == []
    opened = cluster.run_python("gate", conf={"go": True})
    assert opened.event == SUCCESS
    assert not opened.has_followed


def test_a_changed_dag_file_is_refused(cluster: Cluster) -> None:
    report = cluster.run_python("templated", file_hash_="0" * 64)
    assert report.event == FAILED
    assert report.error == f"DAG file differs on this worker: {cluster.dag_file}"


def test_tail_follows_a_running_attempt_to_its_end(cluster: Cluster) -> None:
    dag = bash_dag("for i in 1 2 3; do echo line-$i; sleep 0.2; done")
    ti = cluster.ti()
    cluster.fake.expect(ti, "sh", RUN_ID, "run")
    request = execute_request(
        ti_id=ti, dag_id="sh", task_id="run", task_json=task_entry(dag, "run"), run_id=RUN_ID
    )
    assert cluster.client.execute(request).accepted
    cluster.fake.wait(lambda: cluster.fake.reports_for(ti), 10, "the attempt to start")
    text = "".join(chunk.data for chunk in cluster.client.tail(ti, 1, follow=True))
    assert cluster.fake.final_report(ti).event == SUCCESS
    assert "line-1\nline-2\nline-3\n" in text
    assert "Command exited with return code 0" in text
    shipped = cluster.fake.wait(
        lambda: (
            "Marking task as SUCCESS" in cluster.fake.log_text(ti) and cluster.fake.log_text(ti)
        ),
        10,
        "the whole log to be shipped",
    )
    assert shipped == text


def test_execute_batch_takes_each_attempt_as_execute_would_replying_in_order(
    cluster: Cluster,
) -> None:
    dag = bash_dag('echo "trace $TRACEPARENT"')
    good, bad, again = cluster.ti(), cluster.ti(), cluster.ti()
    for ti in (good, again):
        cluster.fake.expect(ti, dag.dag_id, RUN_ID, "run")

    def req(ti: int, **kwargs: object) -> worker_pb2.ExecuteRequest:
        return execute_request(
            ti_id=ti, dag_id=dag.dag_id, task_id="run", task_json=task_entry(dag, "run"),
            fileloc=str(cluster.dags / "bash_dags.py"), run_id=RUN_ID, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip

    traced = req(good)
    traced.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    malformed = req(bad, try_number=-1)
    # a whole serialized DAG that lacks the task: an unexpected error (KeyError) while taking
    # it refuses that attempt only, never the call (which would hide what already started)
    whole_dag = json.dumps(spec_to_dict(dag_to_spec(dag)))
    odd = req(cluster.ti())
    odd.task_json, odd.task_id = whole_dag, "not-in-it"
    reply = cluster.client.stub.ExecuteBatch(
        # another try of it: its own log file (two attempts of one try would share one)
        worker_pb2.ExecuteBatchRequest(attempts=[traced, malformed, odd, req(again, try_number=2)]),
        timeout=10,
        metadata=cluster.client.metadata,
    )
    assert [r.accepted for r in reply.replies] == [True, False, False, True]
    assert reply.replies[1].reason.startswith("bad request: try_number")
    assert "not-in-it" in reply.replies[2].reason
    for ti in (good, again):
        assert cluster.fake.final_report(ti).event == SUCCESS
    # the attempt's own trace context: its task.execute span continues that trace
    returned = {x.key: x.value for x in cluster.fake.final_report(good).xcoms}
    assert "0af7651916cd43dd8448eb211c80319c" in returned["return_value"]
    others = {x.key: x.value for x in cluster.fake.final_report(again).xcoms}
    assert "0af7651916cd43dd8448eb211c80319c" not in others["return_value"]
