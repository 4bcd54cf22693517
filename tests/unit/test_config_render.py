"""Listing the settings: secrets masked in repr, str, rows and single values unless revealed."""

from __future__ import annotations

import pytest

from tradewind.errors import ConfigError
from tradewind_cluster.config import Settings, get_value, mask_url, settings_rows

PASSWORD = "pa55word-xyz"
TOKEN = "tok-9f8e7d"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        database={"url": f"postgresql://tw:{PASSWORD}@db.example:5432/tradewind"},
        rpc={"token": TOKEN},
        worker={"queues": "default,spark"},
    )


def test_secrets_are_masked_in_repr_and_str(settings: Settings) -> None:
    for text in (repr(settings), str(settings), repr(settings.database), str(settings.rpc)):
        assert PASSWORD not in text
        assert TOKEN not in text
    assert PASSWORD not in settings.model_dump_json()


def test_rows_mask_secrets_and_show_the_url_without_its_password(settings: Settings) -> None:
    rows = {(section, key): value for section, key, value in settings_rows(settings)}
    assert rows[("database", "url")] == "postgresql+psycopg2://tw:***@db.example:5432/tradewind"
    assert rows[("rpc", "token")] == "***"
    assert all(PASSWORD not in value and TOKEN not in value for value in rows.values())


def test_rows_cover_every_key_in_order_with_plain_text(settings: Settings) -> None:
    rows = settings_rows(settings)
    assert rows[0] == ("core", "home", str(settings.core.home))
    keys = [(section, key) for section, key, _ in rows]
    assert len(keys) == len(set(keys))
    assert ("logging", "format") in keys
    values = dict(((section, key), value) for section, key, value in rows)
    assert values[("worker", "queues")] == "default,spark"
    assert values[("core", "load_examples")] == "false"
    assert values[("tracing", "exporter")] == "none"
    assert values[("rpc", "advertise_host")] == ""
    assert values[("scheduler", "zombie_threshold_s")] == "8.0"


def test_reveal_shows_the_secrets(settings: Settings) -> None:
    rows = {(section, key): value for section, key, value in settings_rows(settings, reveal=True)}
    assert PASSWORD in rows[("database", "url")]
    assert rows[("rpc", "token")] == TOKEN


def test_get_value_masks_unless_revealed(settings: Settings) -> None:
    assert get_value(settings, "rpc", "token") == "***"
    assert get_value(settings, "rpc", "token", reveal=True) == TOKEN
    assert PASSWORD not in get_value(settings, "database", "url")
    assert PASSWORD in get_value(settings, "database", "url", reveal=True)
    assert get_value(settings, "Worker", "SLOTS") == "8"


def test_get_value_of_an_unset_secret_is_empty() -> None:
    assert get_value(Settings(), "rpc", "token") == ""
    assert get_value(Settings(), "database", "url") == ""


def test_get_value_lists_valid_sections_and_keys(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[webserver\]; valid sections: core"):
        get_value(settings, "webserver", "port")
    with pytest.raises(ConfigError, match=r"unknown key worker\.slot; valid keys in \[worker\]"):
        get_value(settings, "worker", "slot")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg2://u:secret@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://h/db", "postgresql+psycopg2://h/db"),
        ("postgresql+psycopg2://u:p%40ss@h/db", "postgresql+psycopg2://u:***@h/db"),
        ("postgresql+psycopg2://u:p@ss@h/db", "postgresql+psycopg2://u:***@h/db"),
        (
            "postgresql+psycopg2://h/db?user=u&password=secret",
            "postgresql+psycopg2://h/db?user=u&password=***",
        ),
        (
            "postgresql+psycopg2://h/db?Password=secret&x=1",
            "postgresql+psycopg2://h/db?Password=***&x=1",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
