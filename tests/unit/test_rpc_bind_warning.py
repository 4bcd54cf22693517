"""A gRPC server reachable from other hosts without a token or TLS says so in its log."""

from __future__ import annotations

import logging

import pytest

from tradewind_cluster.rpc.security import RpcSecurity
from tradewind_cluster.rpc.server import RpcOptions, RpcServer


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", "t0ken", False), ("127.0.0.1", None, False)],
)
def test_unauthenticated_non_loopback_bind_is_logged(
    caplog: pytest.LogCaptureFixture, host: str, token: str | None, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="tradewind_cluster.rpc.server"):
        server = RpcServer(
            RpcOptions(bind_host=host, port=0, security=RpcSecurity(token=token)), []
        )
        server.stop(0)
    assert any("accepts unauthenticated calls" in r.getMessage() for r in caplog.records) is warned
    assert all("t0ken" not in r.getMessage() for r in caplog.records)
