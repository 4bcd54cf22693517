"""The worker side of the Scheduler service: one channel per scheduler address, every call with
our credentials, and failover to the next address when one is unreachable. Used by the agent
(register, heartbeat, reports, logs) and by task processes (XComs, Variables)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import grpc

from tradewind.errors import BadInputError, RetryableError
from tradewind_cluster.rpc.security import call_metadata
from tradewind_cluster.rpc.server import RpcOptions, open_channel
from tradewind_proto.v1 import scheduler_pb2_grpc

__all__ = ["TRANSIENT_CODES", "SchedulerLink"]

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Codes after which another scheduler (or a later try) may well succeed."""


class SchedulerLink:
    """Calls a Scheduler RPC on the current address, moving on to the next one when it fails with
    a transient code. RetryableError when no address answered; BadInputError when one refused
    the call for good (bad credentials, bad request). Thread-safe."""

    def __init__(self, addresses: Sequence[str], options: RpcOptions) -> None:
        if not addresses:
            raise BadInputError("no scheduler address to connect to")
        self.addresses = tuple(addresses)
        self.options = options
        self._metadata = call_metadata(options.security)
        self._lock = threading.Lock()
        self._current = 0
        self._stubs: dict[str, tuple[grpc.Channel, scheduler_pb2_grpc.SchedulerStub]] = {}
        self._closed = False

    @property
    def current(self) -> str:
        """The address calls go to first."""
        with self._lock:
            return self.addresses[self._current]

    def ordered(self) -> tuple[str, ...]:
        """All addresses, the current one first (handed to task processes)."""
        with self._lock:
            i = self._current
        return self.addresses[i:] + self.addresses[:i]

    def call(
        self,
        method: str,
        request: Any,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """Call `method` on the first scheduler that answers; see the class docstring."""
        failures: list[str] = []
        for address in self.ordered():
            stub = self._stub(address)
            try:
                reply = getattr(stub, method)(
                    request,
                    timeout=timeout_s or self.options.call_timeout_s,
                    metadata=(*self._metadata, *metadata),
                )
            except grpc.RpcError as err:
                code, details = err.code(), err.details()
                if code not in TRANSIENT_CODES:
                    raise BadInputError(
                        f"scheduler {address} refused {method}: {code.name}: {details}"
                    ) from None
                failures.append(f"{address}: {code.name} {details or ''}".strip())
                self._move_past(address)
                continue
            return reply
        raise RetryableError(f"no scheduler answered {method} ({'; '.join(failures)})")

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            stubs, self._stubs = self._stubs, {}
            self._closed = True
        for channel, _ in stubs.values():
            channel.close()

    def _stub(self, address: str) -> scheduler_pb2_grpc.SchedulerStub:
        with self._lock:
            if self._closed:
                raise RetryableError("the scheduler link is closed")
            found = self._stubs.get(address)
            if found is None:
                channel = open_channel(address, self.options)
                found = (channel, scheduler_pb2_grpc.SchedulerStub(channel))
                self._stubs[address] = found
            return found[1]

    def _move_past(self, address: str) -> None:
        with self._lock:
            if self.addresses[self._current] == address:
                before = address
                self._current = (self._current + 1) % len(self.addresses)
                if len(self.addresses) > 1:
                    log.info(
                        "scheduler %s unreachable, failing over to %s",
                        before,
                        self.addresses[self._current],
                        extra={"event": "scheduler_failover", "scheduler": before},
                    )
