"""What task code reaches the cluster through, from inside a task process: XCom push / pull and
Variables over gRPC to a scheduler, fenced by the attempt's token, and `ti` (the running task
instance) with Airflow's xcom_push / xcom_pull semantics. Values travel as JSON text."""

from __future__ import annotations

import json
import logging
import os
import select
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from tradewind.errors import BadInputError, RetryableError
from tradewind.xcomarg import XCOM_RETURN_KEY
from tradewind_cluster.rpc.security import RpcSecurity
from tradewind_cluster.rpc.server import RpcOptions
from tradewind_cluster.worker.launch import Launch, SchedulerAccess
from tradewind_cluster.worker.link import SchedulerLink
from tradewind_proto.v1 import common_pb2, scheduler_pb2

__all__ = [
    "RuntimeTaskInstance",
    "StartGate",
    "TaskApi",
    "XComError",
    "encode_xcom",
    "order_pulled",
]

log = logging.getLogger(__name__)
_MISSING: Any = object()


class XComError(BadInputError):
    """An XCom that cannot be stored: not JSON, too large, or refused by the scheduler."""


def encode_xcom(value: Any, *, key: str, task_id: str, limit: int) -> str:
    """The JSON text of an XCom value; XComError when it is not JSON or over `limit` bytes."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise XComError(
            f"XCom {key!r} of task {task_id!r} is not JSON serializable: {exc}"
        ) from None
    size = len(text.encode("utf-8"))
    if size > limit:
        raise XComError(
            f"XCom {key!r} of task {task_id!r} is {size} bytes, more than "
            f"core.max_xcom_bytes ({limit}); store large data elsewhere and push a reference"
        )
    return text


def order_pulled(task_ids: list[str], found: Iterable[tuple[str, str]]) -> list[str]:
    """Found (task_id, text) pairs ordered as task_ids lists them (Airflow's order)."""
    rank = {tid: i for i, tid in enumerate(task_ids)}
    return [text for _, text in sorted(found, key=lambda pair: rank.get(pair[0], len(rank)))]


class StartGate:
    """Waits, once, for the agent's word that a scheduler accepted this attempt's STARTED report.
    XComs are pushed only after it: a scheduler stores XComs of a running attempt only, and
    clears a try's XComs when it starts."""

    def __init__(self, fd: int | None, timeout_s: float = 60.0) -> None:
        self._fd = fd
        self._timeout_s = timeout_s
        self._open = fd is None
        self._buffer = b""

    def wait(self) -> None:
        """Return once STARTED was accepted (or no answer came in time); XComError if refused."""
        deadline = time.monotonic() + self._timeout_s
        while not self._open and self._fd is not None:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(0.0, left))
            if not ready:
                log.warning("no word on the STARTED report after %gs; going on", self._timeout_s)
                self._open = True
                return
            data = os.read(self._fd, 4096)
            if not data:  # the agent is gone; let the scheduler decide
                self._open = True
                return
            self._buffer += data
            self._take_lines()

    def _take_lines(self) -> None:
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            message = json.loads(line)
            if message.get("started") is True:
                self._open = True
            elif message.get("started") is False:
                raise XComError(
                    f"the scheduler refused this attempt: {message.get('reason') or 'refused'}"
                )


def _rpc_options(access: SchedulerAccess) -> RpcOptions:
    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return RpcOptions(
        max_message_bytes=access.max_message_bytes,
        call_timeout_s=access.call_timeout_s,
        security=RpcSecurity(
            token=access.token,
            tls_ca=path(access.tls_ca),
            tls_cert=path(access.tls_cert),
            tls_key=path(access.tls_key),
        ),
    )


class TaskApi:
    """The attempt's calls to a scheduler; the channel opens on first use."""

    def __init__(self, launch: Launch, gate: StartGate | None = None) -> None:
        self.launch = launch
        self.ref = common_pb2.AttemptRef(ti_id=launch.ti_id, token=launch.token)
        self._gate = gate or StartGate(None)
        self._link: SchedulerLink | None = None

    def _call(self, method: str, request: Any) -> Any:
        if self._link is None:
            self._link = SchedulerLink(
                self.launch.access.addresses, _rpc_options(self.launch.access)
            )
        link = self._link
        retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            stop=stop_after_attempt(4),
            reraise=True,
        )
        return retrying(link.call, method, request)

    def push(self, key: str, value: Any) -> None:
        """Store an XCom of this attempt's task instance."""
        if not isinstance(key, str) or not key:
            raise XComError(f"XCom key must be a non-empty string, got {key!r}")
        text = encode_xcom(
            value, key=key, task_id=self.launch.task_id, limit=self.launch.max_xcom_bytes
        )
        self._gate.wait()
        reply = self._call(
            "PushXCom", scheduler_pb2.XComPushRequest(attempt=self.ref, key=key, value=text)
        )
        if not reply.accepted:
            raise XComError(f"XCom {key!r} push refused by the scheduler: {reply.reason}")

    def pull(
        self, task_ids: list[str], key: str | None, *, dag_id: str = "", run_id: str = ""
    ) -> list[tuple[str, str]]:
        """(task_id, JSON text) of every XCom found; an empty key matches any key."""
        request = scheduler_pb2.XComPullRequest(
            attempt=self.ref, task_ids=task_ids, key=key or "", dag_id=dag_id, run_id=run_id
        )
        reply = self._call("PullXCom", request)
        return [(v.task_id, v.value) for v in reply.values if v.found]

    def get_variable(self, key: str) -> str | None:
        """A Variable's text, or None (tradewind.models.VariableSource)."""
        reply = self._call("GetVariable", scheduler_pb2.VariableRequest(attempt=self.ref, key=key))
        return str(reply.value) if reply.found else None

    def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._link is not None:
            self._link.close()


class RuntimeTaskInstance:
    """`ti` / `task_instance` in the context of a running task."""

    map_index = -1
    state = "running"

    def __init__(
        self, api: TaskApi, *, task: object, logical_date: datetime, hostname: str
    ) -> None:
        launch = api.launch
        self._api = api
        self.dag_id = launch.dag_id
        self.task_id = launch.task_id
        self.run_id = launch.run_id
        self.try_number = launch.try_number
        self.queue = launch.queue
        self.hostname = hostname
        self.task = task
        self.logical_date = logical_date
        self.execution_date = logical_date

    def __repr__(self) -> str:
        return (
            f"<TaskInstance: {self.dag_id}.{self.task_id} {self.run_id} "
            f"[{self.state}] try {self.try_number}>"
        )

    def xcom_push(self, key: str, value: Any, execution_date: datetime | None = None) -> None:
        """Push an XCom (JSON value) for this task instance."""
        if execution_date is not None:
            raise XComError("xcom_push(execution_date=...) is not supported")
        self._api.push(key, value)

    def xcom_pull(
        self,
        task_ids: str | Iterable[str] | None = None,
        dag_id: str | None = None,
        key: str | None = XCOM_RETURN_KEY,
        include_prior_dates: bool = False,
        session: object = None,
        *,
        map_indexes: object = None,
        default: Any = None,
        run_id: str | None = None,
    ) -> Any:
        """Airflow 2's xcom_pull: one task id (or None) gives one value or `default`; a list of
        task ids gives the list of values found, in the order of task_ids."""
        if include_prior_dates:
            raise XComError("xcom_pull(include_prior_dates=True) is not supported")
        single = task_ids is None or isinstance(task_ids, str)
        ids = (
            [] if task_ids is None else [task_ids] if isinstance(task_ids, str) else list(task_ids)
        )
        found = self._api.pull(ids, key, dag_id=dag_id or "", run_id=run_id or "")
        if single:
            return json.loads(found[0][1]) if found else default
        return [json.loads(text) for text in order_pulled(ids, found)]

    def pull_for_xcomarg(self, task_id: str, key: str, upstream: Mapping[str, Any]) -> Any:
        """An XComArg's value, as Airflow resolves it: None when a return value (or an output
        of a multiple_outputs task) is missing, an error for any other missing key."""
        value = self.xcom_pull(task_ids=task_id, key=key, default=_MISSING)
        if value is not _MISSING:
            return value
        if key == XCOM_RETURN_KEY or upstream.get(task_id, False):
            return None
        raise XComError(
            f'XComArg result from {task_id} at {self.dag_id} with key="{key}" is not found!'
        )
