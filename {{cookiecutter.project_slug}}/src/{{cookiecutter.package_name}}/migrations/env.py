"""Alembic environment, async.

Two ways in:
- the service (``python -m {{ cookiecutter.package_name }} migrate``, startup in development,
  the tests) passes an open connection in ``config.attributes["connection"]``; this works while
  an event loop is already running, because nothing here starts one;
- the ``alembic`` command line passes nothing: this file then opens its own async engine on
  ``DATABASE_URL`` and runs with ``asyncio.run``.

All of a run is one transaction (PostgreSQL's DDL is transactional, the version table included),
so it works through PgBouncer in transaction pooling mode too; with ``DB_PGBOUNCER=true`` the
command line's engine keeps no prepared statements, like the service's.
"""

from __future__ import annotations

import asyncio

from alembic import context
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db.engine import WITHOUT_STATEMENT_CACHES
from {{ cookiecutter.package_name }}.db.migrate import database_url_for_cli, lock_migrations
from {{ cookiecutter.package_name }}.schema import metadata

target_metadata = metadata


class PgBouncerSwitch(BaseSettings):
    """``DB_PGBOUNCER`` alone, read as the service reads it: the command line needs no other
    setting when alembic.ini names the database."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    db_pgbouncer: bool = False


def run_with_connection(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        # Before alembic reads the current revision: a second migrator waits here, then reads
        # the revision the first one committed (see db/migrate.py).
        lock_migrations(connection)
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    caches = WITHOUT_STATEMENT_CACHES if PgBouncerSwitch().db_pgbouncer else {}
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=caches)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with_connection)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run against a database")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with_connection(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        url = database_url_for_cli()
    asyncio.run(run_with_own_engine(url))


main()
