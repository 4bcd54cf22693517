"""A replica in process, probed as Kubernetes would: /health and grpc.health.v1 turn unhealthy
when the loop hangs and healthy again when it recovers; a replica declared dead stops acting."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.factories import T0
from tests.support.processes import http_json, wait_until
from tradewind_cluster.config import Settings
from tradewind_cluster.scheduler.replica import SchedulerReplica
from tradewind_cluster.store import dag_files, members
from tradewind_cluster.store.database import Database

pytestmark = pytest.mark.cluster


@pytest.fixture
def replica(database: Database) -> Iterator[tuple[SchedulerReplica, list[str]]]:
    settings = Settings(
        scheduler={
            "heartbeat_interval_s": 0.2,
            "health_threshold_s": 2.0,
            "loop_stall_threshold_s": 1.0,
            "idle_sleep_s": 0.1,
        },
        health={"bind_host": "127.0.0.1"},
    )
    dead: list[str] = []
    r = SchedulerReplica(
        settings, database, name="probe", parse=False, on_declared_dead=dead.append
    )
    r.start()
    yield r, dead
    r.stop()


def grpc_status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
    return int(reply.status)


def test_hung_loop_turns_unhealthy_then_recovers(
    replica: tuple[SchedulerReplica, list[str]],
) -> None:
    r, _ = replica
    assert r.ports is not None
    health, grpc_port = r.ports.health, r.ports.grpc
    wait_until(lambda: http_json(health)[0] == 200, 10, "healthy at start")
    wait_until(
        lambda: grpc_status(grpc_port) == health_pb2.HealthCheckResponse.SERVING, 10, "SERVING"
    )

    release = threading.Event()
    original = r.loop.examiner.run_once

    def hang(*args: object, **kwargs: object) -> object:
        release.wait(30)
        return original()

    r.loop.examiner.run_once = hang  # type: ignore[method-assign]
    r.loop.waker.wake()
    _, body = wait_until(
        lambda: (lambda s: s if s[0] == 503 else None)(http_json(health)), 10, "503 while hung"
    )
    assert any("loop has not progressed" in reason for reason in body["reasons"]), body
    assert body["components"]["heartbeat"]["status"] == "ok"  # heartbeats go on: only the loop hung
    wait_until(
        lambda: grpc_status(grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING,
        10,
        "NOT_SERVING",
    )

    r.loop.examiner.run_once = original  # type: ignore[method-assign]
    release.set()
    wait_until(lambda: http_json(health)[0] == 200, 10, "healthy again")
    wait_until(
        lambda: grpc_status(grpc_port) == health_pb2.HealthCheckResponse.SERVING,
        10,
        "SERVING again",
    )


def test_a_replica_declared_dead_stops_at_its_next_heartbeat(
    replica: tuple[SchedulerReplica, list[str]], database: Database
) -> None:
    r, dead = replica
    seq = database.read(
        lambda c: next(m for m in members.list_members(c) if m.id == r.member_id)
    ).heartbeat_seq

    def declare() -> bool:
        current = database.read(
            lambda c: next(
                m for m in members.list_members(c, include_ended=True) if m.id == r.member_id
            )
        )
        return database.transaction(
            lambda c: members.declare_dead(
                c, r.member_id, seen_seq=current.heartbeat_seq, by="test", reason="test"
            )
        )

    assert seq >= 0
    wait_until(declare, 10, "the declaration to win against fresh heartbeats", interval=0.01)
    wait_until(lambda: dead, 5, "the replica to notice it was declared dead")
    assert "declared dead" in dead[0]


def test_a_failing_parse_pass_is_retried_after_the_interval_not_at_once(
    database: Database, tmp_path: Path
) -> None:
    """A failed pass may hold leases on due files, which count as due now: the parser waits
    its interval (here 1 s) before the next pass, instead of spinning on them."""
    settings = Settings(
        core={"dags_folder": str(tmp_path)},
        scheduler={"parse_interval_s": 1.0, "heartbeat_interval_s": 0.2},
        health={"bind_host": "127.0.0.1"},
    )
    database.transaction(lambda c: dag_files.upsert_present_files(c, ["/d/x.py"], now=T0))
    r = SchedulerReplica(settings, database, name="parse-fails")
    assert r._parser is not None
    passes: list[float] = []

    def fail(now: object) -> object:
        passes.append(time.monotonic())
        raise RuntimeError("the parse step failed")

    r._parser.run_once = fail  # type: ignore[method-assign]
    r.start()
    try:
        wait_until(lambda: len(passes) >= 2, 10, "a second pass")
        time.sleep(0.5)
    finally:
        r.stop()
    gaps = [b - a for a, b in itertools.pairwise(passes)]
    assert gaps, passes
    assert min(gaps) >= 0.9, gaps
