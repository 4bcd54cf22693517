"""`tradewind tasks logs DAG_ID TASK_ID RUN_ID [--try N] [--follow]`: a try's log from the chunks
workers ship to the store; --follow polls until the try has ended and its last chunks are in."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from tradewind.errors import BadInputError
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.dag_lookup import require_dag, require_run
from tradewind_cluster.store.database import Connection, Database
from tradewind_cluster.store.listing import TaskState, find_task_instance
from tradewind_cluster.store.task_logs import list_tries, read_log

__all__ = ["LogCursor", "register"]

_LIVE = frozenset({"queued", "running"})
# After a try ends its worker may still be shipping its last chunks: read until quiet this long.
_DRAIN_S = 2.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tasks logs`."""
    p = sub.add_parser("logs", help="print the log of a task instance's try")
    p.add_argument("dag_id", help="the DAG id")
    p.add_argument("task_id", help="the task id")
    p.add_argument("run_id", help="the run id, or the run's logical date")
    p.add_argument("--try", dest="try_number", type=int, help="which try (default: the latest)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the try ends")
    p.set_defaults(handler=_logs)


@dataclass(slots=True)
class LogCursor:
    """Where one try's log has been read up to."""

    ti_id: int
    try_number: int
    after_seq: int = -1

    def read_more(self, conn: Connection) -> str:
        """The chunks after the last one read, as text."""
        chunks = read_log(conn, self.ti_id, self.try_number, after_seq=self.after_seq)
        if chunks:
            self.after_seq = chunks[-1].seq
        return "".join(c.data for c in chunks)


def _find(conn: Connection, args: argparse.Namespace, tz: str) -> tuple[str, TaskState, list[int]]:
    require_dag(conn, args.dag_id, active=False)
    run = require_run(conn, args.dag_id, args.run_id, tz)
    ti = find_task_instance(conn, args.dag_id, run.run_id, args.task_id)
    if ti is None:
        raise BadInputError(f"task {args.task_id!r} has no task instance in run {run.run_id}")
    return run.run_id, ti, list_tries(conn, ti.ti_id)


def _pick_try(ti: TaskState, tries: list[int], wanted: int | None) -> int:
    latest = max([ti.try_number, *tries], default=0)
    if wanted is None:
        return max(latest, 1)
    if wanted < 1 or wanted > max(latest, 1):
        raise BadInputError(
            f"task {ti.task_id!r} has had {ti.try_number} tries; there is no try {wanted}"
        )
    return wanted


def _ended(conn: Connection, dag_id: str, run_id: str, ti: TaskState, try_number: int) -> bool:
    now = find_task_instance(conn, dag_id, run_id, ti.task_id) or ti
    return now.try_number > try_number or now.state not in _LIVE


def _follow(db: Database, cursor: LogCursor, dag_id: str, run_id: str, ti: TaskState) -> None:
    quiet_since: float | None = None
    while True:
        text = db.read(cursor.read_more)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        ended = db.read(lambda c: _ended(c, dag_id, run_id, ti, cursor.try_number))
        if ended and quiet_since is not None and time.monotonic() - quiet_since >= _DRAIN_S:
            return
        time.sleep(0.25)


def _logs(args: argparse.Namespace, ctx: CliContext) -> int:
    tz = ctx.settings.core.default_timezone
    with ctx.database() as db:
        run_id, ti, tries = db.read(lambda c: _find(c, args, tz))
        cursor = LogCursor(ti_id=ti.ti_id, try_number=_pick_try(ti, tries, args.try_number))
        if args.follow:
            _follow(db, cursor, args.dag_id, run_id, ti)
            return 0
        text = db.read(cursor.read_more)
        while text:
            sys.stdout.write(text)
            text = db.read(cursor.read_more)
    if cursor.after_seq < 0:
        print(
            f"no log stored for try {cursor.try_number} of {args.task_id} in run {run_id}",
            file=sys.stderr,
        )
    return 0
