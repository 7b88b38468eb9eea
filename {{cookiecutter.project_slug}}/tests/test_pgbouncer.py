"""Behind PgBouncer in transaction pooling mode, with ``DB_PGBOUNCER=true``, the service works
under concurrent traffic and keeps its guarantees: the statement and idle-in-transaction timeouts
hold, nothing it sets stays behind on a server connection, and migrations run through it too.

Everything runs against a real PgBouncer with its default settings (``tests/pgbouncer.py``), in
front of the test PostgreSQL; the tests are skipped, naming the package to install, only when
the ``pgbouncer`` binary cannot be found. Timings are compared with the configured timeouts,
never with an absolute speed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import event, make_url, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }} import app as app_module
from {{ cookiecutter.package_name }}.db.engine import (
    WITHOUT_STATEMENT_CACHES,
    LivenessCheck,
    connect_args,
    create_engine,
    set_timeouts_in_every_transaction,
)
from {{ cookiecutter.package_name }}.db.migrate import downgrade_database, upgrade_database
from {{ cookiecutter.package_name }}.db.session import transaction
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import APP_NAME, make_settings, running_app, upstream_settings
from .pgbouncer import INSTALL_HINT, SINGLE, PgBouncer, find_pgbouncer, running_pgbouncer
from .upstream_server import ScriptedUpstream

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATEMENT_TIMEOUT = 0.4  # seconds; asyncpg's backstop (command_timeout) is a second above it
IDLE_TIMEOUT = 0.4
CLIENTS = 24  # concurrent HTTP clients, more than PgBouncer's default_pool_size (20)
ROUNDS = 3  # rounds of seven requests per client
STATEMENT_TIMEOUT_SQLSTATE = "57014"
PROTOCOL_VIOLATION_SQLSTATE = "08P01"


@pytest.fixture(scope="module")
def pgbouncer(
    server_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncer]:
    binary = find_pgbouncer()
    if binary is None:
        pytest.skip(INSTALL_HINT)
    database = make_url(database_url).database
    assert database is not None
    with running_pgbouncer(
        binary, server_url, database, tmp_path_factory.mktemp("pgbouncer")
    ) as bouncer:
        yield bouncer


def bounced_settings(
    pgbouncer: PgBouncer, upstream: ScriptedUpstream | None = None, **overrides: Any
) -> Settings:
    """The service's settings with ``DATABASE_URL`` through PgBouncer and the switch on."""
    values: dict[str, Any] = {
        "db_pgbouncer": True,
        "db_statement_timeout": STATEMENT_TIMEOUT,
        "db_idle_in_transaction_timeout": IDLE_TIMEOUT,
    }
    values.update(overrides)
    if upstream is None:
        return make_settings(pgbouncer.url(), **values)
    return upstream_settings(pgbouncer.url(), upstream, **values)


# --- traffic ---------------------------------------------------------------------------------


async def _call(
    http: httpx2.AsyncClient,
    outcomes: Counter[str],
    method: str,
    path: str,
    expected: int = 200,
    **kw: Any,
) -> httpx2.Response | None:
    """One request; its outcome is "ok" or what went wrong (status, or the exception). A
    summary with a failed section is a failure too."""
    route = re.sub(r"/\d+", "/{id}", path)
    try:
        response = await http.request(method, path, **kw)
    except Exception as error:  # an error that escapes the app is an outcome to count too
        outcomes[f"{method} {route}: {type(error).__name__}"] += 1
        return None
    ok = response.status_code == expected and '"status":"error"' not in response.text
    outcomes["ok" if ok else f"{method} {route}: {response.status_code}"] += 1
    return response


async def one_client(http: httpx2.AsyncClient, index: int, outcomes: Counter[str]) -> None:
    """Writes and reads as one user would, the dashboard's fan-out and the summary included."""
    run = uuid.uuid4().hex[:8]
    body = {"email": f"client-{index}-{run}@example.com", "name": f"Client {index}"}
    created = await _call(http, outcomes, "POST", "/users", 201, json=body)
    if created is None or created.status_code != 201:
        return
    user = f"/users/{created.json()['id']}"
    for round_ in range(ROUNDS):
        order = {"item": f"item-{round_}", "quantity": round_ + 1}
        headers = {"Idempotency-Key": f'"{run}-{index}-{round_}"'} if round_ % 2 else {}
        await _call(http, outcomes, "POST", f"{user}/orders", 201, json=order, headers=headers)
        await _call(http, outcomes, "GET", user)
        await _call(http, outcomes, "GET", f"{user}/orders")
        await _call(http, outcomes, "GET", f"{user}/dashboard")
        await _call(http, outcomes, "GET", f"{user}/summary")
        await _call(http, outcomes, "GET", "/health/ready")
        await _call(http, outcomes, "GET", "/users/999999999", 404)


async def concurrent_traffic(http: httpx2.AsyncClient) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    async with asyncio.TaskGroup() as group:
        for index in range(CLIENTS):
            group.create_task(one_client(http, index, outcomes))
    return outcomes


def traffic_settings(pgbouncer: PgBouncer, upstream: ScriptedUpstream) -> Settings:
    # A pool larger than PgBouncer's default_pool_size (20): PgBouncer multiplexes 24 client
    # connections on its server connections, as it does for several replicas. Admission and
    # the deadlines are opened wide so that nothing is shed or cut on a busy machine: every
    # failure counted is the database's.
    return bounced_settings(
        pgbouncer, upstream,
        db_statement_timeout=5.0, db_pool_size=16, db_max_overflow=8,
        admission_limit=4 * CLIENTS, upstream_timeout=5.0, request_timeout=10.0,
    )  # fmt: skip


async def test_concurrent_traffic_through_pgbouncer_has_no_errors(
    pgbouncer: PgBouncer, upstream: ScriptedUpstream, empty_tables: None, db_engine: AsyncEngine
) -> None:
    async with running_app(traffic_settings(pgbouncer, upstream)) as (http, _):
        outcomes = await concurrent_traffic(http)
    async with db_engine.connect() as connection:
        orders = (await connection.execute(text("SELECT count(*) FROM orders"))).scalar_one()

    assert outcomes == Counter({"ok": CLIENTS * (1 + ROUNDS * 7)})
    assert orders == CLIENTS * ROUNDS


def engine_keeping_prepared_statements(
    settings: Settings, url: str, _liveness: LivenessCheck | None = None
) -> AsyncEngine:
    """The half-done port: timeouts moved out of the startup parameters, caches left on (and
    pre-ping on every checkout, as such a port has)."""
    arguments = {
        key: value for key, value in connect_args(settings).items()
        if key not in WITHOUT_STATEMENT_CACHES
    }  # fmt: skip
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=True,
        connect_args=arguments,
    )
    set_timeouts_in_every_transaction(engine, settings)
    return engine


@pytest.mark.pitfall
async def test_pitfall_cached_prepared_statements_fail_under_concurrent_traffic(
    pgbouncer: PgBouncer,
    upstream: ScriptedUpstream,
    empty_tables: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(app_module, "create_engine", engine_keeping_prepared_statements)
    with caplog.at_level(logging.ERROR):
        async with running_app(traffic_settings(pgbouncer, upstream)) as (http, _):
            outcomes = await concurrent_traffic(http)

    failed = outcomes.total() - outcomes["ok"]
    # asyncpg names each cached statement __asyncpg_stmt_<n>__ on the server connection that
    # prepared it; the next transaction of the same client runs on another server connection.
    causes = "\n".join(
        str(record.exc_info[1]) for record in caplog.records if record.exc_info is not None
    )
    assert failed > 0, outcomes
    assert 'prepared statement "__asyncpg_stmt_' in causes
    assert "does not exist" in causes or "already exists" in causes


# --- timeouts --------------------------------------------------------------------------------


async def _sleep(resources: Resources, path: str, seconds: float) -> None:
    statement, parameters = text("SELECT pg_sleep(:s)"), {"s": seconds}
    if path == "orm-session":
        async with transaction(resources.sessionmaker) as session:
            await session.execute(statement, parameters)
    else:  # as the readiness check queries
        async with resources.engine.connect() as connection:
            await connection.execute(statement, parameters)


@pytest.mark.parametrize("path", ["orm-session", "core-connection"])
async def test_statement_timeout_fires_through_pgbouncer(pgbouncer: PgBouncer, path: str) -> None:
    too_long = 3 * STATEMENT_TIMEOUT  # and still below asyncpg's backstop
    async with running_app(bounced_settings(pgbouncer)) as (_, resources):
        started = time.monotonic()
        with pytest.raises(DBAPIError) as caught:
            await _sleep(resources, path, too_long)
        elapsed = time.monotonic() - started

    assert getattr(caught.value.orig, "sqlstate", None) == STATEMENT_TIMEOUT_SQLSTATE
    assert elapsed < too_long


async def test_every_transaction_through_pgbouncer_carries_the_timeouts_and_the_name(
    pgbouncer: PgBouncer,
) -> None:
    query = text(
        "SELECT current_setting('statement_timeout'), "
        "current_setting('idle_in_transaction_session_timeout'), "
        "current_setting('application_name')"
    )
    async with running_app(bounced_settings(pgbouncer)) as (http, resources):
        ready = await http.get("/health/ready")
        async with transaction(resources.sessionmaker) as session:
            orm = tuple((await session.execute(query)).one())
        async with resources.engine.connect() as connection:
            core = tuple((await connection.execute(query)).one())

    expected = (f"{int(STATEMENT_TIMEOUT * 1000)}ms", f"{int(IDLE_TIMEOUT * 1000)}ms", APP_NAME)
    assert ready.status_code == 200
    assert orm == expected
    assert core == expected


async def _backend_is_gone(db_engine: AsyncEngine, pid: int, within: float) -> bool:
    """Whether the server ended backend ``pid`` within ``within`` seconds."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with db_engine.connect() as connection:
            if (await connection.execute(query, {"pid": pid})).scalar_one() == 0:
                return True
        await asyncio.sleep(0.05)
    return False


async def _stay_idle_in_transaction(
    resources: Resources, db_engine: AsyncEngine, seen: dict[str, float]
) -> None:
    async with transaction(resources.sessionmaker) as session:
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        started = time.monotonic()
        # The transaction now sits idle, as a request stuck between two statements would.
        seen["gone"] = await _backend_is_gone(db_engine, pid, within=10 * IDLE_TIMEOUT)
        seen["after"] = time.monotonic() - started
        await session.execute(text("SELECT 1"))  # fails: its server connection is gone


async def test_idle_in_transaction_timeout_holds_through_pgbouncer(
    pgbouncer: PgBouncer, db_engine: AsyncEngine
) -> None:
    seen: dict[str, float] = {}
    async with running_app(bounced_settings(pgbouncer)) as (_, resources):
        with pytest.raises(DBAPIError):
            await _stay_idle_in_transaction(resources, db_engine, seen)

    assert seen["gone"], "the idle transaction was not ended by the server"
    assert seen["after"] >= IDLE_TIMEOUT / 2


# --- what stays on a server connection -------------------------------------------------------


def _other_application(pgbouncer: PgBouncer) -> AsyncEngine:
    """A client of another application, on the one server connection behind SINGLE."""
    return create_async_engine(
        pgbouncer.url(SINGLE),
        poolclass=pool.NullPool,
        connect_args={**WITHOUT_STATEMENT_CACHES, "server_settings": {"application_name": "other"}},
    )


async def _reset_the_single_server_connection(pgbouncer: PgBouncer) -> None:
    """Back to the server's defaults, whatever an earlier test left there."""
    other = _other_application(pgbouncer)
    try:
        async with other.begin() as connection:
            await connection.exec_driver_sql("RESET ALL")
    finally:
        await other.dispose()


async def _another_client_sees(pgbouncer: PgBouncer) -> tuple[int, str, str]:
    other = _other_application(pgbouncer)
    try:
        async with other.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT pg_backend_pid(), current_setting('statement_timeout'), "
                        "current_setting('idle_in_transaction_session_timeout')"
                    )
                )
            ).one()
    finally:
        await other.dispose()
    return int(row[0]), str(row[1]), str(row[2])


async def _server_defaults(database_url: str) -> tuple[str, str]:
    """What a client that sets nothing gets, straight from the server."""
    plain = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with plain.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT current_setting('statement_timeout'), "
                        "current_setting('idle_in_transaction_session_timeout')"
                    )
                )
            ).one()
    finally:
        await plain.dispose()
    return str(row[0]), str(row[1])


async def _service_transaction_on_single(engine: AsyncEngine) -> int:
    async with engine.begin() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_the_timeouts_do_not_leak_to_the_next_client_of_the_server_connection(
    pgbouncer: PgBouncer, database_url: str
) -> None:
    await _reset_the_single_server_connection(pgbouncer)
    settings = bounced_settings(pgbouncer)
    engine = create_engine(settings, pgbouncer.url(SINGLE))
    try:
        service_pid = await _service_transaction_on_single(engine)
    finally:
        await engine.dispose()
    other_pid, statement_timeout, idle_timeout = await _another_client_sees(pgbouncer)

    assert other_pid == service_pid  # the same server connection, next client
    assert (statement_timeout, idle_timeout) == await _server_defaults(database_url)


@pytest.mark.pitfall
async def test_pitfall_a_session_level_set_stays_behind_for_the_next_client(
    pgbouncer: PgBouncer,
) -> None:
    engine = create_async_engine(pgbouncer.url(SINGLE), connect_args=dict(WITHOUT_STATEMENT_CACHES))

    @event.listens_for(engine.sync_engine, "begin")
    def set_timeout(connection: Connection) -> None:
        connection.exec_driver_sql("SET statement_timeout = '1234ms'")  # no LOCAL

    await _reset_the_single_server_connection(pgbouncer)
    try:
        service_pid = await _service_transaction_on_single(engine)
    finally:
        await engine.dispose()
    other_pid, statement_timeout, _ = await _another_client_sees(pgbouncer)

    assert other_pid == service_pid
    assert statement_timeout == "1234ms"  # another application now runs with our timeout


@pytest.mark.pitfall
async def test_pitfall_without_the_switch_pgbouncer_refuses_the_connection(
    pgbouncer: PgBouncer,
) -> None:
    settings = bounced_settings(pgbouncer, db_pgbouncer=False)
    engine = create_engine(settings, pgbouncer.url())
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    async with running_app(settings) as (http, _):
        ready = await http.get("/health/ready")

    assert getattr(caught.value.orig, "sqlstate", None) == PROTOCOL_VIOLATION_SQLSTATE
    assert "unsupported startup parameter: statement_timeout" in str(caught.value)
    assert ready.status_code == 503


# --- migrations ------------------------------------------------------------------------------


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=PROJECT_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def _version(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        exists = await connection.execute(text("SELECT to_regclass('alembic_version')"))
        if exists.scalar_one() is None:
            return None
        row = await connection.execute(text("SELECT version_num FROM alembic_version"))
        return row.scalar_one_or_none()


@pytest.mark.allow_blocking  # alembic reads the migration scripts from disk, on the loop
async def test_migrations_run_through_pgbouncer(
    pgbouncer: PgBouncer, server_url: str, db_engine: AsyncEngine
) -> None:
    name = "pgbouncer_migrations_" + (db_engine.url.database or "").removeprefix("test_")
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    python_path = [str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH")]
    environment = {
        **os.environ, "DATABASE_URL": pgbouncer.url(name), "DB_PGBOUNCER": "true",
        "ENVIRONMENT": "test", "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
    }  # fmt: skip
    engine = create_engine(bounced_settings(pgbouncer), pgbouncer.url(name))
    try:
        migrate = await _run("-m", APP_NAME, "migrate", env=environment)
        head = await _version(engine)
        await downgrade_database(engine, "base")  # in-process, on the pooled engine
        at_base = await _version(engine)
        alembic = await _run("-m", "alembic", "upgrade", "head", env=environment)
        again = await _version(engine)
        await upgrade_database(engine)  # nothing left to do: reads the version table only
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()

    assert migrate[0] == 0, migrate[1]
    assert alembic[0] == 0, alembic[1]
    assert head is not None
    assert at_base is None
    assert again == head
