"""The small HTTP server every process runs for probes and scrapes: GET /health (200 or 503 with
the reasons, JSON) and GET /metrics (Prometheus exposition). Reads memory only, never the store."""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tradewind.errors import ConfigError
from tradewind_cluster.config import Settings
from tradewind_cluster.observability.health import HealthState

__all__ = ["ObservabilityEndpoints", "ObservabilityServer", "serve_observability"]

log = logging.getLogger(__name__)

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    health: HealthState | None
    registry: CollectorRegistry | None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Broken client connections are routine for probes; no stderr tracebacks.
        log.debug("observability http: error serving %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "tradewind"
    timeout = 5.0  # a stalled client holds one thread for at most this long

    def do_GET(self) -> None:
        """Route /health and /metrics; everything else is 404."""
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        """Like GET without the body (some load balancers probe with HEAD)."""
        self._respond(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged at DEBUG only: probes come every few seconds."""
        log.debug("observability http: " + format, *args)

    def _respond(self, *, send_body: bool) -> None:
        server = cast(_Server, self.server)
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path == "/health" and server.health is not None:
                status, ctype, body = _health(server.health)
            elif path == "/metrics" and server.registry is not None:
                status, ctype, body = _metrics(server.registry, self.headers.get("Accept"))
            else:
                status, ctype, body = HTTPStatus.NOT_FOUND, _TEXT, b"not found\n"
        except Exception:  # a probe gets a 500, the process carries on
            log.warning("observability http: %s failed", path, exc_info=True)
            status, ctype, body = HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _health(health: HealthState) -> tuple[HTTPStatus, str, bytes]:
    report = health.check()
    status = HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE
    body = json.dumps(report.to_json(), default=str, sort_keys=True).encode() + b"\n"
    return status, _JSON, body


def _metrics(registry: CollectorRegistry, accept: str | None) -> tuple[HTTPStatus, str, bytes]:
    encoder, content_type = choose_encoder(accept or "")
    return HTTPStatus.OK, content_type, encoder(registry)


class ObservabilityServer:
    """A started HTTP server in a daemon thread; `port` is the bound port (config 0 = any)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: HealthState | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.health = health
        self._server.registry = registry
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long stop() waits for the loop to notice
            name=f"observability-http-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL for clients on this host (a wildcard bind is reached via 127.0.0.1)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ObservabilityServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservabilityEndpoints:
    """The servers one process runs; health and metrics share one unless configured apart."""

    servers: tuple[ObservabilityServer, ...]
    health_port: int
    metrics_port: int | None

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()


def _start(setting: str, host: str, port: int, **kwargs: Any) -> ObservabilityServer:
    try:
        return ObservabilityServer(host=host, port=port, **kwargs)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot listen on {host}:{port} ({exc.strerror})") from None


def serve_observability(
    settings: Settings, *, health: HealthState, registry: CollectorRegistry | None
) -> ObservabilityEndpoints:
    """Start /health on [health] bind_host:health_port and /metrics with it, or on its own
    server when metrics.metrics_port is set to a different port."""
    metrics = settings.metrics
    registry = registry if metrics.prometheus_on else None
    apart = registry is not None and metrics.metrics_port not in (0, settings.health.health_port)
    main = _start(
        "health.health_port",
        settings.health.bind_host,
        settings.health.health_port,
        health=health,
        registry=None if apart else registry,
    )
    if not apart:
        port = main.port if registry is not None else None
        return ObservabilityEndpoints(servers=(main,), health_port=main.port, metrics_port=port)
    try:
        extra = _start(
            "metrics.metrics_port", metrics.bind_host, metrics.metrics_port, registry=registry
        )
    except ConfigError:
        main.stop()
        raise
    return ObservabilityEndpoints(
        servers=(main, extra), health_port=main.port, metrics_port=extra.port
    )
