"""HealthState verdicts with an injected clock, the /health and /metrics HTTP server, the server
wiring from config, and HealthSync mirroring the verdict into a grpc.health-style flag."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tradewind.errors import BadInputError, ConfigError
from tradewind_cluster.config import HealthSettings, MetricsSettings, Settings
from tradewind_cluster.observability import (
    HealthState,
    HealthSync,
    Metrics,
    ObservabilityServer,
    PrometheusSink,
    serve_observability,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthState:
    state = HealthState(clock=clock)
    state.register("loop", threshold_s=10)
    state.register("heartbeat", threshold_s=5)
    return state


def beat_all(health: HealthState) -> None:
    health.beat("loop")
    health.beat("heartbeat")


# -- verdicts ------------------------------------------------------------------------------------
def test_components_that_never_beat_are_unhealthy(health: HealthState) -> None:
    report = health.check()
    assert not report.healthy
    assert report.reasons == [
        "heartbeat has not reported yet (threshold 5s)",
        "loop has not reported yet (threshold 10s)",
    ]
    assert report.details["components"]["loop"]["status"] == "starting"


def test_a_stale_component_turns_unhealthy_until_it_beats(
    health: HealthState, clock: FakeClock
) -> None:
    beat_all(health)
    assert health.check().healthy
    clock.now += 10.0  # exactly at the threshold is still fresh
    health.beat("heartbeat")
    assert health.check().healthy
    clock.now += 2.3
    report = health.check()
    assert not report.healthy
    assert report.reasons == ["loop has not progressed for 12.3s (threshold 10s)"]
    assert report.details["components"]["loop"] == {
        "status": "stale",
        "seconds_since_beat": 12.3,
        "threshold_s": 10,
    }
    assert report.details["components"]["heartbeat"]["status"] == "ok"
    health.beat("loop")
    assert health.check().healthy


def test_a_failure_holds_until_the_next_beat(health: HealthState) -> None:
    beat_all(health)
    health.set_failure("store", "database unreachable (OperationalError)")
    report = health.check()
    assert report.reasons == ["store failed: database unreachable (OperationalError)"]
    assert report.details["components"]["store"]["failure"] == (
        "database unreachable (OperationalError)"
    )
    health.beat("store")
    assert health.check().healthy


def test_components_without_threshold_never_go_stale(clock: FakeClock) -> None:
    health = HealthState(clock=clock)
    health.register("registration")
    assert health.check().healthy
    health.beat("registration")
    clock.now += 1e6
    assert health.check().healthy


def test_removed_component_and_details(health: HealthState) -> None:
    health.remove("heartbeat")
    health.beat("loop")
    health.set_detail("process", "scheduler")
    body = health.check().to_json()
    assert body["status"] == "healthy"
    assert body["reasons"] == []
    assert body["process"] == "scheduler"
    assert set(body["components"]) == {"loop"}


def test_register_rejects_a_non_positive_threshold() -> None:
    with pytest.raises(BadInputError, match="'loop'"):
        HealthState().register("loop", threshold_s=0)


def test_reregister_changes_the_threshold(health: HealthState, clock: FakeClock) -> None:
    beat_all(health)
    clock.now += 4
    health.register("loop", threshold_s=3)
    assert health.check().reasons == ["loop has not progressed for 4.0s (threshold 3s)"]


# -- HTTP ----------------------------------------------------------------------------------------
def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture
def server(health: HealthState) -> Iterator[ObservabilityServer]:
    with ObservabilityServer(host="127.0.0.1", port=0, health=health) as running:
        yield running


def get_health(server: ObservabilityServer) -> tuple[int, dict[str, Any]]:
    status, headers, body = request(f"{server.url}/health")
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_health_endpoint_follows_the_state(
    server: ObservabilityServer, health: HealthState, clock: FakeClock
) -> None:
    assert server.port > 0
    beat_all(health)
    status, body = get_health(server)
    assert (status, body["status"], body["reasons"]) == (200, "healthy", [])
    assert body["components"]["loop"]["status"] == "ok"
    clock.now += 12.3
    health.beat("heartbeat")
    status, body = get_health(server)
    assert (status, body["status"]) == (503, "unhealthy")
    assert body["reasons"] == ["loop has not progressed for 12.3s (threshold 10s)"]
    health.beat("loop")
    status, body = get_health(server)
    assert (status, body["status"]) == (200, "healthy")


def test_other_paths_are_not_found(server: ObservabilityServer, health: HealthState) -> None:
    beat_all(health)
    assert request(f"{server.url}/")[0] == 404
    assert request(f"{server.url}/healthz")[0] == 404
    assert request(f"{server.url}/metrics")[0] == 404  # no registry given to this server
    assert request(f"{server.url}/health?verbose=1")[0] == 200
    assert request(f"{server.url}/health/")[0] == 200
    assert request(f"{server.url}/health", method="POST")[0] == 501


def test_head_has_the_status_and_no_body(server: ObservabilityServer, health: HealthState) -> None:
    status, headers, body = request(f"{server.url}/health", method="HEAD")
    assert (status, body) == (503, b"")
    assert int(headers["Content-Length"]) > 0


def test_requests_are_not_logged_at_info(
    server: ObservabilityServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        request(f"{server.url}/health")
        request(f"{server.url}/nope")
    assert [r for r in caplog.records if r.name.startswith("tradewind_cluster")] == []


def test_stop_releases_the_port(health: HealthState) -> None:
    server = ObservabilityServer(host="127.0.0.1", port=0, health=health)
    port = server.port
    server.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


# -- wiring from config ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def local_settings(**metrics: Any) -> Settings:
    return Settings(
        health=HealthSettings(bind_host="127.0.0.1"),
        metrics=MetricsSettings(bind_host="127.0.0.1", **metrics),
    )


def test_one_server_serves_health_and_metrics_by_default(health: HealthState) -> None:
    sink = PrometheusSink()
    Metrics([sink], strict=True).incr("scheduler_heartbeat")
    endpoints = serve_observability(local_settings(), health=health, registry=sink.registry)
    try:
        assert len(endpoints.servers) == 1
        assert endpoints.metrics_port == endpoints.health_port
        url = endpoints.servers[0].url
        assert request(f"{url}/health")[0] == 503
        status, _, body = request(f"{url}/metrics")
        assert status == 200
        assert b"tradewind_scheduler_heartbeat_total 1.0" in body
    finally:
        endpoints.stop()


def test_metrics_get_their_own_port_when_configured(health: HealthState) -> None:
    port = free_port()
    sink = PrometheusSink()
    endpoints = serve_observability(
        local_settings(metrics_port=port), health=health, registry=sink.registry
    )
    try:
        assert endpoints.metrics_port == port != endpoints.health_port
        assert request(f"http://127.0.0.1:{port}/metrics")[0] == 200
        assert request(f"http://127.0.0.1:{endpoints.health_port}/metrics")[0] == 404
    finally:
        endpoints.stop()


def test_no_metrics_endpoint_when_prometheus_is_off(health: HealthState) -> None:
    endpoints = serve_observability(
        local_settings(prometheus_on=False), health=health, registry=PrometheusSink().registry
    )
    try:
        assert endpoints.metrics_port is None
        assert request(f"{endpoints.servers[0].url}/metrics")[0] == 404
    finally:
        endpoints.stop()


def test_a_busy_port_is_a_config_error(health: HealthState) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(health=HealthSettings(bind_host="127.0.0.1", health_port=port))
        with pytest.raises(ConfigError, match=f"health.health_port: cannot listen on .*:{port}"):
            serve_observability(settings, health=health, registry=None)


# -- HealthSync ------------------------------------------------------------------------------------
def test_sync_publishes_at_start_and_on_change_only(health: HealthState, clock: FakeClock) -> None:
    published: list[bool] = []
    sync = HealthSync(health, published.append, interval_s=60)
    assert sync.sync_once() is False
    assert sync.sync_once() is False
    beat_all(health)
    sync.sync_once()
    sync.sync_once()
    clock.now += 11
    sync.sync_once()
    assert published == [False, True, False]


def test_sync_thread_publishes_at_once_and_survives_a_failing_callback(
    health: HealthState,
) -> None:
    published: list[bool] = []
    beat_all(health)
    sync = HealthSync(health, published.append, interval_s=60).start()
    sync.stop()
    assert published == [True]

    def broken(serving: bool) -> None:
        raise RuntimeError("grpc gone")

    failing = HealthSync(health, broken, interval_s=60).start()  # logs, does not raise
    failing.stop()
