"""This replica's identity: its member row, the heartbeat thread, peer pings, and declaring
dead peers. A replica that finds itself declared dead stops at once (`on_self_dead`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tradewind_cluster.rpc.security import call_metadata
from tradewind_cluster.rpc.server import RpcOptions, open_channel
from tradewind_cluster.store import members
from tradewind_cluster.store.database import Database
from tradewind_proto.v1 import peer_pb2, peer_pb2_grpc

__all__ = ["Membership", "MembershipOptions", "PeerService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipOptions:
    """Timing of heartbeats, pings and death detection."""

    heartbeat_interval_s: float = 0.5
    health_threshold_s: float = 5.0
    peer_ping_interval_s: float = 0.5
    peer_failures_before_suspect: int = 2


@dataclass(slots=True)
class _PeerView:
    seq: int
    failures: int = 0
    seq_since: float = field(default_factory=time.monotonic)


class Membership:
    """Heartbeats this replica's row from its own thread and watches its peers."""

    def __init__(
        self,
        db: Database,
        member_id: str,
        options: MembershipOptions,
        rpc: RpcOptions,
        on_self_dead: Callable[[str], None],
        progress: Callable[[], float | None] = lambda: None,
        on_beat: Callable[[bool, str | None], None] = lambda ok, error: None,
    ) -> None:
        self.db = db
        self.member_id = member_id
        self.options = options
        self._rpc = rpc
        self._on_self_dead = on_self_dead
        self._progress = progress
        self._on_beat = on_beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peers: dict[str, _PeerView] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self.last_heartbeat_ok: float | None = None  # monotonic time of the last good heartbeat
        # Since when our own heartbeats have succeeded without a gap: after a store outage every
        # replica's heartbeat is old, so ages mean nothing until ours has been back a while.
        self.store_ok_since: float | None = None
        self.last_error: str | None = None

    # -- heartbeat thread -------------------------------------------------------------
    def start(self) -> None:
        """Start the heartbeat thread (the loop never heartbeats, so a long step is harmless)."""
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating and close peer channels."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for ch in self._channels.values():
            ch.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat_once()
            self._stop.wait(self.options.heartbeat_interval_s)

    def beat_once(self) -> str | None:
        """Write one heartbeat; returns the member state the store holds."""
        from datetime import UTC, datetime

        progress = self._progress()
        progress_at = None if progress is None else datetime.fromtimestamp(progress, UTC)
        try:
            # Two tries at most: a heartbeat that waits out a long outage in retries would hide
            # the outage from store_ok_since (and from /health) and arrive late anyway.
            state = self.db.transaction(
                lambda c: members.heartbeat(c, self.member_id, loop_progress_at=progress_at),
                attempts=2,
            )
        except Exception as exc:  # noqa: BLE001 - the store may be down; health reports it
            self.last_error = f"heartbeat failed: {type(exc).__name__}: {exc}"
            self.store_ok_since = None
            log.warning("heartbeat failed", extra={"event": "heartbeat_failed"})
            self._on_beat(False, self.last_error)
            return None
        if state == "alive":
            now = time.monotonic()
            if self.store_ok_since is None:
                self.store_ok_since = now
            self.last_heartbeat_ok = now
            self.last_error = None
            self._on_beat(True, None)
        elif state is not None:
            self._on_self_dead(f"this replica was declared {state} by a peer")
        return state

    # -- peers ------------------------------------------------------------------------
    def watch_peers_once(self) -> list[str]:
        """Ping live peers; declare dead those past the threshold, or unreachable with a
        heartbeat that stopped advancing. Returns the member ids declared dead now."""
        rows = self.db.read(lambda c: members.list_members(c))
        now = time.monotonic()
        declared: list[str] = []
        for row in rows:
            if row.id == self.member_id:
                continue
            view = self._peers.setdefault(row.id, _PeerView(seq=row.heartbeat_seq))
            if row.heartbeat_seq != view.seq:
                view.seq, view.seq_since = row.heartbeat_seq, now
            view.failures = 0 if self._ping(row.id, row.grpc_address) else view.failures + 1
            reason = self._death_reason(row.heartbeat_age_s, view, now)
            if reason and self._declare(row.id, row.heartbeat_seq, reason):
                declared.append(row.id)
        live = {r.id for r in rows}
        for gone in set(self._peers) - live:
            self._peers.pop(gone, None)
            ch = self._channels.pop(gone, None)
            if ch is not None:
                ch.close()
        return declared

    def _death_reason(self, age_s: float, view: _PeerView, now: float) -> str | None:
        opts = self.options
        settled = (
            self.store_ok_since is not None and now - self.store_ok_since > opts.health_threshold_s
        )
        if age_s > opts.health_threshold_s and settled:
            return f"heartbeat {age_s:.1f}s old (threshold {opts.health_threshold_s}s)"
        stalled = now - view.seq_since
        if view.failures >= opts.peer_failures_before_suspect and (
            stalled > 2 * opts.heartbeat_interval_s and age_s > 2 * opts.heartbeat_interval_s
        ):
            return f"unreachable by peer ping and heartbeat stalled for {stalled:.1f}s"
        return None

    def _declare(self, member_id: str, seq: int, reason: str) -> bool:
        ok = self.db.transaction(
            lambda c: members.declare_dead(
                c, member_id, seen_seq=seq, by=self.member_id, reason=reason
            )
        )
        if ok:
            log.warning(
                "declared replica %s dead: %s",
                member_id,
                reason,
                extra={"event": "member_declared_dead", "member": member_id},
            )
        return ok

    def _ping(self, member_id: str, address: str | None) -> bool:
        if not address:
            return False
        channel = self._channels.get(member_id)
        if channel is None:
            channel = open_channel(address, self._rpc)
            self._channels[member_id] = channel
        stub = peer_pb2_grpc.PeerStub(channel)
        try:
            reply = stub.Ping(
                peer_pb2.PingRequest(from_member=self.member_id),
                timeout=min(self._rpc.call_timeout_s, self.options.peer_ping_interval_s * 2),
                metadata=call_metadata(self._rpc.security),
            )
        except grpc.RpcError:
            return False
        return bool(reply.state == "alive")


class PeerService(peer_pb2_grpc.PeerServicer):
    """Answers peers' pings with this replica's identity and standing."""

    def __init__(self, member_id: str, state: Callable[[], str]) -> None:
        self._member_id = member_id
        self._state = state

    def Ping(  # noqa: N802 - the gRPC method name
        self, request: peer_pb2.PingRequest, context: grpc.ServicerContext
    ) -> peer_pb2.PingReply:
        """Reply with our member id and state."""
        return peer_pb2.PingReply(member_id=self._member_id, state=self._state())

    def add_to(self, server: grpc.Server) -> None:
        """Register on a gRPC server."""
        peer_pb2_grpc.add_PeerServicer_to_server(self, server)
