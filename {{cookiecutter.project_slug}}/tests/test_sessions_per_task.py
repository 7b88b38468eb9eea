"""One AsyncSession per task: concurrent work never shares a session.

An ``AsyncSession`` is a unit of work with one connection and one transaction at a time; it has
no locking for callers running at once. The dashboard's fan-out therefore gives each database
source a session of its own (``db/queries.py``), closed when that source is done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.db.engine import create_engine, create_sessionmaker
from {{ cookiecutter.package_name }}.resources import Resources

from .conftest import idle_in_transaction, make_settings, running_app, upstream_settings
from .upstream_server import ScriptedUpstream

Service = tuple[httpx2.AsyncClient, Resources]
REQUESTS = 20
SLEEP = 0.5


class PeakCheckouts:
    """The most connections the engine's pool had checked out at once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.pool: Any = engine.sync_engine.pool
        self.peak = 0

    def __call__(self, *_: object) -> None:
        self.peak = max(self.peak, self.pool.checkedout())


@contextmanager
def peak_checkouts(engine: AsyncEngine) -> Iterator[PeakCheckouts]:
    watcher = PeakCheckouts(engine)
    event.listen(watcher.pool, "checkout", watcher)
    try:
        yield watcher
    finally:
        event.remove(watcher.pool, "checkout", watcher)


@pytest.fixture
async def roomy_service(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> AsyncIterator[Service]:
    """The app on the scripted upstream, with deadlines far from what a burst of requests on a
    busy machine needs: this is about sessions, and a 504 would only hide what they did."""
    settings = upstream_settings(
        database_url, upstream, upstream_timeout=10.0, request_timeout=20.0
    )
    async with running_app(settings) as running:
        yield running


async def test_concurrent_dashboards_each_source_with_its_own_session(
    roomy_service: Service, db_engine: AsyncEngine
) -> None:
    client, resources = roomy_service
    created = await client.post("/users", json={"email": "many@example.com", "name": "Many"})
    user_id = created.json()["id"]
    await client.post(f"/users/{user_id}/orders", json={"item": "cup", "quantity": 2})
    # The order's notification goes out in the background, with a session of its own to claim
    # it and one to record it: let it finish, so that the pool below holds the dashboards' only.
    async with asyncio.timeout(5):
        while resources.supervisor.pending:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as group:
        requests = [
            group.create_task(client.get(f"/users/{user_id}/dashboard")) for _ in range(REQUESTS)
        ]

    assert [request.result().status_code for request in requests] == [200] * REQUESTS
    assert all(len(request.result().json()["orders"]) == 1 for request in requests)
    # Every one of those sessions was closed: nothing held, nothing left open.
    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await idle_in_transaction(db_engine) == 0


async def test_one_dashboard_holds_a_connection_per_database_source(
    roomy_service: Service,
) -> None:
    client, resources = roomy_service
    created = await client.post("/users", json={"email": "one@example.com", "name": "One"})
    user_id = created.json()["id"]

    # Two connections open in the pool first: a source that had to open one would still be
    # connecting when the other finished, and the two would not overlap for reasons of timing.
    async with resources.engine.connect() as first, resources.engine.connect() as second:
        await first.execute(text("SELECT 1"))
        await second.execute(text("SELECT 1"))
    # One request alone, so that two connections at once can only come from its two database
    # sources running side by side, each in a session of its own.
    with peak_checkouts(resources.engine) as watcher:
        response = await client.get(f"/users/{user_id}/dashboard")

    assert response.status_code == 200
    assert watcher.peak == 2
    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_session_per_task_lets_statements_overlap(db_engine: AsyncEngine) -> None:
    sessionmaker = create_sessionmaker(db_engine)

    async def sleep_in_own_session() -> None:
        async with sessionmaker() as session:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": SLEEP})

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        group.create_task(sleep_in_own_session())
        group.create_task(sleep_in_own_session())
    elapsed = time.monotonic() - started

    assert elapsed < 2 * SLEEP  # side by side; one after the other takes at least 2 * SLEEP
    assert db_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.pitfall
async def test_pitfall_one_session_shared_by_concurrent_tasks_fails(database_url: str) -> None:
    # A pool with no connection yet: the first statement's checkout has to connect (an await),
    # which is when the second task finds the session busy. A pooled connection would be handed
    # out without a pause, and the two statements would queue instead (the next pitfall).
    engine = create_engine(make_settings(database_url), database_url)
    session = create_sessionmaker(engine)()

    async def two_statements_at_once() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(session.execute(text("SELECT pg_sleep(0.1)")))
            group.create_task(session.execute(text("SELECT pg_sleep(0.1)")))

    try:
        with pytest.raises(ExceptionGroup) as caught:
            await two_statements_at_once()
    finally:
        await session.close()
        checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
        await engine.dispose()

    # The second task found the session halfway through opening its connection for the first.
    assert caught.group_contains(exc.InvalidRequestError, match="concurrent operations")
    assert checked_out == 0


@pytest.mark.pitfall
async def test_pitfall_a_shared_session_that_does_not_fail_runs_one_statement_at_a_time(
    db_engine: AsyncEngine,
) -> None:
    session = create_sessionmaker(db_engine)()
    try:
        # Once the session holds a connection, the driver adapter queues statements behind a
        # lock instead of failing: no error, and no concurrency either.
        await session.execute(text("SELECT 1"))
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            group.create_task(session.execute(text("SELECT pg_sleep(:s)"), {"s": SLEEP}))
            group.create_task(session.execute(text("SELECT pg_sleep(:s)"), {"s": SLEEP}))
        elapsed = time.monotonic() - started
    finally:
        await session.close()

    assert elapsed >= 2 * SLEEP
    assert db_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
