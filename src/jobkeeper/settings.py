"""Configuration: one pydantic-settings ``Settings``, read from ``JOBKEEPER_*`` variables."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobkeeper.domain.validate import DEFAULT_SCHEMA, validate_schema
from jobkeeper.errors import InvalidRequest

__all__ = [
    "Duration",
    "KindRetention",
    "Settings",
    "asyncpg_dsn",
    "parse_duration",
    "sqlalchemy_url",
]

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> object:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"24h"`` or ``"7d"`` (other values pass on to
    pydantic, which rejects them)."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.lower())
        if match is None:
            raise ValueError("a duration like 90, 90s, 15m, 24h or 7d")
        return float(match.group(1)) * _UNIT[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class KindRetention(BaseModel):
    """Retention overrides for one job kind (unset fields use the defaults)."""

    payload_ttl: Duration | None = None
    job_ttl: Duration | None = None


_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def sqlalchemy_url(url: str) -> str:
    """Normalise a Postgres URL to SQLAlchemy's asyncpg form (``postgresql+asyncpg://``)."""
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    raise ValueError(
        "database URL must start with postgresql://, postgres:// or postgresql+asyncpg://"
    )


def asyncpg_dsn(url: str) -> str:
    """The same URL in the plain ``postgresql://`` form that asyncpg and libpq accept."""
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+asyncpg://") :]


class Settings(BaseSettings):
    """Everything jobkeeper reads from the environment (``JOBKEEPER_*``) or a ``.env`` file."""

    model_config = SettingsConfigDict(
        env_prefix="JOBKEEPER_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(
        default=None,
        description="Postgres URL (postgresql:// or postgresql+asyncpg://). "
        "Unset: the demo starts an embedded Postgres.",
    )
    cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Most jobs held in the hot cache; 0: no cache (`jobkeeper worker` keeps none).",
    )
    cache_ttl: float = Field(
        default=30.0, gt=0, description="Seconds a cached job may be served before a re-read."
    )
    # "schema" would shadow pydantic's BaseModel.schema(): the field is pg_schema, read from
    # JOBKEEPER_SCHEMA (or Settings(schema=...))
    pg_schema: str = Field(
        default=DEFAULT_SCHEMA,
        validation_alias=AliasChoices("schema", "JOBKEEPER_SCHEMA", "pg_schema"),
        description="Postgres schema of jobkeeper's tables, version table and channels "
        "(JOBKEEPER_SCHEMA), so it shares an application's database without touching its tables.",
    )
    pool_size: int = Field(default=10, ge=1, description="Database connections per process.")
    startup_wait: float = Field(
        default=60.0,
        ge=0,
        description="Seconds `jobkeeper serve` and `jobkeeper worker` (and an app's "
        "JobManager.from_settings) keep trying at start while Postgres cannot be reached, "
        "then exit with one line; 0: fail at once.",
    )
    prepared_statements: bool = Field(
        default=True,
        description="Keep prepared statements per connection; false behind a transaction-mode "
        "pooler that cannot (PgBouncer before 1.21).",
    )
    command_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a statement may take before its connection counts as lost "
        "(503, retried): a network partition fails requests instead of hanging them.",
    )
    feed_mode: Literal["notify", "poll"] = Field(
        default="notify",
        description="How changes reach other processes' caches: LISTEN/NOTIFY plus catch-up, "
        "or catch-up polling only (for transaction-mode poolers). Same on every process.",
    )
    feed_interval: float | None = Field(
        default=None,
        gt=0,
        description="Seconds between catch-ups (default 1.0 with notify, 0.25 with poll).",
    )
    max_queued: int | None = Field(
        default=None, ge=1, description="Most queued jobs per tenant; unset means unbounded."
    )
    max_queued_per_kind: int | None = Field(
        default=None, ge=1, description="Most queued jobs per tenant and kind; unset: unbounded."
    )
    queue_full_retry_after: float = Field(
        default=5.0, gt=0, description="Seconds a refused submit is told to wait (Retry-After)."
    )
    worker_concurrency: int = Field(default=4, ge=1, description="Jobs one worker runs at once.")
    lease_seconds: float = Field(
        default=30.0, gt=0, description="A claimed job's lease; heartbeats renew it every third."
    )
    backoff_base: float = Field(
        default=1.0, gt=0, description="First retry delay in seconds (doubles per attempt)."
    )
    backoff_max: float = Field(default=300.0, gt=0, description="Longest retry delay in seconds.")
    shutdown_grace: float = Field(
        default=30.0, ge=0, description="Seconds a stopping worker lets running jobs finish."
    )
    auth: Literal["keys", "disabled"] = Field(
        default="keys",
        description="HTTP auth: Bearer API keys, or disabled (dev only: every request is "
        "tenant 'default').",
    )
    max_payload_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest request body the HTTP API accepts."
    )
    max_batch: int = Field(
        default=1_000, ge=1, description="Most jobs one POST /jobs:batch may submit."
    )
    sweep_interval: float = Field(
        default=5.0, gt=0, description="Seconds between the API's sweeps (leases, deadlines)."
    )
    payload_ttl: Duration = Field(
        default=86_400.0, description="After a job finishes, its input is cleared (24h)."
    )
    job_ttl: Duration = Field(
        default=604_800.0,
        description="After a job finishes, it and its history are deleted; a tombstone stays (7d).",
    )
    tombstone_ttl: Duration = Field(
        default=2_592_000.0,
        description="How long an expired job answers job_expired, not job_not_found (30d).",
    )
    retention_by_kind: dict[str, KindRetention] = Field(
        default_factory=dict,
        description='Per-kind overrides as JSON: {"report": {"job_ttl": "90d"}}.',
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines of jobkeeper serve/worker: text or JSON."
    )
    log_level: str = Field(default="INFO", description="Logging level.")
    key_cache_ttl: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a replica trusts a verified API key (a revocation takes this long).",
    )
    ui: bool = Field(
        default=True,
        description="Serve the dashboard at /ui in `jobkeeper serve` (false: the API only).",
    )
    ui_secret: SecretStr | None = Field(
        default=None,
        description="Signs the dashboard's session cookies. Set the same value on every replica "
        "behind one address; unset: a random one per process (a restart signs everyone out).",
    )
    ui_session_ttl: Duration = Field(
        default=28_800.0, description="How long a dashboard sign-in lasts (8h)."
    )

    @field_validator("pg_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        try:
            return validate_schema(value)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return None if value is None else sqlalchemy_url(value)
