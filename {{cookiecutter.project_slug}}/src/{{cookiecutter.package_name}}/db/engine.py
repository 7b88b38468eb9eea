"""Create the engine with every limit explicit, and the session factory.

Pool: a bounded pool whose waits end (``pool_timeout``), connections replaced before server or
proxy idle limits cut them (``pool_recycle``), and checked before use only when they sat idle for
``PING_AFTER_IDLE_SECONDS``: SQLAlchemy's ``pool_pre_ping`` would spend a round trip (three,
inside its own BEGIN and ROLLBACK) on every checkout, which under load is most of a short read's
cost, and a busy connection was in use a moment ago. A connection that dies in use anyway is
reported as a disconnect: SQLAlchemy then replaces every connection of the pool that is older,
and reads run once more (``db/reads.py``).

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
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import InvalidatePoolError
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
# A connection idle this long is pinged before use. Under load no connection waits that long in
# the pool, so the busy path pays nothing; after a quiet spell (when a failover or a proxy's
# idle timeout may have cut it) the ping costs one round trip that nobody is waiting behind.
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "returned_at"


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


class LivenessCheck:
    """Ping a pooled connection at checkout when it sat idle for ``idle_seconds`` or more
    (``PING_AFTER_IDLE_SECONDS`` by default), or when it was returned before a connection was
    last found lost (``connection_lost``). A ping that finds the server gone makes SQLAlchemy
    replace that connection and every older one of the pool, as ``pool_pre_ping`` does, and
    hand out a new one. ``install`` it on one engine."""

    def __init__(self, idle_seconds: float | None = None) -> None:
        self.idle_seconds = PING_AFTER_IDLE_SECONDS if idle_seconds is None else idle_seconds
        self._lost_at = float("-inf")
        self._dialect: Dialect | None = None

    def connection_lost(self) -> None:
        """A connection died in use (one SQLAlchemy did not see): suspect the older ones."""
        self._lost_at = time.monotonic()

    def install(self, engine: AsyncEngine) -> None:
        self._dialect = engine.sync_engine.dialect
        event.listen(engine.sync_engine.pool, "checkin", self._remember_return)
        event.listen(engine.sync_engine.pool, "checkout", self._ping_if_suspect)

    def _remember_return(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    def _ping_if_suspect(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any
    ) -> None:
        returned_at = record.info.pop(_RETURNED_AT, None)
        if returned_at is None:
            return  # a new connection
        if time.monotonic() - returned_at < self.idle_seconds and returned_at > self._lost_at:
            return  # in use a moment ago, and nothing was lost since
        dialect = self._dialect
        if dialect is None:
            raise RuntimeError("LivenessCheck.install() was not called")
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if not dialect.is_disconnect(error, dbapi_connection, None):
                raise
            # The pool discards every connection older than this one and checks out anew.
            raise InvalidatePoolError from error


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


def create_engine(
    settings: Settings, url: str, liveness: LivenessCheck | None = None
) -> AsyncEngine:
    """The service's engine; ``liveness`` checks its idle and suspect connections (a new
    ``LivenessCheck`` when not given: pass one to tell it about lost connections)."""
    engine = create_async_engine(
        url,
        poolclass=MeasuredPool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        # No pool_pre_ping: see LivenessCheck and the module docstring.
        # A failed statement's error names its SQL, not its values: emails and names stay
        # out of the log (and out of whatever collects the log).
        hide_parameters=True,
        connect_args=connect_args(settings),
    )
    (liveness or LivenessCheck()).install(engine)
    if settings.db_pgbouncer:
        set_timeouts_in_every_transaction(engine, settings)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit without another query,
    # which in async code would otherwise be an implicit (and failing) lazy load.
    return async_sessionmaker(engine, expire_on_commit=False)
