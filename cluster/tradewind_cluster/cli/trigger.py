"""`tradewind dags trigger` and `dags backfill`: create queued runs (manual, or backfill runs for
every scheduled interval of a date range) that the schedulers start within max_active_runs.
As in Airflow, a paused DAG's runs are created but wait until it is unpaused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from datetime import datetime
from typing import Any

from tradewind.errors import BadInputError
from tradewind.schedules import RunType, manual_data_interval, next_dagrun_info, run_id_for
from tradewind.spec import DagSpec
from tradewind_cluster.cli.context import CliContext
from tradewind_cluster.cli.dag_lookup import require_spec
from tradewind_cluster.cli.dates import parse_optional_date, utcnow
from tradewind_cluster.store.database import Connection, Database
from tradewind_cluster.store.examine import flag_dags_for_run_check
from tradewind_cluster.store.listing import find_run
from tradewind_cluster.store.notify import notify
from tradewind_cluster.store.runs import NewRun, insert_runs, trigger_run

__all__ = [
    "MAX_BACKFILL_RUNS",
    "backfill_runs",
    "parse_conf",
    "register_backfill",
    "register_trigger",
]

CREATED_BY = "tradewind-cli"
MAX_BACKFILL_RUNS = 100_000
# Airflow's default [scheduler] allowed_run_id_pattern.
_RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]+$")
_BATCH = 1000


def register_trigger(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dags trigger`."""
    p = sub.add_parser("trigger", help="create a manual run; prints its run id")
    p.add_argument("dag_id", help="the DAG id")
    p.add_argument("-r", "--run-id", help="the run id (default: manual__<logical date>)")
    p.add_argument("-c", "--conf", help='JSON object: the run\'s conf, e.g. \'{"key": "v"}\'')
    p.add_argument(
        "-e",
        "--exec-date",
        "--logical-date",
        dest="logical_date",
        help="logical date (default: now)",
    )
    p.add_argument(
        "--no-replace-microseconds",
        dest="replace_microseconds",
        action="store_false",
        help="keep the microseconds of the logical date (Airflow zeroes them by default)",
    )
    p.add_argument("--wait", action="store_true", help="follow the run; exit 0 only if it succeeds")
    p.set_defaults(handler=_trigger)


def register_backfill(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dags backfill`."""
    p = sub.add_parser(
        "backfill", help="queue a backfill run for every scheduled interval in a date range"
    )
    p.add_argument("dag_id", help="the DAG id")
    p.add_argument("-s", "--start-date", help="first logical date (inclusive)")
    p.add_argument("-e", "--end-date", help="last logical date (inclusive)")
    p.add_argument("-c", "--conf", help="JSON object: the conf of every run")
    p.add_argument("--dry-run", action="store_true", help="list the runs, create nothing")
    p.set_defaults(handler=_backfill)


def parse_conf(text: str | None) -> dict[str, Any]:
    """The run conf given on the command line: a JSON object (BadInputError otherwise)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadInputError(f"--conf must be a JSON object, got {type(value).__name__}")
    return value


def _warn_paused(dag_id: str, what: str) -> None:
    print(
        f"warning: DAG {dag_id} is paused: {what} will not start until it is unpaused "
        f"(tradewind dags unpause {dag_id})",
        file=sys.stderr,
        flush=True,
    )


def _new_manual_run(args: argparse.Namespace, spec: DagSpec, logical: datetime) -> NewRun:
    run_id = args.run_id or run_id_for(RunType.MANUAL, logical)
    if not _RUN_ID.match(run_id) or len(run_id) > 250:
        raise BadInputError(
            f"run id {run_id!r} must be 1-250 characters of letters, digits and _.~:+-"
        )
    interval = manual_data_interval(spec, logical)
    return NewRun(
        run_id=run_id,
        logical_date=logical,
        data_interval_start=interval.start,
        data_interval_end=interval.end,
        run_type=RunType.MANUAL.value,
        conf=parse_conf(args.conf),
    )


def _create(db: Database, args: argparse.Namespace, logical: datetime) -> tuple[NewRun, bool]:
    def apply(conn: Connection) -> tuple[NewRun, bool]:
        info, spec = require_spec(conn, args.dag_id)
        run = _new_manual_run(args, spec, logical)
        if trigger_run(conn, args.dag_id, run, created_by=CREATED_BY) is None:
            found = find_run(conn, args.dag_id, run_id=run.run_id, logical_date=logical)
            clash = f" ({found.run_id} at {found.logical_date.isoformat()})" if found else ""
            raise BadInputError(
                f"a run of DAG {args.dag_id} already exists at {logical.isoformat()} or with "
                f"run id {run.run_id}{clash}"
            )
        return run, info.is_paused

    return db.transaction(apply)


def _trigger(args: argparse.Namespace, ctx: CliContext) -> int:
    parse_conf(args.conf)  # a bad conf fails before the database is opened
    tz = ctx.settings.core.default_timezone
    logical = parse_optional_date(args.logical_date, timezone=tz, what="--exec-date") or utcnow()
    if args.replace_microseconds:
        logical = logical.replace(microsecond=0)
    with ctx.database() as db:
        run, paused = _create(db, args, logical)
        print(run.run_id, flush=True)
        if paused:
            _warn_paused(args.dag_id, f"run {run.run_id}")
        if not args.wait:
            return 0
        from tradewind_cluster.cli.progress import follow_run

        final = follow_run(db, args.dag_id, run.run_id)
    print(f"run {run.run_id} of DAG {args.dag_id}: {final}")
    return 0 if final == "success" else 1


# ----------------------------------------------------------------------------------- backfill
def backfill_runs(
    spec: DagSpec, start: datetime, end: datetime, *, limit: int = MAX_BACKFILL_RUNS
) -> list[NewRun]:
    """A backfill run for each interval of the DAG's schedule whose logical date lies in
    [start, end], the first aligned to the schedule (Airflow's iter_dagrun_infos_between:
    the DAG's own start/end dates and catchup play no part). BadInputError past `limit`."""
    if start > end:
        raise BadInputError(
            f"--start-date {start.isoformat()} is after --end-date {end.isoformat()}"
        )
    window = dataclasses.replace(spec, start_date=start, end_date=end, catchup=True)
    runs: list[NewRun] = []
    info = next_dagrun_info(window, None, end)
    while info is not None and info.logical_date <= end:
        if len(runs) >= limit:
            raise BadInputError(
                f"the range holds more than {limit} intervals of DAG {spec.dag_id}; "
                "backfill a shorter range at a time"
            )
        runs.append(
            NewRun(
                run_id=run_id_for(RunType.BACKFILL, info.logical_date),
                logical_date=info.logical_date,
                data_interval_start=info.data_interval.start,
                data_interval_end=info.data_interval.end,
                run_type=RunType.BACKFILL.value,
            )
        )
        info = next_dagrun_info(window, info.data_interval, end)
    return runs


def _insert_backfill(conn: Connection, dag_id: str, runs: list[NewRun]) -> int:
    # Lock order dag → dag_run: flag the DAG for its queued runs, then insert them.
    flag_dags_for_run_check(conn, [dag_id])
    created = 0
    for i in range(0, len(runs), _BATCH):
        created += len(insert_runs(conn, dag_id, runs[i : i + _BATCH], created_by=CREATED_BY))
    if created:
        notify(conn, "runs")
    return created


def _backfill(args: argparse.Namespace, ctx: CliContext) -> int:
    conf = parse_conf(args.conf)
    tz = ctx.settings.core.default_timezone
    start = parse_optional_date(args.start_date, timezone=tz, what="--start-date")
    end = parse_optional_date(args.end_date, timezone=tz, what="--end-date")
    if start is None and end is None:
        raise BadInputError("Provide a start_date and/or end_date")
    start, end = start or end, end or start
    assert start is not None
    assert end is not None
    with ctx.database() as db:
        info, spec = db.read(lambda c: require_spec(c, args.dag_id))
        runs = [dataclasses.replace(r, conf=conf) for r in backfill_runs(spec, start, end)]
        if not runs:
            print(f"No run dates were found for the given dates and the schedule of {spec.dag_id}")
            return 0
        if args.dry_run:
            for r in runs:
                print(r.run_id)
            print(f"{len(runs)} backfill runs would be created (dry run)")
            return 0
        created = db.transaction(lambda c: _insert_backfill(c, args.dag_id, runs))
    skipped = len(runs) - created
    print(
        f"Created {created} backfill runs of DAG {args.dag_id} from {start.isoformat()} to "
        f"{end.isoformat()} ({skipped} skipped: a run exists at that logical date)"
    )
    if info.is_paused and created:
        _warn_paused(args.dag_id, "the backfill runs")
    return 0
