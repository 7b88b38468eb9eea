"""Close an async generator you stop early: ``async with contextlib.aclosing(gen) as rows``.

An async generator that holds something (a pooled connection, a lock, a server-side cursor, an
open file) gives it back in its ``finally``. That ``finally`` runs when the generator is
exhausted or closed. Leave an ``async for`` early (``break``, ``return``, an exception) and the
generator is neither: it is merely abandoned. A sync generator would be closed at once by
garbage collection; an async one cannot be, because closing it needs awaits. So the loop's
finalizer hook schedules ``aclose()`` as a task of its own, which runs later, outside the
caller's task (its errors reach no one), or never, if something still refers to the generator
or the loop closes first without ``shutdown_asyncgens``. Until then the resource stays held.

``aclosing`` awaits ``aclose()`` when the block ends, in the caller's task, on every path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest


class Connection:
    """A pool's only connection: whoever holds the lock has it; everyone else waits."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.released_by: asyncio.Task[object] | None = None

    @property
    def held(self) -> bool:
        return self.lock.locked()


async def rows(connection: Connection, count: int = 10) -> AsyncGenerator[int, None]:
    """Stream rows, holding the connection for as long as the stream is open."""
    async with connection.lock:
        try:
            for row in range(count):
                await asyncio.sleep(0)  # a fetch from the server
                yield row
        finally:
            connection.released_by = asyncio.current_task()


async def test_aclosing_runs_the_generators_cleanup_as_soon_as_the_loop_is_left() -> None:
    connection = Connection()
    async with aclosing(rows(connection)) as stream:
        async for row in stream:
            if row == 2:
                break  # found what we needed; the other rows are not wanted
        assert connection.held  # (the block is not over yet)

    # The generator's cleanup has run, at the end of the block and in this very task.
    assert not connection.held
    assert connection.released_by is asyncio.current_task()


@pytest.mark.pitfall
async def test_pitfall_an_abandoned_async_generator_cleans_up_late_or_never() -> None:
    connection = Connection()
    async for row in rows(connection):
        if row == 2:
            break

    # The loop is left, the generator unreachable: and still the connection is taken.
    assert connection.held
    assert connection.released_by is None
    # It is returned only when the loop's finalizer gets round to closing the generator, in a
    # task of its own; until then everyone else who needs it waits.
    async with asyncio.timeout(5), connection.lock:
        pass
    assert connection.released_by is not None
    assert connection.released_by is not asyncio.current_task()
