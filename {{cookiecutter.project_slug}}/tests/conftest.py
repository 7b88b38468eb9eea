"""Fixtures: a real PostgreSQL, a fresh database per test process, the real app and lifespan.

The database is the embedded PostgreSQL (started once, shared by the xdist workers), or the
server in ``TEST_DATABASE_URL`` when that is set. Each worker creates its own database, migrated
with the project's alembic migrations; each test that uses the app starts from empty tables.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from blockbuster import BlockBuster, blockbuster_ctx
from fastapi import FastAPI
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.embedded import asyncpg_url, start_embedded_postgres
from {{ cookiecutter.package_name }}.db.engine import create_engine
from {{ cookiecutter.package_name }}.db.migrate import upgrade_database
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

{% if cookiecutter.auth == "bearer" -%}
from .identity_provider import IdentityProvider
from .service_process import admin_headers, session_provider, set_session_provider
{% endif -%}
from .upstream_server import ScriptedUpstream

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ASYNCPG_CONNECT = "asyncpg/connect_utils.py"
APP_NAME = "{{ cookiecutter.package_name }}"  # the application_name of the service's connections


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    """Fail any test in which the service's code makes a blocking call on the event loop.

    Only calls made from the service's package are reported (third-party internals are not
    ours to fix). A test that blocks on purpose says so with ``@pytest.mark.allow_blocking``.
    """
    if request.node.get_closest_marker("allow_blocking"):
        yield None
        return
    with blockbuster_ctx("{{ cookiecutter.package_name }}") as detector:
        # asyncpg looks for ~/.pgpass and ~/.postgresql/root.crt when it opens a connection:
        # a few stats of local files, once per new pooled connection, and not ours to change.
        for function in detector.functions.values():
            function.can_block_in(ASYNCPG_CONNECT, "_parse_connect_dsn_and_args")
        yield detector


def _as_asyncpg(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server we may create databases on."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield _as_asyncpg(external)
        return
    data_dir = PROJECT_ROOT / ".postgres" / "test"
    # The xdist workers share one server. On a fresh checkout two workers would both run
    # initdb on the same folder and the second would stop the first one's server: the first to
    # take the lock creates it, the others find it initialised and join it.
    with _exclusively(data_dir.with_name("test.lock")):
        server = start_embedded_postgres(data_dir)
    try:
        yield asyncpg_url(server)
    finally:
        server.cleanup()


@contextmanager
def _exclusively(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` across processes (POSIX advisory lock)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A database of this test process alone, migrated to head, dropped at the end."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"test_{worker}_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        engine = create_async_engine(url)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()
        yield url
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "gc_freeze": False,
        "preferences_url": None,
        "notifier_url": None,
        "debug_token": None,
        # The outbox's poller looks once, at startup, unless a test asks for more: its rounds
        # (and its retries of notifications nobody listens to) would otherwise show up in
        # tests that count the pool's connections. The outbox's own tests set an interval.
        "outbox_poll_interval": 3600.0,
        # A burst of concurrent requests waits its turn at the admission gate instead of being
        # refused when a busy machine is slow: only the overload tests set a short wait.
        "admission_timeout": 30.0,
    }
{%- if cookiecutter.auth == "bearer" %}
    # auth=bearer: the app trusts the session's identity provider unless a test says otherwise.
    values.update(session_provider().settings())
{%- endif %}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


{%- if cookiecutter.auth == "bearer" %}


@pytest.fixture
def settings(database_url: str, identity_provider: IdentityProvider) -> Settings:
    # auth=bearer: the app trusts the tests' identity provider (see `client` for the token).
    return make_settings(database_url, **identity_provider.settings())


@pytest.fixture(scope="session", autouse=True)
async def identity_provider() -> AsyncIterator[IdentityProvider]:
    """A real JWKS server on 127.0.0.1 and the keys that sign the tests' tokens; every app and
    process the tests start trusts it (see `make_settings`, `running_app`, `running_service`)."""
    async with IdentityProvider() as provider:
        set_session_provider(provider)
        try:
            yield provider
        finally:
            set_session_provider(None)
{%- else %}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)
{%- endif %}


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the tests' own, to look at the database from outside the app."""
    engine = create_engine(make_settings(database_url), database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def empty_tables(db_engine: AsyncEngine) -> None:
    async with db_engine.begin() as connection:
        await connection.execute(
            text("TRUNCATE users, orders, idempotency_keys, outbox RESTART IDENTITY CASCADE")
        )


@pytest.fixture
async def app(settings: Settings, empty_tables: None) -> AsyncIterator[FastAPI]:
    """The real app with its real lifespan running."""
    application = create_app(settings)
    async with LifespanManager(application) as manager:
        yield manager.app  # type: ignore[misc]


def resources_of(manager: LifespanManager) -> Resources:
    """What the lifespan yielded: the engine, the HTTP client, ... of a running app."""
    resources: Resources = manager._state["resources"]
    return resources


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    """A real HTTP server on 127.0.0.1 playing both upstream services; script it per test."""
    async with ScriptedUpstream() as server:
        yield server


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[httpx2.AsyncClient, Resources]]:
    """The app with its lifespan, a client for it, and what the lifespan yielded."""
    application = create_app(settings)
{%- if cookiecutter.auth == "bearer" %}
    # auth=bearer: the client of an app that trusts the session's identity provider sends its
    # admin token; an app trusting another provider (the auth tests') gets a bare client.
    trusted = str(settings.auth_jwks_url) == session_provider().jwks_url
    headers = admin_headers() if trusted else {}
{%- endif %}
    async with LifespanManager(application) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
{%- if cookiecutter.auth == "bearer" %}
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://service.test", headers=headers
        ) as http:
{%- else %}
        async with httpx2.AsyncClient(transport=transport, base_url="http://service.test") as http:
{%- endif %}
            yield http, resources_of(manager)


@pytest.fixture
async def service(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> AsyncIterator[tuple[httpx2.AsyncClient, Resources]]:
    """The app wired to the scripted upstream, with short deadlines so failures show fast."""
    async with running_app(upstream_settings(database_url, upstream)) as running:
        yield running


def upstream_settings(
    database_url: str, upstream: ScriptedUpstream, **overrides: object
) -> Settings:
    """Settings of an app whose two upstreams are ``upstream``; short deadlines by default."""
    values: dict[str, object] = {
        "preferences_url": upstream.base_url,
        "notifier_url": upstream.base_url,
        "upstream_timeout": 1.0,
        "request_timeout": 3.0,
        "shutdown_grace": 2.0,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


async def idle_in_transaction(engine: AsyncEngine, application_name: str = APP_NAME) -> int:
    """Connections of ``application_name`` left ``idle in transaction`` in this database."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                "AND state LIKE 'idle in transaction%' AND datname = current_database()"
            ),
            {"name": application_name},
        )
        return int(result.scalar_one())


{%- if cookiecutter.auth == "bearer" %}


@pytest.fixture
async def client(
    app: FastAPI, identity_provider: IdentityProvider
) -> AsyncIterator[httpx2.AsyncClient]:
    # auth=bearer: an admin token (it may act on every user), so the API tests run unchanged;
    # tests/test_auth.py covers who may do what.
    transport = httpx2.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {identity_provider.admin_token()}"}
    async with httpx2.AsyncClient(
        transport=transport, base_url="http://service.test", headers=headers
    ) as http:
{%- else %}


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://service.test") as http:
{%- endif %}
        yield http
