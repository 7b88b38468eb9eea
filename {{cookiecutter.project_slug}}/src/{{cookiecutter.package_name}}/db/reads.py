"""Reads that need no transaction: one statement, one round trip, on the pool's connections.

A read of one row through the ORM session costs six round trips: the pre-ping (inside a
``BEGIN`` and ``ROLLBACK`` of its own), ``BEGIN``, the ``SELECT`` and ``COMMIT``, plus the
session's identity map and unit of work, for a statement that sees one consistent snapshot on
its own anyway. ``Reader`` runs the statement on a pooled connection outside any transaction:
one exchange with the server.

SQLAlchemy owns the pool: the connection is checked out through the engine, so the pool's size,
its wait (``DB_POOL_TIMEOUT``), its recycling and the ping of idle connections
(``LivenessCheck`` in ``engine.py``) all apply, and the connection goes back through SQLAlchemy's
reset. The statement itself runs on the driver's connection (asyncpg, which prepares it once per
connection and caches it): SQLAlchemy's execution layer (compiled-statement cache lookup,
execution context, result objects) costs about as much CPU as asyncpg's whole round trip, and a
fixed SQL string of one row needs none of it. The price is that SQLAlchemy does not see the
statement, so this module does what it would have done:

- A failure the server reports (a statement timeout, a value it refuses) is asyncpg's
  ``PostgresError``, with its SQLSTATE; ``errors.py`` maps it as it maps SQLAlchemy's wrapped one.
- A lost connection (a database restart or failover, a proxy that cut it) is invalidated, so
  it never returns to the pool; every connection returned before it is pinged at its next
  checkout (``LivenessCheck.connection_lost``), and the read runs once more. A read is safe to
  repeat. If it fails again, ``ConnectionLostError`` is raised (a 503). Writes are not run
  again anywhere: whether a lost ``COMMIT`` landed cannot be known, and the idempotency keys
  cover the client's retry.

Where SQLAlchemy must see every statement, the reader runs it through SQLAlchemy instead
(``exec_driver_sql``), at SQLAlchemy's cost: behind PgBouncer (``DB_PGBOUNCER=true``) the
timeouts exist only inside a transaction (``SET LOCAL``) and prepared statements must not
outlive it; and with tracing on, SQLAlchemy's instrumentation records each statement as a span.
The server's ``statement_timeout`` bounds the statement either way.
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .engine import LivenessCheck


class ConnectionLostError(ConnectionError):
    """The read lost its connection twice in a row: the database is not reachable now."""


class Reader:
    """Run read-only statements (asyncpg's SQL, ``$1`` placeholders) outside any transaction.

    ``through_sqlalchemy``: run them with SQLAlchemy's ``exec_driver_sql`` instead, inside a
    transaction when ``in_transaction`` (PgBouncer). See the module docstring for when.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        liveness: LivenessCheck,
        *,
        through_sqlalchemy: bool = False,
        in_transaction: bool = False,
    ) -> None:
        self._engine = engine
        self._liveness = liveness
        self._through_sqlalchemy = through_sqlalchemy or in_transaction
        self._in_transaction = in_transaction

    async def fetch_one(self, sql: str, *arguments: object) -> dict[str, Any] | None:
        """The statement's first row as a dict, or None."""
        if self._through_sqlalchemy:
            return await self._fetch_one_through_sqlalchemy(sql, arguments)
        try:
            return await self._fetch_one(sql, arguments)
        except ConnectionLostError:
            return await self._fetch_one(sql, arguments)

    async def _fetch_one(self, sql: str, arguments: tuple[object, ...]) -> dict[str, Any] | None:
        async with self._engine.connect() as connection:
            adapted = await connection.get_raw_connection()
            driver = cast("asyncpg.Connection[asyncpg.Record]", adapted.driver_connection)
            try:
                record = await driver.fetchrow(sql, *arguments)
            except Exception as error:
                # Lost: whatever the error says (a reset socket, "connection is closed", or the
                # server's own goodbye, 57P01, read as the answer), the connection is closed.
                if not driver.is_closed():
                    raise  # the server's answer, or the backstop's TimeoutError
                await self._lost(connection, error)
                raise ConnectionLostError("the database connection was lost") from error
        return None if record is None else dict(record)

    async def _lost(self, connection: AsyncConnection, error: BaseException) -> None:
        # Not back to the pool; and the pool's older connections are suspect until pinged.
        self._liveness.connection_lost()
        await connection.invalidate(error)

    async def _fetch_one_through_sqlalchemy(
        self, sql: str, arguments: tuple[object, ...]
    ) -> dict[str, Any] | None:
        try:
            return await self._exec_driver_sql(sql, arguments)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        # SQLAlchemy saw the disconnect: it has replaced that connection and every older one.
        return await self._exec_driver_sql(sql, arguments)

    async def _exec_driver_sql(
        self, sql: str, arguments: tuple[object, ...]
    ) -> dict[str, Any] | None:
        if self._in_transaction:
            # The transaction of PgBouncer mode: its "begin" event sets the timeouts.
            async with self._engine.begin() as connection:
                result = await connection.exec_driver_sql(sql, arguments)
                row = result.mappings().first()
        else:
            async with self._engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                result = await connection.exec_driver_sql(sql, arguments)
                row = result.mappings().first()
        return None if row is None else dict(row)
