"""Authentication between Tradewind processes: mutual TLS, or a shared token in metadata.

Every RPC in both directions passes the server interceptor; a call without valid credentials
is refused with UNAUTHENTICATED and logged without the token it carried."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tradewind.errors import ConfigError

__all__ = ["RpcSecurity", "TokenAuthInterceptor", "client_credentials", "server_credentials"]

log = logging.getLogger(__name__)

AUTH_HEADER = "authorization"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcSecurity:
    """How this process proves itself and checks its peers."""

    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        """True when mutual TLS is configured."""
        return self.tls_ca is not None

    def __repr__(self) -> str:
        token = "***" if self.token else None
        return f"RpcSecurity(token={token!r}, tls={self.tls})"


def _tls_files(sec: RpcSecurity) -> tuple[bytes, bytes, bytes]:
    if sec.tls_ca is None or sec.tls_cert is None or sec.tls_key is None:
        raise ConfigError("rpc: tls_ca, tls_cert and tls_key must be set together")
    return sec.tls_ca.read_bytes(), sec.tls_cert.read_bytes(), sec.tls_key.read_bytes()


def server_credentials(sec: RpcSecurity) -> grpc.ServerCredentials | None:
    """TLS server credentials requiring a client certificate, or None for plaintext."""
    if not sec.tls:
        return None
    ca, cert, key = _tls_files(sec)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def client_credentials(sec: RpcSecurity) -> grpc.ChannelCredentials | None:
    """TLS channel credentials presenting our certificate, or None for plaintext."""
    if not sec.tls:
        return None
    ca, cert, key = _tls_files(sec)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def call_metadata(sec: RpcSecurity) -> tuple[tuple[str, str], ...]:
    """Metadata every outgoing call carries (the token, when one is configured)."""
    return ((AUTH_HEADER, f"Bearer {sec.token}"),) if sec.token else ()


def _deny(reason: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls whose bearer token does not match (health checks stay open to probes)."""

    def __init__(self, token: str, on_refused: Callable[[str], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._on_refused = on_refused

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Check the token before the handler runs."""
        if details.method.startswith(_HEALTH_PREFIX):
            return continuation(details)
        supplied = dict(details.invocation_metadata or ()).get(AUTH_HEADER, "")
        if hmac.compare_digest(str(supplied).encode(), self._expected):
            return continuation(details)
        why = "missing token" if not supplied else "invalid token"
        log.warning(
            "refused unauthenticated call to %s: %s",
            details.method,
            why,
            extra={"event": "rpc_unauthenticated", "method": details.method},
        )
        if self._on_refused is not None:
            self._on_refused(details.method)
        return _deny(f"unauthenticated: {why}")
