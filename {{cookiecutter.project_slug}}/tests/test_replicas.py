"""Two replicas of the service on one database: what must hold across processes.

Each guarantee below lives in the database, not in a process, so it holds for any number of
replicas: an ``Idempotency-Key`` (a row with a unique key, test_idempotency.py for one process),
each notification delivered once (``FOR UPDATE SKIP LOCKED`` claims, proven with two real
replicas in ``test_outbox_process.py::test_two_replicas_send_each_notification_exactly_once``),
and migrations applied once however many processes run them at the same moment (an advisory
lock, ``db/migrate.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .service_process import running_service
from .upstream_server import ScriptedUpstream

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ORDER = {"item": "lamp", "quantity": 1}


@asynccontextmanager
async def fresh_database(server_url: str, db_engine: AsyncEngine) -> AsyncIterator[URL]:
    """An empty database of its own (the other tests' tables stay untouched)."""
    name = f"replicas_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield db_engine.url.set(database=name)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def versions(url: URL) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def test_an_idempotency_key_holds_across_two_replicas(
    database_url: str, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    environment = {
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "PREFERENCES_URL": upstream.base_url,
        "NOTIFIER_URL": upstream.base_url,
    }
    headers = {"Idempotency-Key": '"replicated-order-1"'}
    async with (
        running_service(environment) as first,
        running_service(environment) as second,
        first.client(timeout=10) as to_first,
        second.client(timeout=10) as to_second,
    ):
        created = await to_first.post("/users", json={"email": "rep@example.com", "name": "R"})
        path = f"/users/{created.json()['id']}/orders"
        # The same retry reaches both replicas at once (a client retrying through a balancer)...
        together = await asyncio.gather(
            *(client.post(path, json=ORDER, headers=headers) for client in (to_first, to_second))
        )
        # ...and later each replica again.
        later = [
            await client.post(path, json=ORDER, headers=headers) for client in (to_first, to_second)
        ]
    statuses = [answer.status_code for answer in together]
    assert set(statuses) <= {201, 409}, statuses
    assert 201 in statuses
    assert [answer.status_code for answer in later] == [201, 201]
    ids = {answer.json()["id"] for answer in [*together, *later] if answer.status_code == 201}
    assert len(ids) == 1
    async with db_engine.connect() as connection:
        orders = await connection.scalar(text("SELECT count(*) FROM orders"))
    assert orders == 1


# The naive migrator: the same command with the advisory lock taken out.
WITHOUT_LOCK = (
    "import sys; from {{ cookiecutter.package_name }}.db import migrate; "
    "migrate.lock_migrations = lambda connection: None; "
    "from {{ cookiecutter.package_name }}.__main__ import main; sys.exit(main(['migrate']))"
)
WITH_LOCK = ("-m", "{{ cookiecutter.package_name }}", "migrate")


async def waiting_on_locks(url: URL) -> int:
    """How many migrator sessions wait on a lock right now (read from pg_stat_activity)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = :app AND wait_event_type = 'Lock'"
                ),
                {"app": "{{ cookiecutter.package_name }}"},
            )
            return int(count or 0)
    finally:
        await engine.dispose()


async def race_two_migrators(url: URL, command: tuple[str, ...]) -> list[tuple[int, str]]:
    """Run two migrators on a fresh database so that their work truly overlaps.

    Processes start a second apart or so, and a migration takes a fraction of that: left alone
    they would run one after the other and prove nothing. So the test holds an uncommitted
    ``CREATE TABLE users`` (the first migration's table) until both migrators are stuck on a
    lock, then rolls it back: from that moment they race exactly as two replicas starting
    together do.
    """
    blocker_engine = create_async_engine(url)
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "PYTHONPATH": str(PROJECT_ROOT / "src"),
    }
    try:
        async with blocker_engine.connect() as blocker:
            await blocker.execute(text("CREATE TABLE users (id bigint)"))  # not committed
            processes = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    *command,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                for _ in range(2)
            ]
            async with asyncio.timeout(60):
                while True:
                    if await waiting_on_locks(url) >= 2:
                        break
                    await asyncio.sleep(0.05)
            await blocker.rollback()
        async with asyncio.timeout(60):
            outputs = await asyncio.gather(*(process.communicate() for process in processes))
    finally:
        await blocker_engine.dispose()
    return [
        (process.returncode or 0, output.decode())
        for process, (output, _) in zip(processes, outputs, strict=True)
    ]


async def test_two_concurrent_migrate_commands_apply_the_schema_once(
    server_url: str, db_engine: AsyncEngine
) -> None:
    async with fresh_database(server_url, db_engine) as url:
        results = await race_two_migrators(url, WITH_LOCK)
        at = await versions(url)
    assert [code for code, _ in results] == [0, 0], results
    assert len(at) == 1


@pytest.mark.pitfall
async def test_pitfall_without_the_lock_one_of_two_concurrent_migrations_fails(
    server_url: str, db_engine: AsyncEngine
) -> None:
    """Both migrators read "no revision yet" and create the same tables: the second one's
    CREATE waits for the first's transaction, then fails on the first's table (a replica that
    migrates at start crashes; a deploy's migration job fails)."""
    async with fresh_database(server_url, db_engine) as url:
        results = await race_two_migrators(url, ("-c", WITHOUT_LOCK))
    failed = [output for code, output in results if code != 0]
    assert len(failed) == 1, results
    assert "already exists" in failed[0] or "duplicate key" in failed[0], failed[0]
