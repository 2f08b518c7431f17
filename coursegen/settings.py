"""Configuration: one pydantic-settings object, built at entry points only and passed down."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigurationError(Exception):
    """The environment does not describe a usable setup."""


#: what a worker says when it has nowhere to write statuses
NO_STORE_MESSAGE = (
    "no status store configured: set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (production) "
    "or DATABASE_URL (a PostgreSQL with `coursegen migrate` applied); only producers may run "
    "with REDIS_URL alone"
)


class Settings(BaseSettings):
    """Read from the environment (``REDIS_URL``, ``SUPABASE_URL``, ...) and ``COURSEGEN_*`` knobs.

    Secrets are ``SecretStr``: they never show in a repr, a log line or an error message.
    """

    model_config = SettingsConfigDict(
        env_prefix="COURSEGEN_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), validation_alias=AliasChoices("REDIS_URL", "redis_url")
    )
    supabase_url: str | None = Field(None, validation_alias=AliasChoices("SUPABASE_URL", "supabase_url"))
    supabase_service_role_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_KEY", "supabase_service_role_key"
        ),
    )
    database_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )

    # knobs
    store: Literal["auto", "supabase", "postgres", "outbox"] = Field(
        "auto", validation_alias=AliasChoices("COURSEGEN_STATUS_STORE", "store")
    )
    flush_interval: float = Field(0.2, gt=0, le=10)
    flush_min_batch: int = Field(
        50,
        ge=1,
        le=5000,
        description="jobs with news that make a batch worth a transaction at once; fewer wait for more",
    )
    flush_max_wait: float = Field(
        0.8,
        gt=0,
        le=60,
        description=(
            "seconds the news of fewer than flush_min_batch jobs waits for more (at least "
            "flush_interval): a fleet of lightly loaded processes writes ~1/flush_max_wait "
            "batches a second each, and a status shows up at most this late"
        ),
    )
    max_batch: int = Field(500, ge=1, le=5000)
    max_buffer: int = Field(
        20_000,
        ge=100,
        description=(
            "jobs a process holds in memory (buffered, or being written) before hooks wait: "
            "reached only while the store and Redis are both down, or the store is far slower "
            "than the work"
        ),
    )
    max_block: float = Field(
        0.5,
        ge=0,
        le=10,
        description=(
            "seconds a hook waits for room in a full buffer, per status, before keeping the "
            "status anyway (counted as an overflow); 0: never waits"
        ),
    )
    store_timeout: float = Field(5.0, gt=0, le=120)
    supabase_timeout: float = Field(
        10.0,
        gt=0,
        le=120,
        description=(
            "seconds a request to Supabase's REST API may take; above the statement_timeout the "
            "API runs under (8 s on Supabase), so that the database ends a slow write, rolled "
            "back, before the client gives up not knowing whether it committed"
        ),
    )
    retry_attempts: int = Field(5, ge=1, le=50)
    retry_seconds: float = Field(5.0, gt=0, le=600)
    max_retries: int = Field(3, ge=0, le=100)
    min_backoff_ms: int = Field(1000, ge=1)
    max_backoff_ms: int = Field(60_000, ge=1)
    time_limit_ms: int = Field(600_000, ge=1000)
    max_age_ms: int | None = Field(None, ge=1)

    heartbeat_timeout_ms: int = Field(
        30_000,
        ge=5_000,
        description="a worker silent this long is dead and its unacked messages are redelivered",
    )
    maintenance_chance: int = Field(
        50_000,
        ge=1,
        le=1_000_000,
        description="Redis commands per million that run the dead-worker sweep (Dramatiq: 1000)",
    )
    cancel_poll_interval: float = Field(
        1.0,
        ge=0,
        le=60,
        description=(
            "seconds between the fleet's looks at the database for cancellations requested "
            "there (cancel_job, a plain UPDATE): one worker process at a time asks, elected by a "
            "Redis lease; 0 turns it off (only coursegen.jobs.cancel then reaches the workers)"
        ),
    )
    retention_lag_interval: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description=(
            "seconds between the fleet's reads of how far behind retention is "
            "(job_status_retention_lag_seconds; the cancel poller's lease holder reads it): 0 "
            "turns it off, else at least 60"
        ),
    )
    status_sync: bool = Field(
        True,
        description="mirror job status into the store; off leaves the middleware out entirely",
    )
    metrics: bool = Field(
        True,
        description=(
            "workers export Dramatiq's and status sync's Prometheus metrics on dramatiq_prom_port "
            "(files in dramatiq_prom_db or PROMETHEUS_MULTIPROC_DIR)"
        ),
    )
    demo_pace: float = Field(
        0.0,
        ge=0,
        le=10,
        description="seconds each pipeline stage waits, so that a demo can be watched; 0 in production",
    )

    @field_validator("retention_lag_interval")
    @classmethod
    def _at_most_once_a_minute(cls, value: float) -> float:
        if 0 < value < 60:
            raise ValueError("0 (off) or at least 60 seconds: the read costs the database a scan")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        """Parsed as psycopg will, so that a bad one is a clear configuration error rather than
        a driver error that quotes it (password included)."""
        if value is not None:
            from middleware.conninfo import check_conninfo

            check_conninfo(value.get_secret_value())  # InvalidConninfoError: a ValueError
        return value

    @model_validator(mode="after")
    def _check_store(self) -> Settings:
        if self.supabase_url and self.supabase_service_role_key is None:
            raise ValueError("SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is not")
        return self

    def status_store(self) -> Literal["supabase", "postgres", "outbox"]:
        """Where status events go: Supabase when ``SUPABASE_URL`` is set, else Postgres when
        ``DATABASE_URL`` is set, else the Redis outbox (a producer with ``REDIS_URL`` alone:
        workers drain the outbox; a worker itself refuses to boot without a store)."""
        if self.store == "supabase" and not self.supabase_url:
            raise ConfigurationError("COURSEGEN_STATUS_STORE=supabase needs SUPABASE_URL")
        if self.store == "postgres" and self.database_url is None:
            raise ConfigurationError("COURSEGEN_STATUS_STORE=postgres needs DATABASE_URL")
        if self.store != "auto":
            return self.store
        if self.supabase_url:
            return "supabase"
        if self.database_url is not None:
            return "postgres"
        return "outbox"

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigurationError("DATABASE_URL is not set")
        return self.database_url.get_secret_value()


def load_settings() -> Settings:
    """Build the settings from the environment, with a clear error instead of a traceback."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable behind an error location (what the user has to fix)."""
    if not loc:
        return "settings"
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    if field is None:  # already an alias (REDIS_URL, ...)
        return name
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()
