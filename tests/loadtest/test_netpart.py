"""The partition switches cut traffic and let it through again: the relay always, the network
namespace where this test runs as root."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from loadtest.netpart import NetnsPartition, ProxyPartition, netns_available

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that echoes what it receives."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: echo(c), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield int(server.getsockname()[1])
    server.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes | None:
    sock.sendall(payload)
    try:
        return sock.recv(1024)
    except TimeoutError:
        return None


def test_the_relay_holds_traffic_while_cut_and_delivers_it_when_healed(echo_port: int) -> None:
    proxy = ProxyPartition()
    try:
        (address,) = proxy.worker_addresses([echo_port])
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=0.3)
        assert roundtrip(sock, b"before") == b"before"
        proxy.cut()
        assert roundtrip(sock, b"during") is None
        proxy.heal()
        sock.settimeout(2)
        assert sock.recv(1024) == b"during"  # held, not lost: as after a healed partition
        sock.close()
    finally:
        proxy.close()


@pytest.mark.skipif(not netns_available(), reason="network namespaces need root and iproute2")
def test_the_namespace_link_cuts_both_ways() -> None:
    part = NetnsPartition()
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 9), timeout=0.5)"
    try:
        inside = [*part.worker_prefix(), "python3", "-c", probe, part.outer_ip]

        def reach() -> str:
            done = subprocess.run(inside, capture_output=True, text=True, timeout=10, check=False)
            return done.stderr.strip().splitlines()[-1] if done.returncode else "ok"

        assert "Connection refused" in reach()  # the host answered: nothing listens on 9
        part.cut()
        assert "unreachable" in reach()
        part.heal()
        assert "Connection refused" in reach()
    finally:
        part.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert part.ns not in names.stdout
    assert os.path.exists(f"/sys/class/net/{part.outer_if}") is False
