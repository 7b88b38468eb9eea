"""Create the engine with every limit explicit, and the session factory.

Pool: a bounded pool whose waits end (``pool_timeout``), connections checked before use
(``pool_pre_ping``) and replaced before server or proxy idle limits cut them (``pool_recycle``).

Connection: the server enforces ``statement_timeout`` and ``idle_in_transaction_session_timeout``,
which fail a statement cleanly and keep the connection usable; asyncpg's ``command_timeout`` is
only a backstop a little above it, because when it fires the connection is discarded.
``application_name`` makes the service's connections easy to find in ``pg_stat_activity``.

Behind PgBouncer in transaction pooling mode (``DB_PGBOUNCER=true``) each transaction of one
pooled connection may run on another server connection, and PgBouncer refuses the two timeouts
as connection parameters. So the engine keeps no prepared statements (asyncpg's and SQLAlchemy's
caches are off, and asyncpg >= 0.31 then sends unnamed statements), and sets both timeouts with
``SET LOCAL`` at the start of every transaction, where they hold until its end and never leak to
the server connection's next client. ``application_name`` is a parameter PgBouncer forwards.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from ..settings import PACKAGE_NAME, Settings

BACKSTOP_MARGIN_SECONDS = 1.0


def _milliseconds(seconds: float) -> str:
    return str(int(seconds * 1000))


# With transaction pooling a statement prepared on one server connection is missing on the next
# (or its name is taken there): no prepared statement may outlive its transaction.
WITHOUT_STATEMENT_CACHES: dict[str, Any] = {
    "statement_cache_size": 0,  # asyncpg's own cache
    "prepared_statement_cache_size": 0,  # SQLAlchemy's asyncpg dialect's cache
}


def server_timeouts(settings: Settings) -> dict[str, str]:
    """The server-side timeouts of every transaction, in PostgreSQL's milliseconds."""
    return {
        "statement_timeout": _milliseconds(settings.db_statement_timeout),
        "idle_in_transaction_session_timeout": _milliseconds(
            settings.db_idle_in_transaction_timeout
        ),
    }


def connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg's arguments: the timeouts travel as connection parameters, except behind
    PgBouncer, which refuses them ("unsupported startup parameter")."""
    server_settings = {"application_name": PACKAGE_NAME}
    arguments: dict[str, Any] = {
        "timeout": settings.db_connect_timeout,
        "command_timeout": settings.db_statement_timeout + BACKSTOP_MARGIN_SECONDS,
        "server_settings": server_settings,
    }
    if settings.db_pgbouncer:
        arguments.update(WITHOUT_STATEMENT_CACHES)
    else:
        server_settings.update(server_timeouts(settings))
    return arguments


def set_timeouts_in_every_transaction(engine: AsyncEngine, settings: Settings) -> None:
    """Start every transaction of ``engine`` (ORM sessions, Core connections, migrations) with
    its timeouts, local to it: ``set_config(..., true)`` is ``SET LOCAL``, both in one statement.
    """
    timeouts = server_timeouts(settings).items()
    assignments = ", ".join(f"set_config('{name}', '{value}', true)" for name, value in timeouts)
    statement = f"SELECT {assignments}"

    def set_local_timeouts(connection: Connection) -> None:
        # The first statement of the transaction: the driver sends BEGIN just before it.
        connection.exec_driver_sql(statement)

    event.listen(engine.sync_engine, "begin", set_local_timeouts)


class MeasuredPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's async queue pool, counting what its own API does not tell: how many
    checkouts found every connection taken and had to wait, and how many of those waits ran out
    (``DB_POOL_TIMEOUT``). The counts are for metrics; the pool behaves exactly as its parent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waits_total = 0
        self.timeouts_total = 0

    def _do_get(self) -> ConnectionPoolEntry:
        if 0 <= self._max_overflow <= self._overflow and self._pool.empty():
            self.waits_total += 1
        try:
            return super()._do_get()
        except PoolTimeoutError:
            self.timeouts_total += 1
            raise


# SQLAlchemy names a pool's logger after its class and keeps its own loggers at WARNING; a
# subclass defined here logs under this package instead, and would print "Pool disposed" and
# "Pool recreating" at every shutdown. Keep it as quiet as SQLAlchemy's own pool.
logging.getLogger(f"{MeasuredPool.__module__}.{MeasuredPool.__name__}").setLevel(logging.WARNING)


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    engine = create_async_engine(
        url,
        poolclass=MeasuredPool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=True,
        # A failed statement's error names its SQL, not its values: emails and names stay
        # out of the log (and out of whatever collects the log).
        hide_parameters=True,
        connect_args=connect_args(settings),
    )
    if settings.db_pgbouncer:
        set_timeouts_in_every_transaction(engine, settings)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit without another query,
    # which in async code would otherwise be an implicit (and failing) lazy load.
    return async_sessionmaker(engine, expire_on_commit=False)
