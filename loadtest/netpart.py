"""Cutting one worker off from the schedulers while it keeps running. As root: the worker runs
in a network namespace of its own joined by a veth pair, and the cut takes its end of the pair
down (both directions, nothing else touched). Otherwise: a TCP relay in this process between
the worker and the schedulers that stops relaying (the worker's calls only)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
from enum import StrEnum
from typing import Protocol

__all__ = [
    "NetnsPartition",
    "Partition",
    "PartitionMethod",
    "ProxyPartition",
    "netns_available",
    "open_partition",
]


class PartitionMethod(StrEnum):
    """How the cut is made (reported in the results)."""

    NETNS = "netns"  # network namespace + veth pair; link down cuts both directions
    PROXY = "proxy"  # relay in the harness; only the worker's calls to the schedulers are cut


class Partition(Protocol):
    """A switch between one worker and the schedulers."""

    method: PartitionMethod
    scheduler_host: str  # where the schedulers bind and advertise their gRPC servers

    def worker_prefix(self) -> list[str]:
        """Command prefix that starts the worker on its side of the cut."""
        ...

    def worker_settings(self) -> dict[str, str]:
        """TRADEWIND__ settings for the worker on its side of the cut."""
        ...

    def worker_addresses(self, scheduler_ports: list[int]) -> list[str]:
        """The scheduler addresses the cut-off worker dials."""
        ...

    def cut(self) -> None:
        """Block the traffic."""
        ...

    def heal(self) -> None:
        """Let the traffic through again."""
        ...

    def close(self) -> None:
        """Remove everything this partition created."""
        ...


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_available() -> bool:
    """True when we may create network namespaces (root, with iproute2)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _free_subnet(rng: random.Random) -> int:
    used = subprocess.run(
        ["ip", "-4", "-o", "addr"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    for _ in range(200):
        octet = rng.randrange(1, 255)
        if f"10.250.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.250.x.0/30 subnet for the partition's veth pair")


class NetnsPartition:
    """A network namespace for the worker, joined to the host by a veth pair."""

    method = PartitionMethod.NETNS

    def __init__(self, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        tag = f"{rng.randrange(16**5):05x}"
        octet = _free_subnet(rng)
        self.ns = f"twlt-{tag}"
        self.outer_if, self.inner_if = f"twl{tag}h", f"twl{tag}n"
        self.outer_ip, self.inner_ip = f"10.250.{octet}.1", f"10.250.{octet}.2"
        self.scheduler_host = self.outer_ip
        self._created = False
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        _ip("netns", "add", self.ns)
        self._created = True
        _ip("link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if)
        _ip("link", "set", self.inner_if, "netns", self.ns)
        _ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer_if)
        _ip("link", "set", self.outer_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "link", "set", self.inner_if, "up")

    def worker_prefix(self) -> list[str]:
        """`ip netns exec NS`: the worker lives inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def worker_settings(self) -> dict[str, str]:
        """Bind and advertise the namespace's address, so schedulers reach it over the veth."""
        return {
            "TRADEWIND__RPC__BIND_HOST": self.inner_ip,
            "TRADEWIND__RPC__ADVERTISE_HOST": self.inner_ip,
        }

    def worker_addresses(self, scheduler_ports: list[int]) -> list[str]:
        """The schedulers at the host's end of the veth pair."""
        return [f"{self.outer_ip}:{port}" for port in scheduler_ports]

    def cut(self) -> None:
        """Take the namespace's end down: the host's address stays reachable from the host."""
        _ip("-n", self.ns, "link", "set", self.inner_if, "down")

    def heal(self) -> None:
        """Bring it up again."""
        _ip("-n", self.ns, "link", "set", self.inner_if, "up")

    def close(self) -> None:
        """Delete the pair and the namespace (best effort: a leftover is named twlt-*)."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _ip("link", "del", self.outer_if)
        if self._created:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip("netns", "del", self.ns)
            self._created = False


class ProxyPartition:
    """Relays the worker's connections to the schedulers; `cut` holds every byte back and
    accepts new connections without answering, the way a dead link looks from either end."""

    method = PartitionMethod.PROXY
    scheduler_host = "127.0.0.1"

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def worker_prefix(self) -> list[str]:
        """No prefix: the worker runs beside the harness."""
        return []

    def worker_settings(self) -> dict[str, str]:
        """Nothing to change."""
        return {}

    def worker_addresses(self, scheduler_ports: list[int]) -> list[str]:
        """One relay port per scheduler."""
        return [f"127.0.0.1:{self._listen(port)}" for port in scheduler_ports]

    def cut(self) -> None:
        """Stop relaying."""
        self._open.clear()

    def heal(self) -> None:
        """Relay again (held bytes flow on, as after a healed partition)."""
        self._open.set()

    def close(self) -> None:
        """Close every socket; the relay threads end with them."""
        self._closed = True
        self._open.set()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()
            self._sockets.clear()

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(s)
        return s

    def _listen(self, target: int) -> int:
        server = self._track(socket.create_server(("127.0.0.1", 0)))
        threading.Thread(target=self._accept, args=(server, target), daemon=True).start()
        return int(server.getsockname()[1])

    def _accept(self, server: socket.socket, target: int) -> None:
        while not self._closed:
            try:
                client, _ = server.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._connect, args=(client, target), daemon=True).start()

    def _connect(self, client: socket.socket, target: int) -> None:
        self._open.wait()
        try:
            upstream = self._track(socket.create_connection(("127.0.0.1", target), timeout=5))
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._open.wait()
                if self._closed:
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def open_partition(prefer: PartitionMethod | None = None) -> Partition:
    """A netns partition where possible, else the relay; `prefer` forces one."""
    if prefer is PartitionMethod.PROXY or (prefer is None and not netns_available()):
        return ProxyPartition()
    return NetnsPartition()
