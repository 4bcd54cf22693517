"""Building gRPC servers and channels the same way in every process: size limits, auth,
health service, and ports chosen by the OS when configured as 0."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tradewind_cluster.config import Settings
from tradewind_cluster.rpc.security import (
    RpcSecurity,
    TokenAuthInterceptor,
    client_credentials,
    server_credentials,
)

__all__ = ["RpcOptions", "RpcServer", "open_channel", "rpc_options_from"]

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcOptions:
    """Server and channel settings (from the `rpc` config section)."""

    bind_host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 4 * 1024 * 1024
    call_timeout_s: float = 5.0
    workers: int = 16
    security: RpcSecurity = field(default_factory=RpcSecurity)


def rpc_options_from(settings: Settings, port: int) -> RpcOptions:
    """gRPC server/channel options from the rpc section (`port`: this process's own server)."""
    r = settings.rpc
    return RpcOptions(
        bind_host=r.bind_host,
        port=port,
        max_message_bytes=r.max_message_bytes,
        call_timeout_s=r.call_timeout_s,
        security=RpcSecurity(
            token=r.token.get_secret_value() if r.token else None,
            tls_ca=r.tls_ca,
            tls_cert=r.tls_cert,
            tls_key=r.tls_key,
        ),
    )


def _size_options(limit: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]


class RpcServer:
    """A started gRPC server with the standard health service; `port` is the bound port."""

    def __init__(
        self,
        options: RpcOptions,
        register: Sequence[Callable[[grpc.Server], None]],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        sec = options.security
        if not sec.token and not sec.tls and not _is_loopback(options.bind_host):
            log.warning(
                "gRPC on %s:%s accepts unauthenticated calls: set rpc.token or rpc.tls_*",
                options.bind_host,
                options.port,
                extra={"event": "rpc_unauthenticated_bind"},
            )
        interceptors = []
        if options.security.token and not options.security.tls:
            interceptors.append(TokenAuthInterceptor(options.security.token, on_refused))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="rpc"),
            interceptors=interceptors,
            options=_size_options(options.max_message_bytes),
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for add in register:
            add(self.server)
        address = f"{options.bind_host}:{options.port}"
        creds = server_credentials(options.security)
        if creds is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"could not bind gRPC server to {address}")
        self.server.start()
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        """Publish SERVING / NOT_SERVING on grpc.health.v1 for the whole server ("")."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop accepting calls and wait up to grace_s for those in flight."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s + 1)


def open_channel(address: str, options: RpcOptions) -> grpc.Channel:
    """A channel to a peer with our credentials and size limits."""
    creds = client_credentials(options.security)
    opts = _size_options(options.max_message_bytes)
    if creds is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, creds, options=opts)
