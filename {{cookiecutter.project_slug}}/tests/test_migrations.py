"""The migrations build exactly the schema the models describe, and run both ways."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }}.db.migrate import downgrade_database, upgrade_database
from {{ cookiecutter.package_name }}.schema import metadata

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, metadata))


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    return set(names)


async def test_models_and_migrations_agree(db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as connection:
        differences = await connection.run_sync(_differences)

    assert differences == []


async def test_alembic_command_line_migrates_database_url(
    server_url: str, db_engine: AsyncEngine
) -> None:
    name = "alembic_cli_" + (db_engine.url.database or "").removeprefix("test_")
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = db_engine.url.set(database=name)
    engine = create_async_engine(url)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alembic", "upgrade", "head",
            cwd=PROJECT_ROOT,
            env={**os.environ, "DATABASE_URL": url.render_as_string(hide_password=False)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        tables = await table_names(engine)
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()

    assert process.returncode == 0, output.decode()
    assert {"users", "orders", "alembic_version"} <= tables


# Alembic reads the migration scripts from disk while it runs on the loop's thread: fine once at
# startup, so this test lets it block.
@pytest.mark.allow_blocking
async def test_downgrade_to_base_and_upgrade_again(server_url: str, db_engine: AsyncEngine) -> None:
    # A scratch database, so the tests running in parallel keep their tables.
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    name = "migration_roundtrip_" + db_engine.url.database.removeprefix("test_")  # type: ignore[union-attr]
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_async_engine(db_engine.url.set(database=name))
    try:
        await upgrade_database(engine, "head")
        after_upgrade = await table_names(engine)
        await downgrade_database(engine, "base")
        after_downgrade = await table_names(engine)
        await upgrade_database(engine, "head")
        after_second_upgrade = await table_names(engine)
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()

    tables = {"users", "orders", "idempotency_keys", "outbox"}
    assert tables <= after_upgrade
    assert not tables & after_downgrade
    assert after_second_upgrade == after_upgrade
