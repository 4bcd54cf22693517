"""Loading the settings tree: defaults, TOML file, env and _CMD precedence, and clear errors."""

from __future__ import annotations

import shlex
import socket
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tradewind.errors import ConfigError
from tradewind_cluster import config
from tradewind_cluster.config import (
    SECTIONS,
    LogLevel,
    Settings,
    TracingExporter,
    advertise_host,
    config_file_path,
    load_settings,
    pgdata_dir,
    resolve_home,
)


def python_cmd(code: str) -> str:
    """A _CMD value running a Python snippet with this interpreter (no shell involved)."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "twhome"


@pytest.fixture
def base_env(home: Path) -> dict[str, str]:
    return {"TRADEWIND_HOME": str(home)}


def write_toml(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "tradewind.toml"
    path.write_text(text)
    return path


def load_error(env: dict[str, str], config_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, env=env)
    return str(caught.value)


def test_package_exports_what_it_declares() -> None:
    assert sorted(config.__all__) == sorted(set(config.__all__))
    for name in config.__all__:
        assert hasattr(config, name), name


def test_sections_match_the_settings_fields() -> None:
    assert list(SECTIONS) == list(Settings.model_fields)


def test_defaults(base_env: dict[str, str], home: Path) -> None:
    settings = load_settings(env=base_env)
    assert settings.core.home == home
    assert settings.core.dags_folder == home / "dags"
    assert pgdata_dir(settings) == home / "pgdata"
    assert settings.core.default_timezone == "UTC"
    assert settings.core.dag_discovery_safe_mode is True
    assert settings.core.parallelism == 32
    assert settings.core.xcom_backend == "tradewind_cluster.xcom.DatabaseXComBackend"
    assert settings.core.max_xcom_bytes == 1048576
    assert settings.core.load_examples is False
    assert settings.database.url is None
    assert (settings.database.pool_size, settings.database.max_overflow) == (5, 10)
    assert settings.database.statement_timeout_ms == 30000
    assert settings.scheduler.zombie_threshold_s == 8.0
    assert settings.scheduler.max_tis_per_query == 512
    assert settings.scheduler.catchup_by_default is True
    assert (settings.worker.lease_s, settings.worker.lease_margin_s) == (4.0, 2.0)
    assert settings.worker.queues == ("default",)
    assert settings.rpc.bind_host == "127.0.0.1"
    assert settings.rpc.max_message_bytes == 4 * 1024 * 1024
    assert settings.rpc.token is None
    assert settings.metrics.statsd_port == 8125
    assert settings.metrics.statsd_prefix == "tradewind"
    assert settings.metrics.prometheus_on is True
    assert settings.tracing.exporter is TracingExporter.NONE
    assert settings.logging.level is LogLevel.INFO
    assert load_settings(env=base_env) == Settings(core={"home": home})


def test_home_falls_back_to_dot_tradewind_under_the_user_home(tmp_path: Path) -> None:
    assert resolve_home({"HOME": str(tmp_path)}) == tmp_path / ".tradewind"
    settings = load_settings(env={"HOME": str(tmp_path)})
    assert settings.core.dags_folder == tmp_path / ".tradewind" / "dags"


def test_direct_construction_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEWIND__WORKER__SLOTS", "3")
    assert Settings().worker.slots == 8
    assert Settings(worker={"slots": 2}).worker.slots == 2


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.worker = settings.worker  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.worker.slots = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("section", "key", "in_file", "in_env", "from_cmd", "expected"),
    [
        ("core", "parallelism", "4", "5", "6", (32, 4, 5, 6)),
        ("scheduler", "zombie_threshold_s", "9.5", "10", "11.25", (8.0, 9.5, 10.0, 11.25)),
        ("metrics", "statsd_prefix", '"file"', "env", "cmd", ("tradewind", "file", "env", "cmd")),
        ("core", "load_examples", "true", "false", "true", (False, True, False, True)),
    ],
)
def test_precedence_default_then_file_then_env_then_cmd(
    base_env: dict[str, str],
    home: Path,
    section: str,
    key: str,
    in_file: str,
    in_env: str,
    from_cmd: str,
    expected: tuple[object, ...],
) -> None:
    variable = f"TRADEWIND__{section.upper()}__{key.upper()}"

    def value(env: dict[str, str]) -> object:
        return getattr(getattr(load_settings(env=env), section), key)

    assert value(base_env) == expected[0]
    write_toml(home, f"[{section}]\n{key} = {in_file}\n")
    assert value(base_env) == expected[1]
    env = {**base_env, variable: in_env}
    assert value(env) == expected[2]
    env[f"{variable}_CMD"] = python_cmd(f"print({from_cmd!r})")
    assert value(env) == expected[3]


def test_env_names_are_case_insensitive(base_env: dict[str, str]) -> None:
    settings = load_settings(env={**base_env, "tradewind__Worker__SLOTS": "3"})
    assert settings.worker.slots == 3


def test_dags_folder_follows_a_home_set_in_the_file(base_env: dict[str, str], home: Path) -> None:
    write_toml(home, '[core]\nhome = "/srv/tw"\n')
    settings = load_settings(env=base_env)
    assert settings.core.dags_folder == Path("/srv/tw/dags")


def test_explicit_config_file_replaces_the_home_one(base_env: dict[str, str], home: Path) -> None:
    write_toml(home, "[worker]\nslots = 2\n")
    other = home.parent / "other.toml"
    other.write_text("[worker]\nslots = 3\n")
    assert load_settings(other, env=base_env).worker.slots == 3
    assert load_settings(env={**base_env, "TRADEWIND_CONFIG": str(other)}).worker.slots == 3


def test_missing_explicit_config_file_is_an_error(base_env: dict[str, str], home: Path) -> None:
    message = load_error(base_env, home / "nope.toml")
    assert "nope.toml" in message
    assert "does not exist" in message
    assert "does not exist" in load_error({**base_env, "TRADEWIND_CONFIG": "/no/such.toml"})


def test_unknown_key_in_file_names_the_key_and_file(base_env: dict[str, str], home: Path) -> None:
    path = write_toml(home, "[scheduler]\nzombie_treshold_s = 10\n")
    message = load_error(base_env)
    assert "unknown key scheduler.zombie_treshold_s" in message
    assert str(path) in message
    assert "zombie_threshold_s" in message  # the valid keys are listed


def test_unknown_section_in_file_names_the_section(base_env: dict[str, str], home: Path) -> None:
    write_toml(home, "[webserver]\nport = 8080\n")
    message = load_error(base_env)
    assert "unknown section [webserver]" in message
    assert "valid sections: core, database" in message


def test_section_that_is_not_a_table(base_env: dict[str, str], home: Path) -> None:
    write_toml(home, "core = 5\n")
    assert "[core]" in load_error(base_env)
    assert "must be a table" in load_error(base_env)


def test_invalid_toml_names_the_file(base_env: dict[str, str], home: Path) -> None:
    path = write_toml(home, "[core\nparallelism = 4\n")
    message = load_error(base_env)
    assert str(path) in message
    assert "not valid TOML" in message


def test_unknown_key_in_a_known_section_of_the_env(base_env: dict[str, str]) -> None:
    message = load_error({**base_env, "TRADEWIND__WORKER__SLOT": "3"})
    assert "unknown key worker.slot (from TRADEWIND__WORKER__SLOT)" in message


def test_unknown_env_sections_are_ignored(base_env: dict[str, str]) -> None:
    assert load_settings(env={**base_env, "TRADEWIND__PLUGINS__X": "1"}) == load_settings(
        env=base_env
    )


def test_cmd_output_is_stripped_and_kept_secret(base_env: dict[str, str]) -> None:
    url = "postgresql://tw:s3cr3t@db.example:5432/tradewind"
    env = {**base_env, "TRADEWIND__DATABASE__URL_CMD": python_cmd(f"print('  {url}  ')")}
    settings = load_settings(env=env)
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == (
        "postgresql+psycopg2://tw:s3cr3t@db.example:5432/tradewind"
    )
    assert "s3cr3t" not in repr(settings)


def test_failing_cmd_names_the_variable_and_hides_its_output(base_env: dict[str, str]) -> None:
    code = "import sys; print('hunter2'); sys.stderr.write('hunter3'); sys.exit(3)"
    env = {**base_env, "TRADEWIND__RPC__TOKEN_CMD": python_cmd(code)}
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    message = str(caught.value)
    assert "TRADEWIND__RPC__TOKEN_CMD" in message
    assert "rpc.token" in message
    assert "status 3" in message
    assert "hunter" not in message
    # Nothing chained either: a printed traceback must not carry the output.
    error = caught.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/no/such/program --flag", "command '/no/such/program' not found"),
        ("", "the command is empty"),
        ("echo 'unbalanced", "cannot parse the command"),
    ],
)
def test_cmd_that_cannot_run(base_env: dict[str, str], command: str, expected: str) -> None:
    message = load_error({**base_env, "TRADEWIND__DATABASE__URL_CMD": command})
    assert "TRADEWIND__DATABASE__URL_CMD" in message
    assert expected in message


def test_cmd_for_an_unknown_key_is_refused_without_running(base_env: dict[str, str]) -> None:
    env = {**base_env, "TRADEWIND__DATABASE__PASSWORD_CMD": python_cmd("raise SystemExit(9)")}
    message = load_error(env)
    assert "unknown key database.password (from TRADEWIND__DATABASE__PASSWORD_CMD)" in message
    assert "status 9" not in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RPC__SCHEDULER_PORT", "70000", "rpc.scheduler_port: Input should be less than or equal"),
        (
            "METRICS__STATSD_PORT",
            "-1",
            "metrics.statsd_port: Input should be greater than or equal",
        ),
        ("WORKER__KILL_GRACE_S", "-5", "worker.kill_grace_s: Input should be greater than 0"),
        ("SCHEDULER__IDLE_SLEEP_S", "0", "scheduler.idle_sleep_s: Input should be greater than 0"),
        ("CORE__DEFAULT_TIMEZONE", "Mars/Olympus", "core.default_timezone: unknown IANA time zone"),
        ("TRACING__EXPORTER", "jaeger", "tracing.exporter: Input should be 'none', 'console' or"),
        ("LOGGING__FORMAT", "xml", "logging.format: Input should be 'text' or 'json'"),
        ("WORKER__SLOTS", "many", "worker.slots: Input should be a valid integer"),
        ("DATABASE__URL", "mysql://u:pw@h/db", "database.url: unsupported scheme 'mysql'"),
        ("DATABASE__URL", "postgresql+psycopg://u:pw@h/db", "scheme 'postgresql+psycopg'"),
        ("DATABASE__URL", "just-a-host", "database.url: must be a URL like postgresql://"),
        ("CORE__XCOM_BACKEND", "not a path", "core.xcom_backend: 'not a path' is not a dotted"),
        ("WORKER__QUEUES", " , ", "worker.queues: Tuple should have at least 1 item"),
    ],
)
def test_bad_values_are_named_with_their_source(
    base_env: dict[str, str], variable: str, value: str, expected: str
) -> None:
    message = load_error({**base_env, f"TRADEWIND__{variable}": value})
    assert message.startswith("invalid configuration: ")
    assert expected in message
    assert f"(from TRADEWIND__{variable})" in message


def test_a_bad_url_never_echoes_its_password(base_env: dict[str, str]) -> None:
    message = load_error({**base_env, "TRADEWIND__DATABASE__URL": "mysql://u:topsecret@h/db"})
    assert "topsecret" not in message
    with pytest.raises(ValidationError) as caught:
        Settings(database={"url": "mysql://u:topsecret@h/db"}, rpc={"scheduler_port": "x1"})
    assert "topsecret" not in str(caught.value)
    assert "x1" not in str(caught.value)


def test_several_problems_are_reported_together(base_env: dict[str, str], home: Path) -> None:
    write_toml(home, "[rpc]\nworker_port = 99999\n[worker]\nslots = 0\n")
    message = load_error(base_env)
    assert "rpc.worker_port" in message
    assert "worker.slots" in message


def test_zombie_threshold_must_exceed_lease_plus_margin(base_env: dict[str, str]) -> None:
    env = {**base_env, "TRADEWIND__SCHEDULER__ZOMBIE_THRESHOLD_S": "6"}
    message = load_error(env)
    assert "scheduler.zombie_threshold_s (6) must exceed" in message
    assert "worker.lease_s + worker.lease_margin_s (4 + 2 = 6)" in message
    assert "must not declare a zombie before the worker has certainly stopped it" in message
    env["TRADEWIND__WORKER__LEASE_MARGIN_S"] = "1.5"
    assert load_settings(env=env).scheduler.zombie_threshold_s == 6.0


def test_worker_heartbeat_must_be_shorter_than_its_lease() -> None:
    with pytest.raises(ValidationError, match=r"worker.heartbeat_interval_s \(4\) must be less"):
        Settings(worker={"heartbeat_interval_s": 4.0})


def test_scheduler_heartbeat_must_be_shorter_than_its_health_threshold() -> None:
    expected = r"scheduler\.heartbeat_interval_s \(5\) must be less than scheduler\.health_thr"
    with pytest.raises(ValidationError, match=expected):
        Settings(scheduler={"heartbeat_interval_s": 5.0})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
        (
            "postgresql+psycopg2://u:p@h/db?sslmode=require",
            "postgresql+psycopg2://u:p@h/db?sslmode=require",
        ),
        ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("POSTGRESQL://u@h/db", "postgresql+psycopg2://u@h/db"),
        (
            "postgresql:///db?host=/var/run/postgresql",
            "postgresql+psycopg2:///db?host=/var/run/postgresql",
        ),
    ],
)
def test_database_url_is_normalised_to_psycopg2(given: str, expected: str) -> None:
    url = Settings(database={"url": given}).database.url
    assert url is not None
    assert url.get_secret_value() == expected


def test_queues_from_env_text_and_from_file(base_env: dict[str, str], home: Path) -> None:
    env = {**base_env, "TRADEWIND__WORKER__QUEUES": "spark, gpu,spark,"}
    assert load_settings(env=env).worker.queues == ("spark", "gpu")
    write_toml(home, '[worker]\nqueues = ["a", "b"]\n')
    assert load_settings(env=base_env).worker.queues == ("a", "b")


def test_airflow_style_spellings_are_accepted(base_env: dict[str, str]) -> None:
    env = {
        **base_env,
        "TRADEWIND__CORE__DEFAULT_TIMEZONE": "utc",
        "TRADEWIND__LOGGING__LEVEL": "warn",
        "TRADEWIND__TRACING__EXPORTER": "OTLP",
        "TRADEWIND__CORE__LOAD_EXAMPLES": "True",
    }
    settings = load_settings(env=env)
    assert settings.core.default_timezone == "UTC"
    assert settings.logging.level is LogLevel.WARNING
    assert settings.tracing.exporter is TracingExporter.OTLP
    assert settings.core.load_examples is True
    zone = Settings(core={"default_timezone": "Europe/Amsterdam"}).core.default_timezone
    assert zone == "Europe/Amsterdam"


def test_tls_files_come_all_together_and_must_exist(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("tls_ca", "tls_cert", "tls_key")}
    for path in files.values():
        path.write_text("pem")
    assert Settings(rpc=files).rpc.tls_key == files["tls_key"]
    with pytest.raises(ValidationError, match=r"missing: rpc\.tls_cert, rpc\.tls_key"):
        Settings(rpc={"tls_ca": files["tls_ca"]})
    with pytest.raises(ValidationError, match=r"rpc\.tls_ca: file .* does not exist"):
        Settings(rpc={**files, "tls_ca": tmp_path / "gone.pem"})


def test_config_file_path_is_optional_only_by_default(base_env: dict[str, str], home: Path) -> None:
    assert config_file_path(None, base_env) is None
    path = write_toml(home, "")
    assert config_file_path(None, base_env) == path
    assert load_settings(env=base_env) == load_settings(path, env=base_env)


def test_advertise_host_is_explicit_else_the_bind_address_else_the_hostname() -> None:
    assert advertise_host(Settings(rpc={"advertise_host": "w1.example"}).rpc) == "w1.example"
    assert advertise_host(Settings().rpc) == "127.0.0.1"  # bound to one interface: advertise it
    assert advertise_host(Settings(rpc={"bind_host": "0.0.0.0"}).rpc) == socket.gethostname()


def test_returned_xcoms_must_fit_in_one_report(base_env: dict[str, str]) -> None:
    env = {**base_env, "TRADEWIND__CORE__MAX_XCOM_BYTES": str(3 * 1024 * 1024)}
    message = load_error(env)
    assert "rpc.max_message_bytes (4194304) must be at least twice core.max_xcom_bytes" in message
    env["TRADEWIND__RPC__MAX_MESSAGE_BYTES"] = str(7 * 1024 * 1024)
    assert load_settings(env=env).core.max_xcom_bytes == 3 * 1024 * 1024
