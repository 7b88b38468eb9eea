"""Settings from environment variables, validated once at start.

Every setting has a safe development default, except where production must not guess:
there a missing ``DATABASE_URL`` or upstream URL stops the service at start with a message
that names the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_NAME = __package__ or "{{ cookiecutter.package_name }}"
DEMO_UPSTREAM_PATH = "/_demo"

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Unset outside production: an embedded PostgreSQL is started (see db/embedded.py).
    database_url: SecretStr | None = None
    # Where the embedded server keeps its data; unset: .postgres/dev beside pyproject.toml.
    embedded_postgres_dir: Path | None = None

    # Pool and connection limits. Explicit, because the defaults are rarely what a
    # service under load wants, and every wait must have an end.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    db_pool_timeout: float = Field(default=5.0, gt=0)
    db_pool_recycle: float = Field(default=1800.0, gt=0)
    db_connect_timeout: float = Field(default=5.0, gt=0)
    db_statement_timeout: float = Field(default=5.0, gt=0)
    db_idle_in_transaction_timeout: float = Field(default=30.0, gt=0)
    # True when DATABASE_URL points at PgBouncer in transaction pooling mode: no prepared
    # statement caches, and the two timeouts above set with SET LOCAL in every transaction
    # instead of as connection parameters, which PgBouncer refuses (see db/engine.py).
    db_pgbouncer: bool = False

    # Unset in development: the built-in demo upstream serves both.
    preferences_url: HttpUrl | None = None
    notifier_url: HttpUrl | None = None
    upstream_timeout: float = Field(default=2.0, gt=0)
    upstream_max_connections: int = Field(default=50, ge=1)

    request_timeout: float = Field(default=10.0, gt=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    readiness_timeout: float = Field(default=1.0, gt=0)

    # Admission (aio/admission.py): at most ADMISSION_LIMIT requests in flight in this process;
    # unset, the connections its pool can hand out (DB_POOL_SIZE + DB_MAX_OVERFLOW), since
    # nearly every request holds one and more in flight only queue for the pool. A request that
    # finds no slot waits ADMISSION_TIMEOUT at most (enough to absorb a burst), then gets 503.
    admission_limit: int | None = Field(default=None, ge=1)
    admission_timeout: float = Field(default=0.25, ge=0)
    # Retry-After (whole seconds) of each 503 that says "come back later": overload, no
    # database connection in time, database unreachable.
    retry_after: int = Field(default=1, ge=1, le=3600)

    debug_token: SecretStr | None = None
    asyncio_debug: bool = False
    slow_callback_seconds: float = Field(default=0.1, gt=0)
    loop_lag_warning_seconds: float = Field(default=0.2, gt=0)
    # gc.freeze() after startup moves start-up objects out of the collector's way, which
    # removes most of the latency tail caused by full collections.
    gc_freeze: bool = True

    # POST /users/{id}/orders remembers an Idempotency-Key this long (24 h, as payment APIs do);
    # a retry within it gets the stored order back, the same key after it places a new order.
    idempotency_key_ttl: float = Field(default=86400.0, gt=0)

    # The transactional outbox (outbox/): its dispatcher looks for due notifications every poll
    # interval, sends up to a batch at once, and owns a claimed row for the lease (never less
    # than UPSTREAM_TIMEOUT + 1 s, or a slow send would be taken over and sent twice). A failed
    # send is retried after a random delay of up to RETRY_BASE * 2**(attempt - 1) seconds (at
    # most RETRY_CAP), and after MAX_ATTEMPTS it is set aside as dead. Delivered rows are deleted
    # after the retention; the cleanup (expired idempotency keys too) runs every interval.
    outbox_poll_interval: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=20, ge=1)
    outbox_lease: float = Field(default=30.0, gt=0)
    outbox_max_attempts: int = Field(default=20, ge=1)
    outbox_retry_base: float = Field(default=1.0, gt=0)
    outbox_retry_cap: float = Field(default=600.0, gt=0)
    outbox_retention: float = Field(default=86400.0, gt=0)
    outbox_cleanup_interval: float = Field(default=60.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme != "postgresql+asyncpg":
            raise ValueError(
                f"DATABASE_URL must start with postgresql+asyncpg:// (got {scheme or 'no'} scheme)"
            )
        return value

    @field_validator("debug_token")
    @classmethod
    def _empty_token_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _production_needs_real_dependencies(self) -> Self:
        if self.environment != "production":
            return self
        missing = [
            name
            for name, value in (
                ("DATABASE_URL", self.database_url),
                ("PREFERENCES_URL", self.preferences_url),
                ("NOTIFIER_URL", self.notifier_url),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} must be set when ENVIRONMENT=production "
                "(the embedded database and the demo upstream are for development only)"
            )
        return self

    @property
    def admission_slots(self) -> int:
        """The requests admitted at once: ADMISSION_LIMIT, or the size of the database pool."""
        return self.admission_limit or self.db_pool_size + self.db_max_overflow

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def uses_demo_upstream(self) -> bool:
        return self.preferences_url is None or self.notifier_url is None

    @property
    def demo_upstream_url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{DEMO_UPSTREAM_PATH}"

    @property
    def preferences_base_url(self) -> str:
        return (
            str(self.preferences_url).rstrip("/")
            if self.preferences_url
            else self.demo_upstream_url
        )

    @property
    def notifier_base_url(self) -> str:
        return str(self.notifier_url).rstrip("/") if self.notifier_url else self.demo_upstream_url
