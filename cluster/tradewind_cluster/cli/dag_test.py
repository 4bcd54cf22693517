"""`tradewind dags test DAG_ID [LOGICAL_DATE]`: run a whole DAG in this process for development,
as Airflow's `dags test`: the DAG file is imported here, the core decides trigger rules,
branches, retries and the run's state exactly as the schedulers would, and each task really
runs through the worker runtime, one at a time, in topological order. Nothing is written to
the metadata database (which only supplies Variables), so live schedulers never see the run."""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tradewind.scheduling.examine import RunView, TaskInstanceView, examine_run
from tradewind.scheduling.retries import decide_outcome
from tradewind.states import DagRunState, TaskInstanceState
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.dates import parse_date, utcnow

if TYPE_CHECKING:
    from tradewind_cluster.cli.local_dag import LocalDag
    from tradewind_cluster.cli.local_run import TaskOutcome
    from tradewind_cluster.worker.task_context import RunInfo

__all__ = ["DagTest", "register"]

_TI = TaskInstanceState
RunTask = Callable[[str, int], "TaskOutcome"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dags test`."""
    p = sub.add_parser("test", help="run a whole DAG in this process (nothing is recorded)")
    p.add_argument("dag_id", help="the DAG id")
    p.add_argument("logical_date", nargs="?", help="logical date of the run (default: now)")
    p.add_argument("-c", "--conf", help="JSON object: the run's conf")
    p.add_argument(
        "-S", "--subdir", type=Path, help="import the DAG from this file or folder instead"
    )
    p.set_defaults(handler=_test)


@dataclass(slots=True)
class DagTest:
    """One in-memory run of a DAG: `step()` examines it, runs what was scheduled and returns
    the run's state once it has finished (None while it goes on)."""

    local: LocalDag
    run_task: RunTask
    say: Callable[[str], None]
    started: datetime = field(default_factory=utcnow)
    rng: random.Random = field(default_factory=random.Random)
    tis: dict[str, TaskInstanceView] = field(default_factory=dict)
    moved: int = 0  # task instances the last step moved

    def __post_init__(self) -> None:
        spec = self.local.spec
        self.tis = {
            t: TaskInstanceView(task_id=t, state=_TI.NONE, max_tries=spec.tasks[t].retries)
            for t in spec.tasks
        }

    def step(self, now: datetime) -> DagRunState | None:
        """One examination and the tasks it scheduled; the run's state when it finished."""
        view = RunView(run_id="test", state=DagRunState.RUNNING, start_date=self.started)
        exam = examine_run(self.local.spec, view, self.tis, {}, now, allow_future_logical_date=True)
        scheduled: list[str] = []
        self.moved = len(exam.task_decisions)
        for d in exam.task_decisions:
            self.tis[d.task_id] = replace(self.tis[d.task_id], state=d.to_state)
            if d.to_state is _TI.SCHEDULED:
                scheduled.append(d.task_id)
            else:
                self.say(f"{d.task_id}: {d.to_state} ({d.reason})")
        for task_id in [t for t in self.local.spec.tasks if t in scheduled]:
            self._run(task_id)
        if scheduled or exam.run_decision is None:
            return None
        self.say(f"run {exam.run_decision.to_state}: {exam.run_decision.reason}")
        return exam.run_decision.to_state

    def next_retry_at(self) -> datetime | None:
        """When the first task waiting for a retry may run again."""
        waits = [
            t.next_retry_at
            for t in self.tis.values()
            if t.state is _TI.UP_FOR_RETRY and t.next_retry_at is not None
        ]
        return min(waits, default=None)

    def _run(self, task_id: str) -> None:
        view = self.tis[task_id]
        try_number = view.try_number + 1
        self.say(f"{task_id}: running (try {try_number})")
        outcome = self.run_task(task_id, try_number)
        task = self.local.spec.tasks[task_id]
        decision = decide_outcome(
            task, outcome.outcome, try_number, view.max_tries, utcnow(), self.rng.random
        )
        self.tis[task_id] = replace(
            view,
            state=decision.to_state,
            try_number=try_number,
            next_retry_at=decision.next_retry_at,
            followed=outcome.followed,
        )
        error = f": {outcome.error}" if outcome.error else ""
        self.say(f"{task_id}: {decision.to_state} ({decision.reason}){error}")


def _runner(local: LocalDag, run: RunInfo, variables: Callable[[str], str | None]) -> RunTask:
    # The worker runtime (Jinja, gRPC stubs) loads only for the commands that run tasks.
    from tradewind_cluster.cli.local_run import (
        LocalTaskApi,
        MemoryXComs,
        make_launch,
        run_task_here,
    )

    xcoms = MemoryXComs()

    def run_one(task_id: str, try_number: int) -> TaskOutcome:
        task = local.spec.tasks[task_id]
        launch = make_launch(local, task, run, try_number)
        api = LocalTaskApi(launch, xcoms=xcoms, variables=variables)
        return run_task_here(launch, task, run, api)

    return run_one


def _drive(tester: DagTest) -> DagRunState | None:
    """Step the run to its end, sleeping through retry delays; None when it is stuck."""
    state = tester.step(utcnow())
    while state is None:
        retry_at = tester.next_retry_at()
        if retry_at is None and not tester.moved:
            return None
        if retry_at is not None and retry_at > utcnow():
            tester.say(f"waiting until {retry_at.isoformat()} for a retry")
            time.sleep(max(0.0, (retry_at - utcnow()).total_seconds()))
        state = tester.step(utcnow())
    return state


def _test(args: argparse.Namespace, ctx: CliContext) -> int:
    from tradewind_cluster.cli.local_dag import open_local_dag, run_info_for
    from tradewind_cluster.cli.local_run import show_task_logs, store_variables
    from tradewind_cluster.cli.trigger import parse_conf

    settings = ctx.settings
    logical = utcnow().replace(microsecond=0)
    if args.logical_date:
        tz = settings.core.default_timezone
        logical = parse_date(args.logical_date, timezone=tz, what="logical date")
    conf = parse_conf(args.conf)
    show_task_logs()
    with ctx.database() as db:
        local = open_local_dag(settings, db, args.dag_id, subdir=args.subdir)
        run = replace(run_info_for(local.spec, logical), conf=conf)
        print(f"Testing DAG {args.dag_id} run {run.run_id} (file {local.fileloc})", flush=True)
        tester = DagTest(
            local=local,
            run_task=_runner(local, run, store_variables(db)),
            say=lambda line: print(line, flush=True),
        )
        state = _drive(tester)
    if state is None:
        print("the run cannot progress: no task can run and none waits for a retry")
        return 1
    return 0 if state is DagRunState.SUCCESS else 1
