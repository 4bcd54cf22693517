"""The committed gRPC stubs match their .proto contracts, and the messages import cleanly."""

from __future__ import annotations

from tradewind_proto import generate
from tradewind_proto.v1 import common_pb2, peer_pb2, scheduler_pb2, worker_pb2


def test_committed_stubs_equal_a_fresh_generation() -> None:
    assert generate.main(["--check"]) == 0


def test_messages_round_trip_through_bytes() -> None:
    ref = common_pb2.AttemptRef(ti_id=3, token=9)
    report = scheduler_pb2.AttemptReport(
        attempt=ref, event=scheduler_pb2.ATTEMPT_EVENT_SUCCESS, followed=["a"], has_followed=True
    )
    again = scheduler_pb2.AttemptReport.FromString(report.SerializeToString())
    assert again.attempt.token == 9
    assert list(again.followed) == ["a"]
    assert peer_pb2.PingReply(member_id="m").member_id == "m"
    assert worker_pb2.ExecuteRequest(attempt=ref).attempt.ti_id == 3
