"""Settings from environment variables, validated once at start.

Every setting has a safe development default, except where production must not guess:
there a missing ``DATABASE_URL`` or upstream URL stops the service at start with a message
that names the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
{%- if cookiecutter.auth == "bearer" %}

from .auth.tokens import ASYMMETRIC_ALGORITHMS
{%- endif %}

PACKAGE_NAME = __package__ or "{{ cookiecutter.package_name }}"
DEMO_UPSTREAM_PATH = "/_demo"

Environment = Literal["development", "test", "production"]


# Debug tokens seen in examples and left in place: refused in production, whatever their length.
PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "placeholder", "secret", "password",
                     "token", "debug", "example", "default", "test", "xxxx")  # fmt: skip
MIN_DEBUG_TOKEN_LENGTH = 32
MIN_DEBUG_TOKEN_DISTINCT = 10


def _check_production_debug_token(token: str) -> None:
    """The debug endpoints dump every task of the process: their token must be a real secret."""
    advice = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    if len(token) < MIN_DEBUG_TOKEN_LENGTH:
        raise ValueError(
            f"DEBUG_TOKEN: must be at least {MIN_DEBUG_TOKEN_LENGTH} characters in production; "
            + advice
        )
    lowered = token.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS) or (
        len(set(token)) < MIN_DEBUG_TOKEN_DISTINCT
    ):
        raise ValueError(f"DEBUG_TOKEN: looks like a placeholder, not a secret; {advice}")


def _check_production_database_url(url: str) -> None:
    """A URL without host or database would connect to libpq's defaults (a local socket, a
    database named after the user): in production that is a mistake, not a choice. The unix
    socket form names its directory as ``?host=/path``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or [""])[0]
    database = parts.path.lstrip("/")
    if not host or not database:
        raise ValueError(
            "DATABASE_URL: must name a host (or ?host=/socket/dir) and a database in production"
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One JSON line per request (method, path, status, duration, request id); turn it off where
    # a proxy or load balancer in front already logs every request.
    access_log: bool = True

    # Unset outside production: an embedded PostgreSQL is started (see db/embedded.py).
    database_url: SecretStr | None = None
    # Where the embedded server keeps its data; unset: .postgres/dev beside pyproject.toml.
    embedded_postgres_dir: Path | None = None

    # Pool and connection limits. Explicit, because the defaults are rarely what a
    # service under load wants, and every wait must have an end.
    # A fixed pool by default: an overflow connection is closed when it is returned and the pool
    # is full, so a load that swings around the pool size opens and closes server connections
    # (a process fork on the server each) all the time.
    db_pool_size: int = Field(default=15, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
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

    # Unset: GET /metrics on the app's own port. Set: only on this port (on HOST), served by a
    # small listener of its own, so that the public port does not expose them (0: any free port).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    debug_token: SecretStr | None = None
{%- if cookiecutter.auth == "bearer" %}

    # Bearer JWTs of callers (auth/): the issuer (`iss`) and audience (`aud`) a token must
    # carry, and the identity provider's JWKS, loaded at startup (within AUTH_JWKS_TIMEOUT) and
    # refreshed in the background every AUTH_JWKS_REFRESH_INTERVAL seconds, or sooner when a
    # token names an unknown key, at most once per AUTH_JWKS_MIN_REFRESH_GAP. Required in
    # production; unset elsewhere, every protected route answers 401. AUTH_ALGORITHMS may only
    # name asymmetric algorithms; AUTH_LEEWAY is the clock skew tolerated on exp/nbf/iat.
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_jwks_url: HttpUrl | None = None
    auth_algorithms: frozenset[str] = frozenset({"RS256", "ES256"})
    auth_leeway: float = Field(default=30.0, ge=0, le=120)
    auth_jwks_timeout: float = Field(default=2.0, gt=0)
    auth_jwks_refresh_interval: float = Field(default=300.0, gt=0)
    auth_jwks_min_refresh_gap: float = Field(default=30.0, ge=0)
{%- endif %}
    # /docs, /redoc and /openapi.json, with the docs' scripts served by the service itself (no
    # CDN). Unset: on in development and test, off in production, where the schema is a map of
    # every route for whoever asks.
    docs_enabled: bool | None = None
    # The largest request body accepted (1 MiB); a larger one is 413 before it is read (see
    # body_limit.py). Size it to the largest valid request, with room to spare: every body in
    # flight may take this much memory, times ADMISSION_LIMIT.
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # The largest upstream answer read (1 MiB); a larger one is a 502, read no further.
    upstream_max_body_bytes: int = Field(default=1_048_576, ge=1)
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

{%- if cookiecutter.auth == "bearer" %}

    @field_validator("auth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: frozenset[str]) -> frozenset[str]:
        # Never `none`, never HS*: an HMAC "secret" checked against a public JWKS key is a key
        # every client can read (the classic algorithm-confusion forgery).
        refused = sorted(value - ASYMMETRIC_ALGORITHMS)
        if refused or not value:
            raise ValueError(
                f"AUTH_ALGORITHMS may only name {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
                f" (refused: {', '.join(refused) or 'an empty list'})"
            )
        return value

    @field_validator("auth_issuer", "auth_audience", "auth_jwks_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes `${AUTH_ISSUER:-}` as an empty string: that is "unset", named as such.
        return None if value == "" else value
{%- endif %}

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
{%- if cookiecutter.auth == "bearer" %}
                ("AUTH_ISSUER", self.auth_issuer),
                ("AUTH_AUDIENCE", self.auth_audience),
                ("AUTH_JWKS_URL", self.auth_jwks_url),
{%- endif %}
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} must be set when ENVIRONMENT=production "
                "(the embedded database and the demo upstream are for development only)"
            )
        if self.database_url is not None:
            _check_production_database_url(self.database_url.get_secret_value())
        if self.debug_token is not None:
            _check_production_debug_token(self.debug_token.get_secret_value())
        return self

    @property
    def serves_docs(self) -> bool:
        """DOCS_ENABLED, or (unset) everywhere but production."""
        if self.docs_enabled is None:
            return self.environment != "production"
        return self.docs_enabled

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
