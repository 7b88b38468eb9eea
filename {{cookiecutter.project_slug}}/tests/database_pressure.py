"""Make the real database slow on cue, from the test's side, without a test-only route.

A transaction of the test that holds ``LOCK TABLE users IN ACCESS EXCLUSIVE MODE`` makes every
statement of the service that touches ``users`` wait: ``GET /users/{id}`` then holds its pooled
connection for as long as the test likes, as a slow query or a lock held by a migration would.
The test sees those waits in ``pg_stat_activity``, so it knows when connections are taken
instead of guessing with a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_WAITING_FOR_A_LOCK = text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() ORDER BY pid"
)


@asynccontextmanager
async def users_table_locked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Every statement on ``users`` waits until the block is left (the lock is rolled back)."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            await connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
            yield
        finally:
            await transaction.rollback()


async def backends_waiting_for_a_lock(
    engine: AsyncEngine, count: int, within: float = 10.0
) -> list[int]:
    """Wait until ``count`` server processes wait for a lock in this database; their pids.

    Polled: PostgreSQL has no event for "a backend started waiting".
    """
    async with asyncio.timeout(within), engine.connect() as connection:
        while True:
            pids = list((await connection.execute(_WAITING_FOR_A_LOCK)).scalars())
            await connection.rollback()
            if len(pids) >= count:
                return pids
            await asyncio.sleep(0.02)
