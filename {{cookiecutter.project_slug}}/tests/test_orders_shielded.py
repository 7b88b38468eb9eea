"""An order is written shielded: once started it lands, whatever happens to the request.

The write is made slow on purpose, and deterministically, with a real row lock: a connection of
the test holds ``SELECT ... FOR UPDATE`` on the user's row, and inserting an order needs a
``FOR KEY SHARE`` lock on that same row (PostgreSQL takes it to check the foreign key), so the
insert waits until the test commits. Meanwhile the request's deadline expires (504), or the
service shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from {{ cookiecutter.package_name }}.api.deps import ResourcesDep
from {{ cookiecutter.package_name }}.api.schemas import OrderCreate, OrderOut, UserIdPath
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.queries import insert_order
from {{ cookiecutter.package_name }}.db.session import transaction
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings, resources_of, running_app
from .service_process import admin_headers
from .upstream_server import ScriptedUpstream

BACKGROUND_LOGGER = "{{ cookiecutter.package_name }}.background"
OUTBOX_LOGGER = "{{ cookiecutter.package_name }}.outbox"
REQUEST_TIMEOUT = 0.5
ORDER = {"item": "lamp", "quantity": 1}


class RowLock:
    """A ``FOR UPDATE`` lock on one user row, held by a connection of the test."""

    def __init__(self, connection: AsyncConnection, pid: int) -> None:
        self.connection = connection
        self.pid = pid  # the backend holding the lock, the one the app's insert waits for
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.connection.commit()

    async def release_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.release()


@asynccontextmanager
async def row_lock(engine: AsyncEngine, user_id: int) -> AsyncIterator[RowLock]:
    async with engine.connect() as connection:
        pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await connection.execute(
            text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id}
        )
        lock = RowLock(connection, pid)
        try:
            yield lock
        finally:
            await lock.release()


async def waiting_on(engine: AsyncEngine, lock: RowLock) -> int:
    """How many backends the lock blocks right now: 1 while the app's insert waits for it."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": lock.pid},
        )
        return int(result.scalar_one())


async def order_ids(engine: AsyncEngine, user_id: int) -> list[int]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT id FROM orders WHERE user_id = :id ORDER BY id"), {"id": user_id}
        )
        return [int(order_id) for order_id in result.scalars()]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> bool:
    """Poll ``check`` until it is true or ``within`` seconds have passed; say which.

    Database state has no event to wait on, hence the polling.
    """
    give_up = time.monotonic() + within
    while not await check():
        if time.monotonic() > give_up:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
async def buyer(db_engine: AsyncEngine, empty_tables: None) -> int:
    """A user, inserted directly: the apps under test have a deadline too short to spare."""
    async with db_engine.begin() as connection:
        result = await connection.execute(
            text("INSERT INTO users (email, name) VALUES ('buyer@example.com', 'B') RETURNING id")
        )
        return int(result.scalar_one())


def add_unshielded_route(app: FastAPI) -> None:
    @app.post("/t/users/{user_id}/orders-unshielded", status_code=status.HTTP_201_CREATED)
    async def create_order_unshielded(
        body: OrderCreate, user_id: UserIdPath, resources: ResourcesDep
    ) -> OrderOut:
        # The naive version: the same write, but in the request's own task, so the request's
        # cancellation is the write's cancellation.
        async with transaction(resources.sessionmaker) as session:
            order = await insert_order(session, user_id, body.item, body.quantity)
        return OrderOut.model_validate(order)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[tuple[httpx2.AsyncClient, Resources]]:
    async with LifespanManager(app) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://service.test", headers=admin_headers()
        ) as http:
            yield http, resources_of(manager)


SettingsWithGrace = Callable[[float], Settings]


@pytest.fixture
def settings_with_grace(database_url: str, upstream: ScriptedUpstream) -> SettingsWithGrace:
    """Settings with a short request deadline, the scripted upstream, and the given grace."""

    def build(grace: float) -> Settings:
        return make_settings(
            database_url,
            preferences_url=upstream.base_url,
            notifier_url=upstream.base_url,
            request_timeout=REQUEST_TIMEOUT,
            upstream_timeout=2.0,
            shutdown_grace=grace,
        )

    return build


async def post_until_deadline(client: httpx2.AsyncClient, path: str) -> httpx2.Response:
    await client.get("/health/ready")  # open a pooled connection first: the deadline is short
    started = time.monotonic()
    response = await client.post(path, json=ORDER)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert elapsed < REQUEST_TIMEOUT + 1.0
    return response


async def test_an_order_lands_and_is_notified_after_its_request_timed_out(
    settings_with_grace: SettingsWithGrace,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    buyer: int,
) -> None:
    async with (
        running_app(settings_with_grace(3.0)) as (client, _),
        row_lock(db_engine, buyer) as lock,
    ):
        await post_until_deadline(client, f"/users/{buyer}/orders")

        # The client was answered and the request is over, but the write goes on: it is still
        # waiting for the lock, and nothing has been written yet.
        assert await eventually(lambda: has(waiting_on(db_engine, lock), 1))
        assert await order_ids(db_engine, buyer) == []

        await lock.release()
        assert await eventually(lambda: has_orders(db_engine, buyer, 1))
        bodies = await upstream.wait_for_notifications(1)

    [order_id] = await order_ids(db_engine, buyer)
    assert [body["order_id"] for body in bodies] == [order_id]


@pytest.mark.pitfall
async def test_pitfall_an_unshielded_write_dies_with_its_request(
    settings_with_grace: SettingsWithGrace,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    buyer: int,
) -> None:
    app = create_app(settings_with_grace(3.0))
    add_unshielded_route(app)
    async with serving(app) as (client, resources), row_lock(db_engine, buyer) as lock:
        await post_until_deadline(client, f"/t/users/{buyer}/orders-unshielded")

        # The deadline's cancellation reached the insert: it no longer waits for the lock,
        # its connection is back in the pool, and no task anywhere is still on it.
        assert await eventually(lambda: has(waiting_on(db_engine, lock), 0))
        assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert resources.supervisor.pending == 0

        await lock.release()
        # The shielded write landed within milliseconds of this point; this one never will.
        assert not await eventually(lambda: has_orders(db_engine, buyer, 1), within=0.5)
    assert upstream.arrived("/notifications") == 0


async def test_a_retry_with_its_idempotency_key_after_a_504_gets_the_order_that_landed(
    settings_with_grace: SettingsWithGrace,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    buyer: int,
) -> None:
    path = f"/users/{buyer}/orders"
    key = {"Idempotency-Key": '"retry-after-504"'}
    async with (
        running_app(settings_with_grace(3.0)) as (client, _),
        row_lock(db_engine, buyer) as lock,
    ):
        await client.get("/health/ready")  # open a pooled connection first: the deadline is short
        first = await client.post(path, json=ORDER, headers=key)
        assert first.status_code == 504
        assert await eventually(lambda: has(waiting_on(db_engine, lock), 1))

        # Retried while the first write still waits: told so at once, nothing written.
        early = await client.post(path, json=ORDER, headers=key)
        assert early.status_code == 409
        assert early.json()["error"]["code"] == "idempotency_key_in_use"
        assert early.headers["retry-after"] == "1"

        await lock.release()
        assert await eventually(lambda: has_orders(db_engine, buyer, 1))
        # Retried once the write has landed: the order the 504 hid, not a second one.
        retry = await client.post(path, json=ORDER, headers=key)
        await upstream.wait_for_notifications(1)

    [order_id] = await order_ids(db_engine, buyer)
    assert retry.status_code == 201
    assert retry.json()["id"] == order_id
    assert retry.headers["idempotent-replayed"] == "true"
    assert upstream.arrived("/notifications") == 1


async def shut_down_while_the_write_waits(
    settings: Settings, engine: AsyncEngine, user_id: int, release_after: float | None
) -> float:
    """Leave a shielded write waiting for the lock and shut the app down; return how long the
    shutdown took. The lock is released ``release_after`` seconds into the shutdown, or only
    after it with None (by then the write must have been cancelled: nothing waits for it).
    """
    async with row_lock(engine, user_id) as lock:
        async with running_app(settings) as (client, _):
            await post_until_deadline(client, f"/users/{user_id}/orders")
            assert await eventually(lambda: has(waiting_on(engine, lock), 1))
            releasing = (
                asyncio.create_task(lock.release_after(release_after))
                if release_after is not None
                else None
            )
            shutdown_started = time.monotonic()
        shutdown_took = time.monotonic() - shutdown_started
        if releasing is not None:
            await releasing
        else:
            assert await waiting_on(engine, lock) == 0
    return shutdown_took


async def test_shutdown_waits_for_a_shielded_write_in_flight(
    settings_with_grace: SettingsWithGrace,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    buyer: int,
) -> None:
    settings = settings_with_grace(3.0)

    took = await shut_down_while_the_write_waits(settings, db_engine, buyer, release_after=0.4)

    # The shutdown waited for the write (not for the whole grace period): the order landed and
    # its notification was sent before the lifespan closed the engine and the HTTP client.
    assert 0.4 <= took < settings.shutdown_grace
    [order_id] = await order_ids(db_engine, buyer)
    assert [body["order_id"] for body in await upstream.wait_for_notifications(1)] == [order_id]


async def test_a_notification_failing_during_shutdown_is_logged_and_stays_owed(
    settings_with_grace: SettingsWithGrace,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    buyer: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.script("notify", "fail", status=503)
    caplog.set_level(logging.WARNING, logger=OUTBOX_LOGGER)

    await shut_down_while_the_write_waits(settings_with_grace(3.0), db_engine, buyer, 0.2)

    [order_id] = await order_ids(db_engine, buyer)
    [record] = [record for record in caplog.records if record.name == OUTBOX_LOGGER]
    assert "notifier answered 503" in record.getMessage()
    async with db_engine.begin() as connection:
        owed = (
            await connection.execute(text("SELECT payload, status, attempts FROM outbox"))
        ).one()
        # Owed, not lost: the next process (or another replica) sends it again.
        await connection.execute(text("TRUNCATE outbox"))
    assert (owed.payload["order_id"], owed.status, owed.attempts) == (order_id, "pending", 1)
    assert getattr(record, "outbox_id", None) is not None


async def test_shutdown_cancels_a_write_stuck_past_the_grace_period_and_names_it(
    settings_with_grace: SettingsWithGrace,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    buyer: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with_grace(0.5)
    caplog.set_level(logging.WARNING, logger=BACKGROUND_LOGGER)

    took = await shut_down_while_the_write_waits(settings, db_engine, buyer, release_after=None)

    # A bounded shutdown: the grace period, then the cancelled write unwinds quickly; the
    # write is rolled back, and the log says which task was given up on.
    assert settings.shutdown_grace <= took < settings.shutdown_grace + 1.5
    assert await order_ids(db_engine, buyer) == []
    assert upstream.arrived("/notifications") == 0
    named = [
        record
        for record in caplog.records
        if record.name == BACKGROUND_LOGGER and "grace period" in record.getMessage()
    ]
    assert [getattr(record, "task", None) for record in named] == [f"place-order:user-{buyer}"]
    assert f"place-order:user-{buyer}" in named[0].getMessage()


async def has(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def has_orders(engine: AsyncEngine, user_id: int, expected: int) -> bool:
    return len(await order_ids(engine, user_id)) == expected
