"""Apply the alembic migrations from inside the service (no alembic.ini needed).

Several processes may migrate one database at once: replicas that each migrate at start, or two
deploys' migration jobs. Without coordination both see the same old revision, both run the same
``CREATE TABLE``, and the second fails on the first's table. ``lock_migrations`` takes a
PostgreSQL advisory lock for the migration's transaction: the others wait, then find the schema
at head and do nothing. A transaction-level lock (``pg_advisory_xact_lock``) is released by the
commit or rollback, so a crashed migrator cannot leave it held, and it works through PgBouncer in
transaction pooling mode, where a session-level lock would land on a random server connection.
"""

from __future__ import annotations

import zlib

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import PACKAGE_NAME, Settings
from .embedded import asyncpg_url, start_embedded_postgres

# One 32-bit key per service, so that two services sharing a database do not wait on each other.
MIGRATION_LOCK_KEY = zlib.crc32(f"{PACKAGE_NAME}:migrations".encode())


def lock_migrations(connection: Connection) -> None:
    """Wait until no other process migrates this database; hold that until the transaction ends."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", f"{PACKAGE_NAME}:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate to ``revision`` on one of ``engine``'s connections; safe inside a running loop."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)


async def downgrade_database(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_downgrade, revision)


def database_url_for_cli() -> str:
    """``DATABASE_URL``, or the embedded server's URL outside production (for ``alembic``)."""
    settings = Settings()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return asyncpg_url(start_embedded_postgres(settings.embedded_postgres_dir))
