"""Reads that need no transaction: one statement, one round trip, on the pool's connections.

A read of one row through the ORM session costs four round trips: the pre-ping, ``BEGIN``, the
``SELECT`` and the ``ROLLBACK`` (or ``COMMIT``) at the end, plus the session's identity map and
unit of work, for a statement that sees one consistent snapshot on its own anyway. ``Reader``
runs a Core statement on a connection in ``AUTOCOMMIT`` mode instead: no ``BEGIN``, nothing to
end. SQLAlchemy still owns the pool and its limits, compiles and caches the statement, wraps
driver errors (so the error mapping and ``hide_parameters`` apply) and sees disconnects.

The server's ``statement_timeout`` bounds the statement (a connection parameter, see
``engine.py``). Behind PgBouncer (``DB_PGBOUNCER=true``) the timeouts can only be set with
``SET LOCAL`` inside a transaction, so there the reader opens one, and a read costs what it
did before.

A read is safe to repeat, so a read that finds its connection dead (a database restart or
failover, a proxy that cut it) is run once more: SQLAlchemy has by then replaced that connection
and every older one of the pool, so the caller does not see the failure. Writes are not retried
here: whether a lost ``COMMIT`` landed is unknown, and the idempotency keys cover the client's
retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable


class Reader:
    """Run read-only statements outside any transaction (inside one behind PgBouncer)."""

    def __init__(self, engine: AsyncEngine, *, needs_transaction: bool = False) -> None:
        self._engine = engine
        self._needs_transaction = needs_transaction

    async def one_or_none(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        """The statement's only row, or None; run once more if the connection was lost."""
        try:
            return await self._one_or_none(statement, parameters)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        return await self._one_or_none(statement, parameters)

    async def _one_or_none(
        self, statement: Executable, parameters: Mapping[str, Any] | None
    ) -> Row[Any] | None:
        if self._needs_transaction:
            # The transaction of PgBouncer mode: its "begin" event sets the timeouts.
            async with self._engine.begin() as connection:
                return (await connection.execute(statement, parameters)).one_or_none()
        async with self._engine.connect() as connection:
            # Switched at checkout and back at return; for asyncpg both are attribute changes,
            # no round trip. (A copy of the engine with the option costs more per checkout.)
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return (await connection.execute(statement, parameters)).one_or_none()
