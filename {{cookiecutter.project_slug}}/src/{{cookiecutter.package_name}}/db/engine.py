"""Create the engine with every limit explicit, and the session factory.

Pool: a bounded pool whose waits end (``pool_timeout``), connections checked before use
(``pool_pre_ping``) and replaced before server or proxy idle limits cut them (``pool_recycle``).

Connection: the server enforces ``statement_timeout`` and ``idle_in_transaction_session_timeout``,
which fail a statement cleanly and keep the connection usable; asyncpg's ``command_timeout`` is
only a backstop a little above it, because when it fires the connection is discarded.
``application_name`` makes the service's connections easy to find in ``pg_stat_activity``.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ..settings import PACKAGE_NAME, Settings

BACKSTOP_MARGIN_SECONDS = 1.0


def _milliseconds(seconds: float) -> str:
    return str(int(seconds * 1000))


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_statement_timeout + BACKSTOP_MARGIN_SECONDS,
            "server_settings": {
                "application_name": PACKAGE_NAME,
                "statement_timeout": _milliseconds(settings.db_statement_timeout),
                "idle_in_transaction_session_timeout": _milliseconds(
                    settings.db_idle_in_transaction_timeout
                ),
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit without another query,
    # which in async code would otherwise be an implicit (and failing) lazy load.
    return async_sessionmaker(engine, expire_on_commit=False)
