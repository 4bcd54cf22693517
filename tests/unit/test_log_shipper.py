"""The worker's log shipper: chunks of every attempt in one call, and an attempt that ends
while a call is out still gets its last lines shipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tradewind_cluster.worker.logs import LogShipper


class _Link:
    def __init__(self, during_call: Any = None) -> None:
        self.calls: list[list[tuple[int, int, str]]] = []
        self.during_call = during_call

    def call(self, method: str, request: Any, **_: Any) -> Any:
        assert method == "ShipLogs"
        self.calls.append([(c.attempt.ti_id, c.seq, c.data) for c in request.chunks])
        if self.during_call is not None:
            self.during_call()
            self.during_call = None
        return None


def _shipper(link: _Link) -> LogShipper:
    return LogShipper(link, max_message_bytes=4 * 1024 * 1024, call_timeout_s=5)  # type: ignore[arg-type]


def test_all_attempts_go_in_one_call(tmp_path: Path) -> None:
    link = _Link()
    shipper = _shipper(link)
    for ti in (1, 2):
        path = tmp_path / f"{ti}.log"
        path.write_text("")
        shipper.track(f"{ti}.1", ti_id=ti, token=1, try_number=1, path=path)
        path.write_text(f"line of {ti}\n")
    assert shipper.ship_once() == 2
    assert link.calls == [[(1, 0, "line of 1\n"), (2, 0, "line of 2\n")]]


def test_lines_written_as_the_attempt_ends_during_a_call_are_still_shipped(
    tmp_path: Path,
) -> None:
    quiet, busy = tmp_path / "quiet.log", tmp_path / "busy.log"
    quiet.write_text("")
    busy.write_text("")
    link = _Link()
    shipper = _shipper(link)
    shipper.track("1.1", ti_id=1, token=1, try_number=1, path=quiet)
    shipper.track("2.1", ti_id=2, token=1, try_number=1, path=busy)
    busy.write_text("working\n")

    def quiet_ends() -> None:  # while the call for "busy" is out, "quiet" writes and ends
        quiet.write_text("Marking task as SUCCESS.\n")
        shipper.finish("1.1")

    link.during_call = quiet_ends
    shipper.ship_once()
    assert shipper.tracked() == 2  # "quiet" read nothing before it ended: not done yet
    shipper.ship_once()
    shipper.ship_once()
    shipped = [c for call in link.calls for c in call]
    assert (1, 0, "Marking task as SUCCESS.\n") in shipped
    assert shipper.tracked() == 1  # "quiet" is done; "busy" still runs
