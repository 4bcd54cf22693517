"""Probe: start-up cost of an attempt on the real worker, from Execute sent to user code running,
for a PythonOperator and a BashOperator (the first 3 attempts of each are warm-up, dropped).
Run from the repo root: `.venv/bin/python -m loadtest.probes.worker_startup [N] [WORKER_ARG...]`."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradewind_cluster.parsing.runner import parse_file
from tradewind_proto.v1 import scheduler_pb2

__all__ = ["main"]

WARM_UP = 3
TASK_IDS = ("py", "sh")

# @OUT@ is replaced by the marks' path prefix; each task writes its start time to its own mark.
_DAG_FILE = """
import time
from tradewind import DAG, PythonOperator, BashOperator
def mark(n):
    t = time.time()
    with open("@OUT@-py-" + str(n), "w") as fh:
        fh.write(repr(t))
with DAG("bench", schedule=None) as dag:
    PythonOperator(task_id="py", python_callable=mark, op_args=["{{ ti.try_number }}"],
                   do_xcom_push=False)
    BashOperator(task_id="sh", bash_command='date +%s.%N > "@OUT@-sh-$AIRFLOW_CTX_TRY_NUMBER"',
                 do_xcom_push=False)
"""


def _fake_scheduler() -> Any:
    """tests.support.fake_scheduler, imported at run time: a static import would make mypy check
    that test module too."""
    return importlib.import_module("tests.support.fake_scheduler")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Bench:
    """The parsed bench DAG file: where it is, its hash, and each task's serialized JSON."""

    path: Path
    file_hash: str
    tasks: dict[str, str]
    marks: Path


def _write_bench(tmp: Path) -> _Bench:
    """Write and parse the bench DAG into the worker's dags folder."""
    marks = tmp / "marks"
    path = tmp / "home" / "dags" / "bench.py"
    path.write_text(_DAG_FILE.replace("@OUT@", str(marks)))
    parsed = parse_file(str(path))
    if parsed.errors:
        raise RuntimeError(f"{path}: {parsed.errors}")
    tasks = {t["task_id"]: json.dumps(t) for t in parsed.dags[0]["dag"]["tasks"]}
    return _Bench(path=path, file_hash=parsed.file_hash, tasks=tasks, marks=marks)


def _attempt_ms(fs: Any, fake: Any, client: Any, bench: _Bench, ti: int, tid: str, n: int) -> float:
    """Send one Execute, wait for its success, return mark time minus send time in ms."""
    t0 = time.time()
    request = fs.execute_request(
        ti_id=ti,
        dag_id="bench",
        task_id=tid,
        task_json=bench.tasks[tid],
        fileloc=str(bench.path),
        file_hash=bench.file_hash,
        try_number=n,
    )
    reply = client.execute(request)
    if not reply.accepted:
        raise RuntimeError(f"Execute of {tid} try {n} refused: {reply}")
    report = fake.final_report(ti)
    if report.event != scheduler_pb2.ATTEMPT_EVENT_SUCCESS:
        raise RuntimeError(f"{tid} try {n} did not succeed: {report}")
    mark = float(Path(f"{bench.marks}-{tid}-{n}").read_text())
    return (mark - t0) * 1000


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children, with those it has reaped."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(f) for f in fields[11:15]) / tick
        todo.extend(int(k) for k in kids)
    return total


def _measure(fs: Any, fake: Any, worker: Any, bench: _Bench, n_tries: int) -> None:
    """Run each task n_tries times, one at a time, and print the distributions after warm-up,
    and the worker's CPU per attempt (agent, fork server and task processes together)."""
    fs.wait_registered(fake)
    client = fs.WorkerClient(worker.ports["grpc"])
    results: dict[str, list[float]] = {tid: [] for tid in TASK_IDS}
    ti = 0
    cpu_at = _cpu_s(worker.popen.pid)
    for n in range(1, n_tries + 1):
        for tid in TASK_IDS:
            ti += 1
            results[tid].append(_attempt_ms(fs, fake, client, bench, ti, tid, n))
    cpu = _cpu_s(worker.popen.pid) - cpu_at
    client.close()
    print(f"worker CPU per attempt (both kinds): {cpu / ti * 1000:.2f} ms (n={ti})")
    for tid, values in results.items():
        kept = sorted(values[WARM_UP:])
        print(
            f"{tid}: median {statistics.median(kept):.2f} ms  p10 {kept[len(kept) // 10]:.2f}  "
            f"p90 {kept[len(kept) * 9 // 10]:.2f}  (n={len(kept)})"
        )


def _print_agent_median(log: str) -> None:
    """The worker's own 'user code started' figures, as it logged them."""
    values = [float(x) for x in re.findall(r"user code started ([0-9.]+) ms", log)]
    print("agent-measured median", statistics.median(values) if values else None)


def main() -> int:
    """Start a fake scheduler and a real worker, measure, print."""
    n_tries = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    fs = _fake_scheduler()
    tmp = Path(tempfile.mkdtemp(prefix="tw-worker-startup-"))
    fake = fs.FakeScheduler()
    try:
        port = fake.start()
        worker = fs.start_worker(tmp, f"127.0.0.1:{port}", "--slots", "2", *sys.argv[2:])
        try:
            _measure(fs, fake, worker, _write_bench(tmp), n_tries)
        finally:
            worker.stop()
            _print_agent_median(worker.log())
    finally:
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
