"""The one typed, frozen configuration tree: a model per section, the rules of each key and the
cross-section rules checked once at load. `Settings(...)` gives the built-in defaults plus its
keyword arguments; `load_settings` adds the file, the environment and the _CMD commands."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "CoreSettings",
    "DatabaseSettings",
    "HealthSettings",
    "LogFormat",
    "LogLevel",
    "LoggingSettings",
    "MetricsSettings",
    "RpcSettings",
    "SchedulerSettings",
    "Settings",
    "TracingExporter",
    "TracingSettings",
    "WorkerSettings",
    "advertise_host",
    "normalize_database_url",
    "pgdata_dir",
    "unknown_key_message",
    "unknown_section_message",
]

ENV_PREFIX = "TRADEWIND__"
DEFAULT_HOME = Path("~/.tradewind")

Port = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port; 0 asks the OS for a free one."""
Seconds = Annotated[float, Field(gt=0)]
_REPORT_ENVELOPE = 64 * 1024  # a report's own fields around the values a task returned
Delay = Annotated[float, Field(ge=0)]
"""Seconds, where 0 means none."""
WholeSeconds = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1)]

_PSYCOPG2_SCHEME = "postgresql+psycopg2"
# SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, which is not shipped; libpq also
# accepts postgres:// (Heroku and many PaaS hand those out).
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", _PSYCOPG2_SCHEME})
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class TracingExporter(StrEnum):
    """Where OpenTelemetry spans go."""

    NONE = "none"
    CONSOLE = "console"
    OTLP = "otlp"


class LogFormat(StrEnum):
    """How log records are written."""

    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    """The standard logging level names."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class _Section(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, validate_default=True
    )


def normalize_database_url(url: str) -> str:
    """Return a PostgreSQL URL with the psycopg2 driver; reject every other scheme."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme:
        raise ValueError("must be a URL like postgresql://user:password@host:5432/dbname")
    if scheme.lower() not in _POSTGRES_SCHEMES:
        # The scheme is never secret; the rest of the URL may be.
        raise ValueError(
            f"unsupported scheme {scheme!r}: use postgresql:// or {_PSYCOPG2_SCHEME}:// "
            "(only PostgreSQL with the psycopg2 driver is supported)"
        )
    return f"{_PSYCOPG2_SCHEME}://{rest}"


def _check_timezone(name: str) -> str:
    # Airflow's default is the lower-case "utc"; accept it so ported configs keep working.
    if name.strip().lower() == "utc":
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown IANA time zone {name!r} (e.g. UTC, Europe/Amsterdam)") from None
    return name


class CoreSettings(_Section):
    """[core]: where things live and process-wide limits."""

    home: Path = DEFAULT_HOME
    dags_folder: Path = DEFAULT_HOME / "dags"
    default_timezone: str = "UTC"
    dag_discovery_safe_mode: bool = True
    parallelism: Count = 32
    xcom_backend: str = "tradewind_cluster.xcom.DatabaseXComBackend"
    max_xcom_bytes: Count = 1024 * 1024
    load_examples: bool = False
    dags_are_paused_at_creation: bool = True
    default_pool_slots: Annotated[int, Field(ge=0)] = 128

    @model_validator(mode="before")
    @classmethod
    def _dags_under_home(cls, data: Any) -> Any:
        # dags_folder follows home unless set on its own, as Airflow's {AIRFLOW_HOME}/dags does.
        if isinstance(data, dict) and "dags_folder" not in data:
            home = data.get("home", DEFAULT_HOME)
            if isinstance(home, str | Path):
                return {**data, "dags_folder": Path(home) / "dags"}
        return data

    @field_validator("home", "dags_folder")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("default_timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("xcom_backend")
    @classmethod
    def _valid_import_path(cls, value: str) -> str:
        if not _IMPORT_PATH.match(value):
            raise ValueError(f"{value!r} is not a dotted import path like package.module.Class")
        return value


class DatabaseSettings(_Section):
    """[database]: the metadata store; no url means the embedded server in <home>/pgdata."""

    url: SecretStr | None = None
    pool_size: Annotated[int, Field(ge=0)] = 5  # 0 = no limit, as in SQLAlchemy and Airflow
    max_overflow: Annotated[int, Field(ge=-1)] = 10  # -1 = no overflow limit
    pool_recycle_s: WholeSeconds = 1800
    # How long a call waits for a pooled connection when all are in use; then the call fails
    # as "store unavailable" and the caller tries again on its next pass.
    pool_timeout_s: Seconds = 30.0
    connect_timeout_s: WholeSeconds = 5  # libpq takes whole seconds
    statement_timeout_ms: Count = 30000
    # Test each pooled connection before use: one more round trip per transaction. Off (the
    # default) is faster and as safe: a dead connection fails at its transaction's first
    # statement, before anything is written, and the whole transaction is retried on a fresh one.
    pool_pre_ping: bool = False
    # Run the hot path's statements as server-side prepared statements (PREPARE/EXECUTE):
    # planned once per connection instead of on every execution. Turn off behind a pooler in
    # transaction mode (PgBouncer's default), where a session is not one connection's own.
    prepared_statements: bool = True
    retry_max_attempts: Count = 10
    retry_max_wait_s: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _normalize_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        return SecretStr(normalize_database_url(value.get_secret_value()))


class SchedulerSettings(_Section):
    """[scheduler]: loop pacing, batch bounds and housekeeping intervals of every replica."""

    heartbeat_interval_s: Seconds = 0.5
    health_threshold_s: Seconds = 5.0
    loop_stall_threshold_s: Seconds = 30.0  # a loop with no progress for this long is unhealthy
    peer_ping_interval_s: Seconds = 0.5
    idle_sleep_s: Seconds = 1.0
    parse_interval_s: Seconds = 30.0
    parse_timeout_s: Seconds = 60.0
    max_runs_per_loop: Count = 10
    max_dagruns_to_examine: Count = 20
    max_tis_per_query: Count = 512
    zombie_threshold_s: Seconds = 8.0
    zombie_check_interval_s: Seconds = 2.0
    orphan_check_interval_s: Seconds = 2.0
    queued_timeout_s: Seconds = 600.0
    queued_max_requeues: Annotated[int, Field(ge=0)] = 3
    catchup_by_default: bool = True
    dispatch_retry_attempts: Count = 3
    # A success report whose worker offers its slot gets the run's next ready task in the reply
    # (store/eager.py): one statement per hop instead of a loop pass and a dispatch call. Off by
    # default: it halves the latency of a lone chain, but under slot contention it steps aside
    # and costs CPU (docs/performance.md).
    eager_dispatch: bool = False
    # "workers": attempts go to `tradewind worker` agents over gRPC. "local": the replica runs
    # them itself on threads (one-machine development and tests; bash tasks only really run).
    executor: Literal["workers", "local"] = "workers"


def _split_queues(value: Any) -> Any:
    # The environment gives "a, b"; a file gives a list.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class WorkerSettings(_Section):
    """[worker]: the lease that bounds a partitioned worker, slots, queues and shutdown."""

    lease_s: Seconds = 4.0
    lease_margin_s: Seconds = 2.0
    heartbeat_interval_s: Seconds = 1.0
    slots: Count = 8
    queues: Annotated[tuple[Name, ...], NoDecode, Field(min_length=1)] = ("default",)
    shutdown_grace_s: Seconds = 30.0
    kill_grace_s: Seconds = 5.0
    # Start a bash task whose templates need only the run context as `bash` itself, from the
    # fork server, instead of in a forked Python task process (same log, outcome and XCom).
    direct_bash: bool = True
    # Hold a try's STARTED report this long: a try that ends sooner sends one report (start and
    # outcome, one transaction) instead of two. Its task instance shows `queued` meanwhile.
    # 0 sends STARTED at once.
    start_report_delay_s: Delay = 0.1
    # Scheduler gRPC addresses (host:port) a worker may talk to; `--schedulers` overrides.
    schedulers: Annotated[tuple[Name, ...], NoDecode] = ()

    @field_validator("queues", "schedulers", mode="before")
    @classmethod
    def _queues_from_text(cls, value: Any) -> Any:
        return _split_queues(value)

    @field_validator("queues")
    @classmethod
    def _unique_queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name.strip() for name in value))


class RpcSettings(_Section):
    """[rpc]: the gRPC servers of schedulers and workers and how they authenticate each other."""

    bind_host: Name = "127.0.0.1"
    advertise_host: Name | None = None
    scheduler_port: Port = 0
    worker_port: Port = 0
    token: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: Count = 4 * 1024 * 1024
    call_timeout_s: Seconds = 5.0

    @model_validator(mode="after")
    def _tls_complete(self) -> Self:
        paths = {"tls_ca": self.tls_ca, "tls_cert": self.tls_cert, "tls_key": self.tls_key}
        unset = sorted(key for key, path in paths.items() if path is None)
        if 0 < len(unset) < len(paths):
            raise ValueError(
                f"rpc.tls_ca, rpc.tls_cert and rpc.tls_key are set together or not at all; "
                f"missing: {', '.join('rpc.' + key for key in unset)}"
            )
        for key, path in paths.items():
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"rpc.{key}: file {str(path)!r} does not exist")
        return self


class MetricsSettings(_Section):
    """[metrics]: StatsD (Airflow's metric names) and the Prometheus endpoint of each process."""

    statsd_on: bool = False
    statsd_host: Name = "localhost"
    statsd_port: Port = 8125
    statsd_prefix: Name = "tradewind"
    prometheus_on: bool = True
    bind_host: Name = "0.0.0.0"  # Prometheus scrapes from another host
    metrics_port: Port = 0


class HealthSettings(_Section):
    """[health]: the HTTP /health endpoint of each process."""

    bind_host: Name = "0.0.0.0"  # probes come from the kubelet or a load balancer
    health_port: Port = 0


class TracingSettings(_Section):
    """[tracing]: OpenTelemetry export."""

    exporter: TracingExporter = TracingExporter.NONE
    otlp_endpoint: Name | None = None  # None lets the SDK read OTEL_EXPORTER_OTLP_ENDPOINT
    service_name: Name = "tradewind"

    @field_validator("exporter", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class LoggingSettings(_Section):
    """[logging]: level and format, applied once by the CLI entry point."""

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.TEXT

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """The whole configuration; frozen, validated once, then passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        validate_default=True,
    )

    core: CoreSettings = Field(default_factory=CoreSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    rpc: RpcSettings = Field(default_factory=RpcSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Direct construction reads nothing: only `load_settings` reads files, env and commands."""
        return (init_settings,)

    @model_validator(mode="after")
    def _check_lease_rules(self) -> Self:
        worker, scheduler = self.worker, self.scheduler
        fence = worker.lease_s + worker.lease_margin_s
        if scheduler.zombie_threshold_s <= fence:
            raise ValueError(
                f"scheduler.zombie_threshold_s ({scheduler.zombie_threshold_s:g}) must exceed "
                f"worker.lease_s + worker.lease_margin_s ({worker.lease_s:g} + "
                f"{worker.lease_margin_s:g} = {fence:g}): a scheduler must not declare a zombie "
                "before the worker has certainly stopped it"
            )
        if worker.heartbeat_interval_s >= worker.lease_s:
            raise ValueError(
                f"worker.heartbeat_interval_s ({worker.heartbeat_interval_s:g}) must be less than "
                f"worker.lease_s ({worker.lease_s:g}): a worker must get to renew its lease "
                "before it runs out"
            )
        if scheduler.heartbeat_interval_s >= scheduler.health_threshold_s:
            raise ValueError(
                f"scheduler.heartbeat_interval_s ({scheduler.heartbeat_interval_s:g}) must be less "
                f"than scheduler.health_threshold_s ({scheduler.health_threshold_s:g}): a healthy "
                "scheduler would otherwise look dead between two heartbeats"
            )
        returned = 2 * self.core.max_xcom_bytes + _REPORT_ENVELOPE
        if returned > self.rpc.max_message_bytes:
            raise ValueError(
                f"rpc.max_message_bytes ({self.rpc.max_message_bytes}) must be at least twice "
                f"core.max_xcom_bytes plus 64 KiB ({returned}): a task's returned values "
                "(return_value and, with multiple_outputs, each key) travel in one report"
            )
        return self


SECTIONS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {
        "core": CoreSettings,
        "database": DatabaseSettings,
        "scheduler": SchedulerSettings,
        "worker": WorkerSettings,
        "rpc": RpcSettings,
        "metrics": MetricsSettings,
        "health": HealthSettings,
        "tracing": TracingSettings,
        "logging": LoggingSettings,
    }
)
"""Each section name and its model, in the order `Settings` declares them."""


def unknown_section_message(section: str, where: str = "") -> str:
    """Say that a section does not exist (and where it was set) and list the ones that do."""
    return f"unknown section [{section}]{where}; valid sections: {', '.join(SECTIONS)}"


def unknown_key_message(section: str, key: str, where: str = "") -> str:
    """Say that a key of a known section does not exist (and where it was set); list the valid."""
    valid = ", ".join(SECTIONS[section].model_fields)
    return f"unknown key {section}.{key}{where}; valid keys in [{section}]: {valid}"


def pgdata_dir(settings: Settings) -> Path:
    """The data directory of the embedded PostgreSQL used when database.url is not set."""
    return settings.core.home / "pgdata"


def advertise_host(rpc: RpcSettings) -> str:
    """The host name peers use to reach this process: rpc.advertise_host, else the bind address
    when it names one interface, else the hostname."""
    if rpc.advertise_host:
        return rpc.advertise_host
    if rpc.bind_host not in ("0.0.0.0", "::", ""):
        return rpc.bind_host
    return socket.gethostname()
