"""The hot read: one statement, one round trip, and no failed request after a database restart.

``GET /users/{id}`` reads through ``Reader`` (``db/reads.py``): a Core statement on an AUTOCOMMIT
connection. What the server receives is recorded with asyncpg's query logger on every pooled
connection, so the proofs count statements where they arrive, not where the code thinks it
sends them.

Without ``pool_pre_ping``, a connection the server dropped is found out when it is used. Two
things keep that from reaching a client: a read that finds its connection dead runs once more on
a new one (SQLAlchemy has replaced the whole pool by then), and a connection idle for
``PING_AFTER_IDLE_SECONDS`` is pinged before it is handed out, which covers writes after a quiet
spell. The restart is real: every server process of the app's connections is terminated.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from {{ cookiecutter.package_name }}.api.schemas import UserOut
from {{ cookiecutter.package_name }}.db import engine as engine_module
from {{ cookiecutter.package_name }}.db.models import User
from {{ cookiecutter.package_name }}.db.queries import USER_BY_ID
from {{ cookiecutter.package_name }}.settings import PACKAGE_NAME, Settings

from .conftest import make_settings, running_app
from .wire_counter import WireCounter


async def server_now(admin: AsyncEngine) -> datetime:
    async with admin.connect() as connection:
        now: datetime = (await connection.execute(text("SELECT clock_timestamp()"))).scalar_one()
        return now


async def terminate_connections_opened_since(
    admin: AsyncEngine, since: datetime, application_name: str = PACKAGE_NAME
) -> int:
    """What a database restart or failover does to an app started at ``since``: the server
    processes of its connections are gone. (Older connections of the same name, such as the
    tests' own engine's, are left alone.)"""
    async with admin.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database() "
                "AND backend_start >= :since AND pid <> pg_backend_pid()"
            ),
            {"name": application_name, "since": since},
        )
        return int(result.scalar_one())


async def _quiet(wire: WireCounter, for_seconds: float = 0.2) -> None:
    """Wait until the app's startup work (the outbox's first look) has stopped talking."""
    async with asyncio.timeout(10):
        while True:
            seen = len(wire.trips)
            await asyncio.sleep(for_seconds)
            if len(wire.trips) == seen:
                return


async def new_user(http: httpx2.AsyncClient) -> int:
    created = await http.post(
        "/users", json={"email": f"{uuid.uuid4().hex}@example.com", "name": "R"}
    )
    assert created.status_code == 201, created.text
    user_id: int = created.json()["id"]
    return user_id


@asynccontextmanager
async def app_behind_a_counter(
    database_url: str,
) -> AsyncIterator[tuple[httpx2.AsyncClient, WireCounter, list[int]]]:
    """The app on the counting proxy, three users created and read once (which prepares the
    statements), and quiet: the round trips counted from here on are the test's."""
    async with (
        WireCounter(database_url) as wire,
        running_app(make_settings(wire.url)) as (http, _),
    ):
        ids = [await new_user(http) for _ in range(3)]
        assert (await http.get(f"/users/{ids[0]}")).status_code == 200
        await _quiet(wire)
        yield http, wire, ids


async def test_a_read_is_one_round_trip_with_no_transaction_around_it(
    database_url: str, empty_tables: None
) -> None:
    async with app_behind_a_counter(database_url) as (http, wire, ids):
        before = len(wire.trips)
        answers = [await http.get(f"/users/{user_id}") for user_id in ids]
        trips = wire.trips[before:]

    assert [answer.json()["id"] for answer in answers] == ids
    assert trips == ["S", "S", "S"]  # one exchange a read: no BEGIN, no COMMIT, no ping


@pytest.mark.pitfall
async def test_pitfall_a_read_in_a_session_with_pre_ping_costs_six_round_trips(
    database_url: str, empty_tables: None
) -> None:
    async with WireCounter(database_url) as wire:
        naive = create_async_engine(wire.url, pool_pre_ping=True)
        sessions = async_sessionmaker(naive)
        try:
            for _ in range(2):  # the first checkout of a new connection is not pinged
                before = len(wire.trips)
                async with sessions() as session, session.begin():
                    await session.get(User, 1)
            trips = wire.trips[before:]
        finally:
            await naive.dispose()

    # The ping inside a BEGIN and ROLLBACK of its own (the asyncpg dialect), then the read in
    # its transaction.
    assert trips == ["Q BEGIN;", "S", "Q ROLLBACK;", "Q BEGIN;", "S", "Q COMMIT;"], trips


async def test_reads_right_after_a_database_restart_all_succeed(
    settings: Settings, db_engine: AsyncEngine, empty_tables: None
) -> None:
    started = await server_now(db_engine)
    async with running_app(settings) as (http, resources):
        ids = [await new_user(http) for _ in range(3)]
        # Three connections in the pool, all of them about to be cut.
        async with (
            resources.engine.connect() as first,
            resources.engine.connect() as second,
            resources.engine.connect() as third,
        ):
            for connection in (first, second, third):
                await connection.execute(text("SELECT 1"))
        assert await terminate_connections_opened_since(db_engine, started) >= 3
        # One after another: the second read must not get the next dead connection.
        one_by_one = [await http.get(f"/users/{user_id}") for user_id in ids]
        at_once = await asyncio.gather(*(http.get(f"/users/{user_id}") for user_id in ids * 2))

    statuses = [answer.status_code for answer in [*one_by_one, *at_once]]
    assert statuses == [200] * 9, [answer.text for answer in [*one_by_one, *at_once]]


def test_the_hot_read_selects_the_columns_the_model_maps() -> None:
    columns = USER_BY_ID.removeprefix("SELECT ").split(" FROM ")[0].split(", ")
    assert set(columns) == set(User.__table__.columns.keys()) == set(UserOut.model_fields)


@pytest.mark.pitfall
async def test_pitfall_without_the_retry_the_first_read_after_a_restart_fails(
    db_engine: AsyncEngine, database_url: str
) -> None:
    naive = create_async_engine(database_url, connect_args={"server_settings": {
        "application_name": "naive-reader"}})  # fmt: skip
    try:
        started = await server_now(db_engine)
        async with naive.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert await terminate_connections_opened_since(db_engine, started, "naive-reader") == 1
        with pytest.raises(DBAPIError) as failure:
            async with naive.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert failure.value.connection_invalidated  # what Reader retries on
    finally:
        await naive.dispose()


@pytest.fixture
def quick_ping(monkeypatch: pytest.MonkeyPatch) -> float:
    """Ping after 0.2 s idle instead of a second, so the proof waits less."""
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.2)
    return 0.2


async def test_a_write_after_a_quiet_spell_and_a_restart_succeeds(
    database_url: str, db_engine: AsyncEngine, empty_tables: None, quick_ping: float
) -> None:
    started = await server_now(db_engine)
    async with running_app(make_settings(database_url)) as (http, _):
        first = await http.post("/users", json={"email": "a@example.com", "name": "A"})
        assert first.status_code == 201, first.text
        assert await terminate_connections_opened_since(db_engine, started) >= 1
        await asyncio.sleep(quick_ping * 1.5)  # the pooled connection sat idle past the ping age
        second = await http.post("/users", json={"email": "b@example.com", "name": "B"})

    assert second.status_code == 201, second.text


async def test_a_busy_connection_is_not_pinged_and_writes_keep_their_transaction(
    database_url: str, empty_tables: None
) -> None:
    async with app_behind_a_counter(database_url) as (http, wire, _):
        before = len(wire.trips)
        for _ in range(5):  # back to back: each checkout finds a connection used just now
            await new_user(http)
        # "BEGIN" or, on a connection that served reads, "BEGIN ISOLATION LEVEL READ COMMITTED"
        commands = [trip.split()[1].rstrip(";") for trip in wire.trips[before:] if trip != "S"]

    # BEGIN and COMMIT of each write, and no ping (it would come inside a BEGIN and ROLLBACK).
    assert commands == ["BEGIN", "COMMIT"] * 5, commands
