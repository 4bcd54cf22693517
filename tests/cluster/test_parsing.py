"""The parse step end to end: real dags folders, real parse subprocesses, real PostgreSQL.
Broken files become import errors of that file only; two replicas parse each file once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tradewind_cluster.parsing as parsing
from tradewind_cluster.config.settings import Settings
from tradewind_cluster.parsing import (
    DagFileProcessor,
    FileOutcome,
    ParseReport,
    ProcessorOptions,
    decode_runner_output,
    list_dag_files,
)
from tradewind_cluster.store import dag_files as df
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.schema import dag, dag_file, import_error, serialized_dag

pytestmark = pytest.mark.cluster

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)

GOOD = """
from datetime import datetime
from tradewind import DAG, EmptyOperator
{prelude}
with DAG("{dag_id}", schedule="@daily", start_date=datetime(2026, 1, 1)) as dag:
    EmptyOperator(task_id="a") >> EmptyOperator(task_id="{last}")
"""
HEAD = "from datetime import datetime\nfrom tradewind import DAG, EmptyOperator\n"
BROKEN = {
    "syntax.py": HEAD + "with DAG('syntax', schedule=None) as dag\n    pass\n",
    "cycle.py": HEAD
    + "with DAG('cycle', schedule=None):\n"
    + "    a = EmptyOperator(task_id='a')\n    b = EmptyOperator(task_id='b')\n"
    + "    a >> b\n    b >> a\n",
    "dup_task.py": HEAD
    + "with DAG('dup', schedule=None):\n"
    + "    EmptyOperator(task_id='a')\n    EmptyOperator(task_id='a')\n",
    "trigger.py": HEAD
    + "with DAG('trig', schedule=None):\n    EmptyOperator(task_id='a', trigger_rule='bogus')\n",
    "cron.py": HEAD + "DAG('cron', schedule='61 * * * *', start_date=datetime(2026, 1, 1))\n",
    "crash.py": "# a tradewind dag file that kills its interpreter\nimport os\nos._exit(3)\n",
}
EXPECTED = {
    "syntax.py": "SyntaxError",
    "cycle.py": "CycleError",
    "dup_task.py": "DuplicateTaskIdError",
    "trigger.py": "InvalidTriggerRuleError: unknown trigger rule 'bogus'",
    "cron.py": "InvalidScheduleError",
    "crash.py": "crashed (exit code 3)",
}


def good(dag_id: str, *, prelude: str = "", last: str = "b") -> str:
    return GOOD.format(dag_id=dag_id, prelude=prelude, last=last)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def register(database: Database, *member_ids: str) -> None:
    def _do(conn: sa.Connection) -> None:
        for m in member_ids:
            members.register_member(conn, member_id=m, name=m, hostname="h", pid=1, version="test")

    database.transaction(_do)


def make(database: Database, folder: Path, member: str = "a", **kw: Any) -> DagFileProcessor:
    kw.setdefault("max_files_per_run", 8)
    options = ProcessorOptions(dags_folder=folder, parse_interval_s=30, **kw)
    return DagFileProcessor(database, options, member)


def drain(proc: DagFileProcessor, now: datetime) -> list[ParseReport]:
    """run_once until no file is due at `now`."""
    reports = [proc.run_once(now)]
    while reports[-1].files:
        reports.append(proc.run_once(now))
    return reports


def rows(database: Database, table: sa.Table, **where: object) -> list[sa.RowMapping]:
    q = sa.select(table)
    for key, value in where.items():
        q = q.where(table.c[key] == value)
    return database.read(lambda c: list(c.execute(q).mappings()))


def errors(database: Database) -> dict[str, str]:
    return {Path(r["path"]).name: r["error"] for r in rows(database, import_error)}


def active(database: Database) -> dict[str, bool]:
    return {r["dag_id"]: r["is_active"] for r in rows(database, dag)}


# -------------------------------------------------------------------------------- discovery
def test_discovery_lists_py_files_recursively_minus_ignored_and_unsafe(tmp_path: Path) -> None:
    dag_text = "from tradewind import DAG\n"
    for name in ["a.py", "sub/b.py", "sub/deep/c.py", "ignored_1.py", "skipdir/d.py",
                 "sub/local.py", "sub/keep_local.py", "sub/deep/again.py"]:  # fmt: skip
        write(tmp_path, name, dag_text)
    write(tmp_path, "notes.txt", dag_text)
    write(tmp_path, "plain.py", "x = 1  # no words\n")
    write(tmp_path, "upper.py", "# TradeWind DAG\n")
    write(
        tmp_path, ".tradewindignore", "ignored_*.py\nskipdir/  # retired\n# a comment\nagain.py\n"
    )
    write(tmp_path, "sub/.tradewindignore", "*local.py\n!keep_local.py\n")

    found = [
        Path(p).relative_to(tmp_path).as_posix() for p in list_dag_files(tmp_path, safe_mode=True)
    ]
    assert found == ["a.py", "sub/b.py", "sub/deep/c.py", "sub/keep_local.py", "upper.py"]
    unsafe = list_dag_files(tmp_path, safe_mode=False)
    assert str(tmp_path / "plain.py") in unsafe
    assert list_dag_files(tmp_path / "nowhere", safe_mode=True) == []


def test_public_api_is_exported() -> None:
    for name in parsing.__all__:
        assert getattr(parsing, name) is not None
    with pytest.raises(AttributeError):
        _ = parsing.nothing_here  # type: ignore[attr-defined]


def test_options_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        core={
            "dags_folder": str(tmp_path),
            "dag_discovery_safe_mode": False,
            "default_timezone": "Europe/Paris",
            "dags_are_paused_at_creation": False,
        },
        scheduler={"parse_interval_s": 7, "parse_timeout_s": 3},
    )
    options = ProcessorOptions.from_settings(settings, max_files_per_run=5)
    assert options.dags_folder == tmp_path
    assert (options.parse_interval_s, options.parse_timeout_s) == (7, 3)
    assert (options.safe_mode, options.paused_at_creation) == (False, False)
    assert (options.default_timezone, options.max_files_per_run) == ("Europe/Paris", 5)


def test_runner_output_that_is_not_a_result_is_a_crash() -> None:
    garbage = decode_runner_output("/d/x.py", 0, b"not json", b"oops", 5.0)
    assert garbage.error == "the parser of /d/x.py printed no valid result (exit code 0)\noops"
    killed = decode_runner_output("/d/x.py", -9, b"", b"", 5.0)
    assert killed.error == "the parser of /d/x.py crashed (signal SIGKILL)"
    assert killed.dags == ()


# -------------------------------------------------------------------------------- processing
def test_good_file_is_stored_and_each_broken_file_is_its_own_import_error(
    database: Database, tmp_path: Path
) -> None:
    register(database, "a")
    write(tmp_path, "good.py", good("good", prelude="print('noise on stdout')"))
    for name, text in BROKEN.items():
        write(tmp_path, name, text)
    reports = drain(make(database, tmp_path), NOW)

    first = reports[0]
    assert first.discovery is not None
    assert first.discovery.files == 7
    assert sum(r.files_parsed for r in reports) == 7
    assert sum(r.import_errors for r in reports) == 6
    assert sum(r.dags_found for r in reports) == 1
    assert all(d > 0 for r in reports for d in r.durations.values())
    found = errors(database)
    assert set(found) == set(EXPECTED)
    for name, text in EXPECTED.items():
        assert text in found[name], (name, found[name])
    # The traceback points at the user's line, not the parser's internals.
    assert f'File "{tmp_path / "dup_task.py"}", line 5' in found["dup_task.py"]
    assert active(database) == {"good": True}
    sd = rows(database, serialized_dag, dag_id="good")[0]
    assert sd["fileloc"] == str(tmp_path / "good.py")
    assert [t["task_id"] for t in sd["data"]["dag"]["tasks"]] == ["a", "b"]


def test_a_hanging_file_times_out_while_others_parse(database: Database, tmp_path: Path) -> None:
    register(database, "a")
    write(tmp_path, "good.py", good("good"))
    write(tmp_path, "hang.py", "# tradewind dag\nimport time\ntime.sleep(3600)\n")
    report = make(database, tmp_path, parse_timeout_s=1.5).run_once(NOW)

    assert report.files_parsed == 2
    found = errors(database)
    assert list(found) == ["hang.py"]
    assert "timed out after 1.5s" in found["hang.py"]
    assert active(database) == {"good": True}
    assert report.durations[str(tmp_path / "hang.py")] < 10


def test_one_bad_dag_does_not_hide_the_good_dags_of_its_file(
    database: Database, tmp_path: Path
) -> None:
    register(database, "a")
    write(tmp_path, "multi.py", BROKEN["cycle.py"] + good("fine") + good("twice") + good("twice"))
    make(database, tmp_path).run_once(NOW)
    error = errors(database)["multi.py"]
    assert "CycleError" in error
    assert "DAG id 'twice' is defined 2 times" in error
    assert active(database) == {"fine": True}


def test_error_cleared_when_the_file_is_fixed(database: Database, tmp_path: Path) -> None:
    register(database, "a")
    write(tmp_path, "x.py", BROKEN["syntax.py"])
    proc = make(database, tmp_path)
    proc.run_once(NOW)
    assert list(errors(database)) == ["x.py"]

    write(tmp_path, "x.py", good("x"))
    report = proc.run_once(LATER)
    assert report.files_parsed == 1
    assert report.import_errors == 0
    assert errors(database) == {}
    assert active(database) == {"x": True}


def test_removed_file_deactivates_its_dags_and_drops_its_error(
    database: Database, tmp_path: Path
) -> None:
    register(database, "a")
    write(tmp_path, "keep.py", good("keep"))
    gone = write(tmp_path, "gone.py", good("gone"))
    broken = write(tmp_path, "broken.py", BROKEN["syntax.py"])
    proc = make(database, tmp_path)
    proc.run_once(NOW)
    assert active(database) == {"keep": True, "gone": True}
    gone.unlink()
    broken.unlink()

    report = proc.run_once(LATER)
    assert report.discovery is not None
    assert report.discovery.deactivated_dags == ("gone",)
    assert report.dag_bag_size == 1
    assert report.import_errors_total == 0
    assert active(database) == {"keep": True, "gone": False}
    assert errors(database) == {}


def test_unchanged_spec_is_not_rewritten(database: Database, tmp_path: Path) -> None:
    register(database, "a")
    write(tmp_path, "x.py", good("x"))
    proc = make(database, tmp_path)
    proc.run_once(NOW)
    before = rows(database, serialized_dag, dag_id="x")[0]

    write(tmp_path, "x.py", "# only a comment changed\n" + good("x"))
    assert proc.run_once(LATER).files_parsed == 1
    after = rows(database, serialized_dag, dag_id="x")[0]
    assert after["updated_at"] == before["updated_at"]
    assert after["spec_hash"] == before["spec_hash"]

    write(tmp_path, "x.py", good("x", last="c"))
    proc.run_once(LATER + timedelta(seconds=30))
    changed = rows(database, serialized_dag, dag_id="x")[0]
    assert changed["updated_at"] > before["updated_at"]


def test_safe_mode_skips_files_without_the_words(database: Database, tmp_path: Path) -> None:
    register(database, "a", "b")
    write(tmp_path, "plain.py", "VALUE = 1\n")
    write(tmp_path, "x.py", good("x"))
    make(database, tmp_path).run_once(NOW)
    assert [Path(r["path"]).name for r in rows(database, dag_file)] == ["x.py"]

    report = make(database, tmp_path, "b", safe_mode=False).run_once(LATER)
    assert report.discovery is not None
    assert report.discovery.files == 2
    plain = rows(database, dag_file, path=str(tmp_path / "plain.py"))[0]
    assert plain["parsed_by"] == "b"
    assert errors(database) == {}


def test_ignored_files_are_never_parsed(database: Database, tmp_path: Path) -> None:
    register(database, "a")
    write(tmp_path, ".tradewindignore", "legacy/\n")
    write(tmp_path, "legacy/old.py", BROKEN["syntax.py"])
    write(tmp_path, "x.py", good("x"))
    make(database, tmp_path).run_once(NOW)
    assert [Path(r["path"]).name for r in rows(database, dag_file)] == ["x.py"]
    assert errors(database) == {}


def test_dags_are_found_however_they_are_defined(database: Database, tmp_path: Path) -> None:
    register(database, "a")
    write(tmp_path, "helpers.py", "OWNER = 'team'\n")
    text = (
        HEAD
        + "from tradewind.decorators import dag\nimport helpers\n"
        + "with DAG('unnamed', schedule=None):\n    EmptyOperator(task_id='a')\n"
        + "@dag(schedule=None)\ndef decorated():\n    EmptyOperator(task_id='a')\n"
        + "decorated()\n"
        + "kept = DAG('assigned', schedule=None, tags=[helpers.OWNER])\n"
    )
    write(tmp_path, "many.py", text)
    make(database, tmp_path, paused_at_creation=False).run_once(NOW)
    assert errors(database) == {}
    found = {r["dag_id"]: r for r in rows(database, dag)}
    assert set(found) == {"unnamed", "decorated", "assigned"}
    assert found["assigned"]["tags"] == ["team"]
    assert {r["fileloc"] for r in found.values()} == {str(tmp_path / "many.py")}
    assert not any(r["is_paused"] for r in found.values())


def test_skip_unchanged_reuses_the_last_clean_parse(database: Database, tmp_path: Path) -> None:
    register(database, "a")
    counter = tmp_path.parent / f"{tmp_path.name}.count"
    write(tmp_path, "x.py", good("x", prelude=f"open({str(counter)!r}, 'a').write('x\\n')"))
    proc = make(database, tmp_path, skip_unchanged=True)
    proc.run_once(NOW)
    report = proc.run_once(LATER)
    assert [f.outcome for f in report.files] == [FileOutcome.UNCHANGED]
    assert counter.read_text() == "x\n"
    row = rows(database, dag_file)[0]
    assert row["next_parse_at"] == LATER + timedelta(seconds=30)


# -------------------------------------------------------------------------------- sharding
def test_two_replicas_parse_each_of_20_files_exactly_once(
    database: Database, tmp_path: Path
) -> None:
    register(database, "a", "b")
    counter = tmp_path.parent / f"{tmp_path.name}.count"
    log_line = f"open({str(counter)!r}, 'a').write(__file__ + '\\n')"
    paths = sorted(str(write(tmp_path, f"f{i:02d}.py", good(f"d{i:02d}", prelude=log_line)))
                   for i in range(20))  # fmt: skip
    a = make(database, tmp_path, "a", max_files_per_run=3)
    b = make(database, tmp_path, "b", max_files_per_run=3)
    assert a.discover(NOW) is not None
    reports: dict[str, list[ParseReport]] = {}
    start = threading.Barrier(2)

    def replica(proc: DagFileProcessor) -> None:
        start.wait(10)
        reports[proc.member_id] = drain(proc, NOW)

    threads = [threading.Thread(target=replica, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sorted(counter.read_text().splitlines()) == paths
    assert sum(r.files_parsed for rs in reports.values() for r in rs) == 20
    files = rows(database, dag_file)
    assert {f["parsed_by"] for f in files} <= {"a", "b"}
    assert all(f["last_parsed_at"] == NOW and f["lease_owner"] is None for f in files)
    by_member = {m: sum(f["parsed_by"] == m for f in files) for m in ("a", "b")}
    parsed_by_reports = {m: sum(r.files_parsed for r in rs) for m, rs in reports.items()}
    assert by_member == parsed_by_reports
    assert len(active(database)) == 20


def test_idle_parser_sleeps_until_a_file_can_next_be_leased(
    database: Database, tmp_path: Path
) -> None:
    """Replicas wake when files fall due and share them; a fixed sleep let one replica's phase
    take every file while its peers slept."""
    register(database, "a", "b")
    a, b = make(database, tmp_path, "a"), make(database, tmp_path, "b")
    assert a.idle_s(NOW, 5.0) == 5.0  # no file: the plain cap
    write(tmp_path, "f.py", good("d"))
    assert a.discover(NOW) is not None
    assert a.idle_s(NOW, 5.0) == 0.05  # due now but not leased this pass: look again soon
    assert a.run_once(NOW).files_parsed == 1  # next parse 30 s on
    assert a.idle_s(NOW + timedelta(seconds=28), 5.0) == 2.0
    assert b.idle_s(NOW + timedelta(seconds=28), 5.0) == 2.0
    assert a.idle_s(NOW, 5.0) == 5.0


def test_files_leased_by_a_dead_replica_are_taken_over(database: Database, tmp_path: Path) -> None:
    register(database, "a", "b")
    for i in range(3):
        write(tmp_path, f"f{i}.py", good(f"d{i}"))
    a = make(database, tmp_path, "a")
    assert a.discover(NOW) is not None
    # a leases every file, then dies before parsing them.
    leased = database.transaction(
        lambda c: df.claim_due_files(c, member_id="a", now=NOW, lease_until=LATER, limit=10)
    )
    assert len(leased) == 3
    b = make(database, tmp_path, "b")
    assert b.run_once(NOW).files == ()

    seq = database.read(lambda c: {m.id: m.heartbeat_seq for m in members.list_members(c)})["a"]
    assert database.transaction(
        lambda c: members.declare_dead(c, "a", seen_seq=seq, by="b", reason="test")
    )
    report = b.run_once(NOW)
    assert report.files_parsed == 3
    assert {r["parsed_by"] for r in rows(database, dag_file)} == {"b"}
    assert len(active(database)) == 3


def test_catchup_by_default_applies_to_dags_that_do_not_set_catchup(
    database: Database, tmp_path: Path
) -> None:
    register(database, "a")
    write(tmp_path, "quiet.py", good("quiet"))
    explicit = good("loud").replace('"loud",', '"loud", catchup=True,')
    assert "catchup=True" in explicit
    write(tmp_path, "loud.py", explicit)
    drain(make(database, tmp_path, catchup_by_default=False), NOW)
    stored = {r["dag_id"]: r["data"]["dag"] for r in rows(database, serialized_dag)}
    assert stored["quiet"]["catchup"] is False
    assert stored["loud"]["catchup"] is True
    settings = Settings(
        core={"dags_folder": str(tmp_path)}, scheduler={"catchup_by_default": False}
    )
    assert ProcessorOptions.from_settings(settings).catchup_by_default is False


def test_load_examples_parses_the_bundled_examples_beside_the_dags_folder(
    database: Database, tmp_path: Path
) -> None:
    register(database, "a")
    write(tmp_path, "good.py", good("good"))
    drain(make(database, tmp_path, load_examples=True), NOW)
    found = active(database)
    assert found["good"] is True
    assert found["tutorial"] is True  # one of tradewind_cluster/example_dags
    assert errors(database) == {}
    # turned off again: the examples go as a deleted file's DAGs go, the user's stay
    drain(make(database, tmp_path, load_examples=False), LATER)
    found = active(database)
    assert found["good"] is True
    assert found["tutorial"] is False
    settings = Settings(core={"dags_folder": str(tmp_path), "load_examples": True})
    assert ProcessorOptions.from_settings(settings).load_examples is True
