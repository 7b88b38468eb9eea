"""The transactional session: commit on success, roll back on failure, close on every path.

Three guarantees, each with a test in ``tests/test_session_dependency.py``:

1. Commit happens *before* the response is sent (``Depends(scope="function")``). With
   FastAPI's default ``"request"`` scope the exit code runs after the response, so a commit that
   fails (a unique or deferred constraint) still returns 201 and the data is silently gone.
2. Any exception, cancellation included, means no commit: the session is closed, which rolls
   the transaction back.
3. The close itself finishes even when the task is being cancelled. A cancelled close leaves the
   connection checked out, ``idle in transaction`` on the server, until garbage collection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


async def close_despite_cancellation(session: AsyncSession) -> None:
    """Close ``session`` to the end, then re-raise a cancellation that arrived meanwhile."""
    closing = asyncio.ensure_future(session.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


@asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One session, one transaction: committed if the block succeeds, rolled back otherwise."""
    session = sessionmaker()
    try:
        yield session
        await session.commit()
    finally:
        # Closing rolls back whatever was not committed and returns the connection to the pool.
        await close_despite_cancellation(session)
