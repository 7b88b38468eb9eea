"""Apply the alembic migrations from inside the service (no alembic.ini needed)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import PACKAGE_NAME, Settings
from .embedded import asyncpg_url, start_embedded_postgres


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
