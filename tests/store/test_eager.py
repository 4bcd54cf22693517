"""Eager dispatch (store/eager.py): a success report hands its worker the run's next ready task
in the same statement, only where the critical section would have let it run, and never more
usage than the finished try gave back."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tests.store.test_queueing import limits_exceeded
from tests.store.test_record_ended import wait_for_report_lock_wait
from tests.support.factories import insert_dag, insert_run, insert_ti
from tradewind.scheduling.admission import admit
from tradewind.scheduling.retries import AttemptOutcome, decide_outcome
from tradewind.spec import BranchKind, DagSpec, ScheduleKind, ScheduleSpec, TaskKind, TaskSpec
from tradewind.trigger_rule import TriggerRule
from tradewind_cluster.store.attempts import ReportResult, record_start
from tradewind_cluster.store.database import Database
from tradewind_cluster.store.eager import EagerPlan, eager_plan, handed_again, record_ended_eager
from tradewind_cluster.store.queueing import QueuedAttempt, pools_with_scheduled, queue_pool
from tradewind_cluster.store.schema import serialized_dag, worker

pytestmark = pytest.mark.store
NOW = datetime(2026, 3, 1, tzinfo=UTC)
ENDED = NOW + timedelta(seconds=5)
_SCHEDULE = ScheduleSpec(kind=ScheduleKind.NONE, label="None")


def task(
    task_id: str, up: tuple[str, ...] = (), down: tuple[str, ...] = (), **kw: object
) -> TaskSpec:
    fields: dict[str, object] = {"kind": TaskKind.BASH, **kw}
    return TaskSpec(
        task_id=task_id,
        operator="BashOperator",
        upstream_task_ids=up,
        downstream_task_ids=down,
        **fields,  # type: ignore[arg-type]
    )


CHAIN = DagSpec(
    dag_id="d",
    fileloc="/dags/d.py",
    schedule=_SCHEDULE,
    tasks={
        "a": task("a", down=("b",)),
        "b": task("b", up=("a",), down=("c",)),
        "c": task("c", up=("b",)),
    },
)


def setup(
    database: Database,
    spec: DagSpec = CHAIN,
    *,
    priority: dict[str, int] | None = None,
    pool: dict[str, str] | None = None,
    queues: tuple[str, ...] = ("default",),
    slots: int = 4,
) -> QueuedAttempt:
    """A run of `spec` whose first task is running on worker w1; the rest not yet scheduled."""
    first = next(iter(spec.tasks))

    def rows(conn: Connection) -> None:
        insert_dag(conn, spec.dag_id)
        conn.execute(
            sa.insert(serialized_dag).values(
                dag_id=spec.dag_id, fileloc=spec.fileloc, data={}, spec_hash="h1", file_hash="f"
            )
        )
        conn.execute(
            sa.insert(worker).values(
                id="w1",
                name="w1",
                hostname="h",
                grpc_address="h:1",
                queues=list(queues),
                slots=slots,
            )
        )
        run = insert_run(conn, spec.dag_id)
        for task_id in spec.tasks:
            insert_ti(
                conn,
                run,
                task_id,
                state="scheduled" if task_id == first else "none",
                priority_weight=(priority or {}).get(task_id, 1),
                pool=(pool or {}).get(task_id, "default_pool"),
            )

    database.transaction(rows)
    outcome = database.transaction(
        lambda c: queue_pool(c, "default_pool", member_id="m", decide=admit, now=NOW)
    )
    assert outcome is not None
    q = outcome.queued[0]
    database.transaction(lambda c: record_start(c, q.ti_id, q.token, worker_id="w1", now=NOW))
    database.statement(lambda c: c.execute(sa.text("UPDATE dag_run SET examine_after = NULL")))
    return q


def succeed(
    database: Database, q: QueuedAttempt, plan: EagerPlan | None, parallelism: int | None = None
) -> ReportResult:
    assert plan is not None
    decision = decide_outcome(
        task(q.task_id), AttemptOutcome.SUCCESS, 1, 1, ENDED, random.Random(1).random
    )
    return database.statement(
        lambda c: record_ended_eager(
            c,
            q.ti_id,
            q.token,
            plan=plan,
            member_id="m2",
            parallelism=parallelism,
            outcome=AttemptOutcome.SUCCESS,
            decision=decision,
            now=ENDED,
            worker_id="w1",
        )
    )


def states(database: Database) -> dict[str, tuple[str, str | None]]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT task_id, state, worker FROM task_instance"))
        return {r.task_id: (r.state, r.worker) for r in rows}


def examine_after(database: Database) -> datetime | None:
    with database.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT examine_after FROM dag_run ORDER BY id LIMIT 1")
        ).scalar_one()


def test_a_success_hands_the_next_task_to_its_worker(database: Database) -> None:
    q = setup(database)
    result = succeed(database, q, eager_plan(CHAIN, "h1", "a"))
    assert result.accepted
    handed = result.handed
    assert handed is not None
    assert (handed.task_id, handed.try_number, handed.queue) == ("b", 1, "default")
    assert handed.run is not None
    assert handed.run.spec_hash == "h1"
    assert states(database) == {"a": ("success", "w1"), "b": ("queued", "w1"), "c": ("none", None)}
    with database.engine.connect() as conn:
        attempt = conn.execute(
            sa.text("SELECT state, worker, queued_by, token, dispatched_at FROM task_attempt "
                    "WHERE ti_id = :id"),
            {"id": handed.ti_id},
        ).one()  # fmt: skip
    assert tuple(attempt) == ("queued", "w1", "m2", handed.token, ENDED)
    # b was a's only downstream task: nothing else in the run can have moved
    assert not result.rearmed
    assert examine_after(database) is None


def b_token(database: Database) -> int:
    return int(
        database.read(
            lambda c: c.execute(
                sa.text("SELECT token FROM task_instance WHERE task_id = 'b'")
            ).scalar_one()
        )
    )


def test_the_handed_attempt_is_fenced_like_any_other(database: Database) -> None:
    q = setup(database)
    before = b_token(database)
    handed = succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed
    assert handed is not None
    # the handover issued a token of its own, as queueing does: one the task instance never
    # had before, so nothing sent under an older one can pass for this attempt
    assert handed.token == before + 1
    assert b_token(database) == handed.token
    stale, _ = database.transaction(
        lambda c: record_start(c, handed.ti_id, before, worker_id="w1", now=ENDED)
    )
    assert not stale.accepted
    started, _ = database.transaction(
        lambda c: record_start(c, handed.ti_id, handed.token, worker_id="w1", now=ENDED)
    )
    assert started.accepted


def test_a_fan_out_schedules_every_ready_task_and_hands_one_over(database: Database) -> None:
    fan = DagSpec(
        dag_id="d",
        fileloc="/dags/d.py",
        schedule=_SCHEDULE,
        tasks={
            "a": task("a", down=("x", "y", "z")),
            "x": task("x", up=("a",)),
            "y": task("y", up=("a",)),
            "z": task("z", up=("a",)),
        },
    )
    q = setup(database, fan, priority={"y": 3})
    result = succeed(database, q, eager_plan(fan, "h1", "a"))
    assert result.handed is not None
    assert result.handed.task_id == "y"  # the highest priority weight
    assert states(database) == {
        "a": ("success", "w1"), "x": ("scheduled", None), "y": ("queued", "w1"),
        "z": ("scheduled", None),
    }  # fmt: skip
    assert examine_after(database) is None  # every downstream task was taken care of


def test_nothing_is_handed_while_an_upstream_task_is_not_done(database: Database) -> None:
    join = DagSpec(
        dag_id="d",
        fileloc="/dags/d.py",
        schedule=_SCHEDULE,
        tasks={
            "a": task("a", down=("j",)),
            "x": task("x", down=("j",)),
            "j": task("j", up=("a", "x")),
        },
    )
    q = setup(database, join)
    result = succeed(database, q, eager_plan(join, "h1", "a"))
    assert result.accepted
    assert result.handed is None
    assert result.rearmed
    assert states(database)["j"] == ("none", None)
    assert examine_after(database) == ENDED


def waiting(database: Database, priority: int, state: str = "scheduled", day: int = 1) -> None:
    """Another run's task instance waiting for the critical section (or, queued, a worker)."""

    def rows(conn: Connection) -> None:
        run = insert_run(conn, "d", day=day)
        insert_ti(conn, run, "a", state=state, priority_weight=priority)

    database.transaction(rows)


def test_a_task_waiting_for_a_slot_keeps_it_and_the_successor_is_scheduled(
    database: Database,
) -> None:
    q = setup(database, slots=1)  # the finished try's slot is the only one
    waiting(database, priority=0)  # whatever its priority: the critical section decides
    result = succeed(database, q, eager_plan(CHAIN, "h1", "a"))
    assert result.accepted
    assert result.handed is None
    # b is scheduled by the report, for the critical section to weigh against the other
    assert result.rearmed
    assert examine_after(database) is None
    assert states(database)["b"] == ("scheduled", None)


def test_a_leaf_hands_nothing_and_its_run_is_examined(database: Database) -> None:
    spec = DagSpec(dag_id="d", fileloc="/dags/d.py", schedule=_SCHEDULE, tasks={"a": task("a")})
    q = setup(database, spec)
    waiting(database, priority=7)
    result = succeed(database, q, eager_plan(spec, "h1", "a"))
    assert result.handed is None
    assert result.rearmed
    assert examine_after(database) == ENDED


def test_a_queued_attempt_waiting_for_a_worker_keeps_the_slot(database: Database) -> None:
    q = setup(database, slots=1)
    waiting(database, priority=0, state="queued")
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed is None


def test_waiting_tasks_that_still_fit_do_not_hold_the_handover(database: Database) -> None:
    q = setup(database, slots=2)  # one slot left for the waiting task once b has a's
    waiting(database, priority=5)
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed is not None


def test_a_task_of_another_pool_waiting_for_the_queue_keeps_the_slot(database: Database) -> None:
    q = setup(database, slots=1)

    def other(conn: Connection) -> None:
        conn.execute(sa.text("INSERT INTO pool (name, slots) VALUES ('p2', 5)"))
        insert_ti(conn, insert_run(conn, "d", day=1), "a", state="scheduled", pool="p2")

    database.transaction(other)
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed is None


def test_waiting_tasks_are_counted_in_pool_slots(database: Database) -> None:
    q = setup(database)

    def other(conn: Connection) -> None:
        conn.execute(sa.text("UPDATE pool SET slots = 3 WHERE name = 'default_pool'"))
        run = insert_run(conn, "d", day=1)
        insert_ti(conn, run, "a", state="running", worker="w1")  # 2 of 3 slots in use
        insert_ti(conn, run, "b", state="scheduled", pool_slots=2)  # fits once a ends

    database.transaction(other)
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed is None


def test_a_task_instance_limited_per_dag_takes_the_usual_path(database: Database) -> None:
    q = setup(database)  # the spec has no limit; the task instance row (what counts) has one
    database.statement(
        lambda c: c.execute(
            sa.text("UPDATE task_instance SET max_active_tis_per_dag = 1 WHERE task_id = 'b'")
        )
    )
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed is None
    assert states(database)["b"] == ("scheduled", None)


def test_a_lowered_parallelism_is_kept(database: Database) -> None:
    q = setup(database)
    database.transaction(
        lambda c: insert_ti(c, insert_run(c, "d", day=1), "a", state="running", worker="w1")
    )
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a"), parallelism=1).handed is None


def test_an_upstream_marked_failed_while_the_report_waited_is_seen(database: Database) -> None:
    join = DagSpec(
        dag_id="d",
        fileloc="/dags/d.py",
        schedule=_SCHEDULE,
        tasks={
            "a": task("a", down=("c",)),
            "u": task("u", down=("c",)),
            "c": task("c", up=("a", "u")),
        },
    )
    q = setup(database, join)
    database.statement(
        lambda c: c.execute(
            sa.text("UPDATE task_instance SET state = 'success' WHERE task_id = 'u'")
        )
    )
    holder = database.engine.connect()
    holder.execute(sa.text("SELECT 1 FROM dag_run FOR UPDATE"))  # as `tasks mark` locks the run
    holder.execute(sa.text("UPDATE task_instance SET state = 'failed' WHERE task_id = 'u'"))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(succeed, database, q, eager_plan(join, "h1", "a"))
        wait_for_report_lock_wait(database)  # the report waits for the run lock
        assert not pending.done()
        holder.commit()
        holder.close()
        result = pending.result(timeout=10)
    assert result.accepted
    assert result.handed is None
    assert states(database)["c"] == ("none", None)
    assert examine_after(database) == ENDED  # the examiner marks c upstream_failed


def test_nothing_is_handed_into_another_pool_but_it_is_scheduled(database: Database) -> None:
    q = setup(database, pool={"b": "other"})
    result = succeed(database, q, eager_plan(CHAIN, "h1", "a"))
    assert result.handed is None
    assert result.rearmed
    assert states(database)["b"] == ("scheduled", None)


def test_nothing_is_handed_when_the_pool_was_shrunk_below_its_use(database: Database) -> None:
    q = setup(database)
    database.statement(lambda c: c.execute(sa.text("UPDATE pool SET slots = 0")))
    assert succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed is None


def test_nothing_is_handed_to_a_worker_without_the_queue(database: Database) -> None:
    q = setup(database, queues=("default",))
    spec = DagSpec(
        dag_id="d",
        fileloc="/dags/d.py",
        schedule=_SCHEDULE,
        tasks={"a": task("a", down=("b",)), "b": task("b", up=("a",))},
    )
    database.statement(lambda c: c.execute(sa.text("UPDATE task_instance SET queue = 'gpu' "
                                                   "WHERE task_id = 'b'")))  # fmt: skip
    assert succeed(database, q, eager_plan(spec, "h1", "a")).handed is None


def test_nothing_is_handed_from_an_older_version_of_the_dag(database: Database) -> None:
    q = setup(database)
    result = succeed(database, q, eager_plan(CHAIN, "h0", "a"))
    assert result.accepted
    assert result.handed is None
    assert states(database)["b"] == ("none", None)


def test_tasks_that_need_the_usual_path_are_not_in_the_plan() -> None:
    def one(**kw: object) -> DagSpec:
        return DagSpec(
            dag_id="d",
            fileloc="/dags/d.py",
            schedule=_SCHEDULE,
            tasks={"a": task("a", down=("b",)), "b": task("b", up=("a",), **kw)},
        )

    def edges(spec: DagSpec, task_id: str = "a") -> tuple[tuple[str, str], ...]:
        plan = eager_plan(spec, "h", task_id)
        assert plan is not None
        return plan.edges

    assert edges(one()) == (("b", "a"),)
    assert edges(one(trigger_rule=TriggerRule.ALL_DONE)) == ()
    assert edges(one(depends_on_past=True)) == ()
    assert edges(one(max_active_tis_per_dag=1)) == ()
    assert edges(one(kind=TaskKind.EMPTY)) == ()
    assert edges(one(), "b") == ()  # a leaf: nothing to hand over
    assert eager_plan(one(), "h", "gone") is None
    # another upstream task is a branch: whether c runs is the examiner's to decide
    forked = DagSpec(
        dag_id="d",
        fileloc="/dags/d.py",
        schedule=_SCHEDULE,
        tasks={
            "a": task("a", down=("c",)),
            "x": task("x", down=("c",), branching=BranchKind.BRANCH),
            "c": task("c", up=("a", "x")),
        },
    )
    assert edges(forked) == ()


def test_a_report_sent_again_finds_what_it_handed(database: Database) -> None:
    q = setup(database)
    handed = succeed(database, q, eager_plan(CHAIN, "h1", "a")).handed
    assert handed is not None
    # as the handover returned it: the reply to the report sent again is built from it alike
    assert database.read(lambda c: handed_again(c, q.ti_id, q.token, "w1")) == [(handed, None)]
    assert database.read(lambda c: handed_again(c, q.ti_id, q.token, "w2")) == []
    # with spans exported the handover stored its task.dispatch span's context: sent again,
    # the request carries that parent too
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    database.statement(
        lambda c: c.execute(
            sa.text("UPDATE task_attempt SET trace_context = :tp WHERE ti_id = :i AND token = :t"),
            {"tp": tp, "i": handed.ti_id, "t": handed.token},
        )
    )
    assert database.read(lambda c: handed_again(c, q.ti_id, q.token, "w1")) == [(handed, tp)]
    database.transaction(
        lambda c: record_start(c, handed.ti_id, handed.token, worker_id="w1", now=ENDED)
    )
    # started: the worker has it, there is nothing to send again
    assert database.read(lambda c: handed_again(c, q.ti_id, q.token, "w1")) == []


CHAINS = DagSpec(
    dag_id="-",
    fileloc="/d.py",
    schedule=_SCHEDULE,
    tasks={
        f"t{i}": task(
            f"t{i}",
            up=(f"t{i - 1}",) if i else (),
            down=(f"t{i + 1}",) if i < 4 else (),
        )
        for i in range(5)
    },
)


def test_reports_handing_slots_over_beside_the_critical_section_never_exceed_a_limit(
    database: Database,
) -> None:
    """Two replicas queue across pools while success reports hand their slots to the next task
    of a chain (or schedule it); the invariant query runs after every step."""
    parallelism = 12
    rng = random.Random(11)

    def rows(conn: Connection) -> None:
        for name, slots in [("pa", 3), ("pb", 5), ("pc", 2)]:
            conn.execute(sa.text("INSERT INTO pool (name, slots) VALUES (:n, :s)"),
                         {"n": name, "s": slots})  # fmt: skip
        conn.execute(
            sa.insert(worker).values(
                id="w1", name="w1", hostname="h", grpc_address="h:1", queues=["default"], slots=99
            )
        )
        for n in range(5):
            insert_dag(conn, f"dag{n}", max_active_tasks=3)
            conn.execute(
                sa.insert(serialized_dag).values(
                    dag_id=f"dag{n}", fileloc="/d.py", data={}, spec_hash="h", file_hash="f"
                )
            )
            for day in range(3):
                run = insert_run(conn, f"dag{n}", day=day)
                for t in range(5):  # a chain t0 >> ... >> t4 (CHAINS), only t0 scheduled
                    insert_ti(
                        conn,
                        run,
                        f"t{t}",
                        state="scheduled" if t == 0 else "none",
                        pool=rng.choice(["pa", "pb", "pb", "pb", "pc"]),
                        pool_slots=rng.choice([1, 1, 2]),
                        priority_weight=rng.randint(1, 5),
                    )

    database.transaction(rows)
    violations: list[str] = []
    handed: list[int] = []
    stop = threading.Event()

    def check() -> None:
        over = limits_exceeded(database, parallelism)
        if over is not None:
            violations.append(over)

    def replica(name: str) -> None:
        while not stop.is_set():
            pools = database.read(lambda c: pools_with_scheduled(c))
            for p in pools:
                database.transaction(
                    lambda c, p=p: queue_pool(
                        c, p, member_id=name, decide=admit, now=NOW, parallelism=parallelism
                    )
                )
                check()
            if not pools:
                time.sleep(0.01)

    def reporter(seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            active = database.read(
                lambda c: c.execute(
                    sa.text("SELECT id, token, state, dag_id, task_id FROM task_instance "
                            "WHERE state IN ('queued', 'running')")
                ).all()
            )  # fmt: skip
            remaining = database.read(
                lambda c: c.execute(
                    sa.text("SELECT count(*) FROM task_instance WHERE state <> 'success'")
                ).scalar_one()
            )
            if remaining == 0:
                stop.set()
                return
            if not active:
                time.sleep(0.005)
                continue
            advance(*local.choice(active))
            check()

    def advance(ti_id: int, token: int, state: str, dag_id: str, task_id: str) -> None:
        """Start a queued attempt, or end a running one with a success that offers its slot."""
        if state == "queued":
            database.transaction(lambda c: record_start(c, ti_id, token, worker_id="w1", now=NOW))
            return
        plan = eager_plan(replace(CHAINS, dag_id=dag_id), "h", task_id)
        assert plan is not None
        decision = decide_outcome(
            task(task_id), AttemptOutcome.SUCCESS, 1, 1, ENDED, random.Random(1).random
        )
        result = database.statement(
            lambda c: record_ended_eager(
                c, ti_id, token, plan=plan, member_id="m", outcome=AttemptOutcome.SUCCESS,
                decision=decision, now=ENDED, worker_id="w1",
            )
        )  # fmt: skip
        if result.handed is not None:
            handed.append(result.handed.ti_id)

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(2)]
    threads += [threading.Thread(target=reporter, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    assert violations == []
    assert handed, "no report handed its slot over: the test did not exercise eager dispatch"
    with database.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM task_instance WHERE state <> 'success'")
            ).scalar_one()
            == 0
        )
