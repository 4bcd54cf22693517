"""Logging set-up: JSON lines that parse and carry every extra, text lines with extras, one
handler however often it is configured, and secrets masked everywhere they can appear."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tradewind_cluster.config import DatabaseSettings, LogFormat, LogLevel, RpcSettings, Settings
from tradewind_cluster.observability import (
    MASK,
    SecretMasker,
    configure_logging,
    record_extras,
    settings_secrets,
)

log = logging.getLogger("tradewind_cluster.test")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def setup(fmt: LogFormat, masker: SecretMasker | None = None) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LogLevel.INFO, fmt, masker=masker, stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_and_carry_extras() -> None:
    stream = setup(LogFormat.JSON)
    log.info(
        "attempt %s of %s started",
        2,
        "etl.load",
        extra={"event": "attempt_started", "dag_id": "etl", "task_id": "load", "attempt": 2},
    )
    log.debug("not shown at INFO")
    (line,) = json_lines(stream)
    assert line["message"] == "attempt 2 of etl.load started"
    assert line["level"] == "INFO"
    assert line["logger"] == "tradewind_cluster.test"
    assert line["ts"].endswith("Z")
    assert (line["event"], line["dag_id"], line["task_id"], line["attempt"]) == (
        "attempt_started", "etl", "load", 2,
    )  # fmt: skip
    assert list(line)[:4] == ["ts", "level", "logger", "message"]


def test_json_lines_carry_the_traceback_and_odd_values() -> None:
    stream = setup(LogFormat.JSON)
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("step failed", extra={"event": "step_failed", "when": object()})
    (line,) = json_lines(stream)
    assert "ValueError: bad value" in line["exc_info"]
    assert line["when"].startswith("<object object")


def test_text_lines_append_extras() -> None:
    stream = setup(LogFormat.TEXT)
    log.warning("heartbeat failed", extra={"event": "heartbeat_failed", "member": "s1"})
    text = stream.getvalue()
    assert "WARNING tradewind_cluster.test: heartbeat failed event=heartbeat_failed member=s1" in (
        text
    )


def test_configuring_twice_keeps_one_handler_and_sets_the_level() -> None:
    first = io.StringIO()
    configure_logging("debug", "json", stream=first)
    second = setup(LogFormat.TEXT)
    log.info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert logging.getLogger().level == logging.INFO


def test_record_extras_are_only_the_extra_fields() -> None:
    record = log.makeRecord(
        "x", logging.INFO, "f.py", 1, "m", (), None, extra={"event": "e", "dag_id": "d"}
    )
    assert record_extras(record) == {"event": "e", "dag_id": "d"}


# -- secrets ------------------------------------------------------------------------------------
def test_secrets_are_masked_in_message_args_extras_and_tracebacks() -> None:
    masker = SecretMasker(["hunter2"])
    stream = setup(LogFormat.JSON, masker)
    log.info(
        "connecting with %s",
        "password=hunter2",
        extra={
            "url": "postgresql://u:hunter2@db/x",
            "nested": {"token": ["a", "hunter2"], "n": 3},
            "attempt": 1,
        },
    )
    try:
        raise RuntimeError("auth failed for hunter2")
    except RuntimeError:
        log.exception("failed")
    first, second = json_lines(stream)
    assert first["message"] == f"connecting with password={MASK}"
    assert first["url"] == f"postgresql://u:{MASK}@db/x"
    assert first["nested"] == {"token": ["a", MASK], "n": 3}
    assert first["attempt"] == 1
    assert f"auth failed for {MASK}" in second["exc_info"]
    assert "hunter2" not in stream.getvalue()


def test_secrets_registered_later_and_in_text_format() -> None:
    masker = SecretMasker()
    stream = setup(LogFormat.TEXT, masker)
    log.info("before: s3cr3t-value")
    masker.register(SecretStr("s3cr3t-value"))
    log.info("after: s3cr3t-value", extra={"event": "x s3cr3t-value"})
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("before: s3cr3t-value")
    assert lines[1].endswith(f"after: {MASK} event=x {MASK}")


def test_masker_hides_the_url_encoded_form_and_longest_match() -> None:
    masker = SecretMasker(["p@ss word", "abc", "", "   ", None])
    assert masker.mask("postgresql://u:p%40ss%20word@h/db") == f"postgresql://u:{MASK}@h/db"
    assert masker.mask("xp@ss wordx abcd") == f"x{MASK}x {MASK}d"
    assert SecretMasker().mask("nothing to hide") == "nothing to hide"


def test_settings_secrets_include_the_database_password() -> None:
    settings = Settings(
        database=DatabaseSettings(url=SecretStr("postgresql://user:pw0rd@db:5432/tw")),
        rpc=RpcSettings(token=SecretStr("tok3n-value")),
    )
    found = settings_secrets(settings)
    assert "pw0rd" in found
    assert "tok3n-value" in found
    assert "postgresql+psycopg2://user:pw0rd@db:5432/tw" in found
    assert settings_secrets(Settings()) == []
