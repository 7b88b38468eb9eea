"""Idempotency keys on ``POST /users/{id}/orders``: a retry is answered, never repeated.

The case that makes them necessary, a retry after a 504 whose shielded write landed, is in
``test_orders_shielded.py`` (it needs that module's row lock). Here: replay, conflict,
concurrent duplicates, the header's syntax, expiry, and the pitfall of the naive check.
"""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from fastapi import FastAPI, status
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.api.deps import ResourcesDep
from {{ cookiecutter.package_name }}.api.schemas import OrderCreate, OrderOut, UserIdPath
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.idempotency import (
    InvalidIdempotencyKeyError,
    parse_idempotency_key,
    record_key,
    request_fingerprint,
)
from {{ cookiecutter.package_name }}.db.models import IdempotencyKey
from {{ cookiecutter.package_name }}.db.queries import insert_order, load_order
from {{ cookiecutter.package_name }}.db.session import transaction
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import running_app, upstream_settings
from .test_background_notifications import serving
from .test_orders_shielded import eventually
from .upstream_server import ScriptedUpstream

ORDER = {"item": "compass", "quantity": 2}
CONCURRENT = 20


def key_header(key: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{key}"'}


async def new_user(client: httpx2.AsyncClient, email: str = "idem@example.com") -> int:
    response = await client.post("/users", json={"email": email, "name": "I"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 - the tests' own table names
        return int((await connection.execute(query)).scalar_one())


@pytest.fixture
def settings(database_url: str, upstream: ScriptedUpstream) -> Settings:
    return upstream_settings(database_url, upstream)


async def test_a_replay_answers_with_the_original_order_and_stores_nothing_new(
    settings: Settings, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        path = f"/users/{user_id}/orders"
        first = await client.post(path, json=ORDER, headers=key_header("order-1"))
        replay = await client.post(path, json=ORDER, headers=key_header("order-1"))
        bare = await client.post(path, json=ORDER, headers={"Idempotency-Key": "order-1"})
        await upstream.wait_for_notifications(1)

    assert first.status_code == replay.status_code == bare.status_code == 201
    assert replay.json() == bare.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert replay.headers["idempotent-replayed"] == "true"
    assert await count(db_engine, "orders") == 1
    assert await count(db_engine, "outbox") == 1  # one notification, not one per request


async def test_the_same_key_with_another_body_is_422(
    settings: Settings, db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        path = f"/users/{user_id}/orders"
        first = await client.post(path, json=ORDER, headers=key_header("order-2"))
        other = await client.post(
            path, json={**ORDER, "quantity": 3}, headers=key_header("order-2")
        )

    assert first.status_code == 201
    assert other.status_code == 422
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "different request body" in error["message"]
    assert await count(db_engine, "orders") == 1


async def test_keys_belong_to_one_user(
    settings: Settings, db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with running_app(settings) as (client, _):
        first = await new_user(client, "one@example.com")
        second = await new_user(client, "two@example.com")
        answers = [
            await client.post(f"/users/{user}/orders", json=ORDER, headers=key_header("shared"))
            for user in (first, second)
        ]

    assert [answer.status_code for answer in answers] == [201, 201]
    assert await count(db_engine, "orders") == 2


async def test_concurrent_duplicates_store_one_order(
    settings: Settings, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        answers = await asyncio.gather(
            *(
                client.post(f"/users/{user_id}/orders", json=ORDER, headers=key_header("burst"))
                for _ in range(CONCURRENT)
            )
        )
        await upstream.wait_for_notifications(1)

    statuses = {answer.status_code for answer in answers}
    created = [answer.json() for answer in answers if answer.status_code == 201]
    in_flight = [answer for answer in answers if answer.status_code == 409]
    assert statuses <= {201, 409}
    assert created
    assert all(order == created[0] for order in created)  # the one order, replayed
    assert all(answer.headers["retry-after"] == "1" for answer in in_flight)
    assert all(answer.json()["error"]["code"] == "idempotency_key_in_use" for answer in in_flight)
    assert await count(db_engine, "orders") == 1
    assert await count(db_engine, "outbox") == 1
    assert upstream.arrived("/notifications") == 1


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ('"order-1"', "order-1"),
        ("order-1", "order-1"),  # a bare token
        ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
        ('  "spaces inside, and a \\"quote\\""  ', 'spaces inside, and a "quote"'),
        ('"back\\\\slash"', "back\\slash"),
        ('"' + "k" * 255 + '"', "k" * 255),
    ],
)
def test_the_key_is_a_structured_field_string_or_a_token(header: str, key: str) -> None:
    assert parse_idempotency_key(header) == key


@pytest.mark.parametrize(
    "header",
    [
        "",
        '""',
        '"unterminated',
        '"a" ;p=1',  # parameters are not accepted
        '"bad \\escape"',
        '"tab\tinside"',
        '"caf\u00e9"',
        "two words",
        "a,b",
        '"' + "k" * 256 + '"',
    ],
)
def test_a_malformed_key_is_refused(header: str) -> None:
    with pytest.raises(InvalidIdempotencyKeyError):
        parse_idempotency_key(header)


async def test_a_malformed_key_is_a_400_and_stores_nothing(
    settings: Settings, db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        response = await client.post(
            f"/users/{user_id}/orders", json=ORDER, headers={"Idempotency-Key": '"open'}
        )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert await count(db_engine, "orders") == 0


async def test_an_expired_key_is_deleted_and_then_places_a_new_order(
    database_url: str, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    ttl = 0.5
    settings = upstream_settings(
        database_url,
        upstream,
        idempotency_key_ttl=ttl,
        outbox_cleanup_interval=0.1,
        outbox_poll_interval=0.05,
    )
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        path = f"/users/{user_id}/orders"
        first = await client.post(path, json=ORDER, headers=key_header("short-lived"))
        assert await count(db_engine, "idempotency_keys") == 1
        # The dispatcher's cleanup removes the key once it has expired.
        assert await eventually(lambda: has_count(db_engine, "idempotency_keys", 0), within=ttl + 5)
        again = await client.post(path, json=ORDER, headers=key_header("short-lived"))

    assert first.status_code == again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in again.headers
    assert await count(db_engine, "orders") == 2


async def has_count(engine: AsyncEngine, table: str, expected: int) -> bool:
    return await count(engine, table) == expected


# --- the pitfall: check, then insert -----------------------------------------------------------


def add_check_then_insert_route(app: FastAPI, barrier: asyncio.Barrier) -> None:
    @app.post("/t/users/{user_id}/orders-check-then-insert", status_code=status.HTTP_201_CREATED)
    async def create_order_check_then_insert(
        body: OrderCreate, user_id: UserIdPath, resources: ResourcesDep, key: str
    ) -> OrderOut:
        # The naive version: look the key up, and if it is not there, place the order and
        # remember the key afterwards (the way a response cache in front of the API works).
        async with transaction(resources.sessionmaker) as session:
            known = await session.scalar(
                select(IdempotencyKey.order_id).where(
                    IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
                )
            )
        if known is not None:
            async with transaction(resources.sessionmaker) as session:
                return OrderOut.model_validate(await load_order(session, known))
        # Every duplicate is now between its check and its insert. (The barrier holds them
        # there together, so that the test does not depend on how the scheduler interleaves
        # them; without it the window is shorter, not closed.)
        await barrier.wait()
        async with transaction(resources.sessionmaker) as session:
            order = OrderOut.model_validate(
                await insert_order(session, user_id, body.item, body.quantity)
            )
        async with transaction(resources.sessionmaker) as session:
            await record_key(
                session,
                user_id=user_id,
                key=key,
                fingerprint=request_fingerprint(body.model_dump()),
                order_id=order.id,
                ttl=60,
            )
        return order


@pytest.mark.pitfall
async def test_pitfall_check_then_insert_stores_an_order_per_concurrent_duplicate(
    settings: Settings, db_engine: AsyncEngine, empty_tables: None
) -> None:
    duplicates = 5
    barrier = asyncio.Barrier(duplicates)
    app = create_app(settings)
    add_check_then_insert_route(app, barrier)
    async with serving(app) as (client, _):
        user_id = await new_user(client)
        path = f"/t/users/{user_id}/orders-check-then-insert"
        answers = await asyncio.gather(
            *(client.post(path, json=ORDER, params={"key": "burst"}) for _ in range(duplicates))
        )

    # One order per request, all for one key. Only the first duplicate's key was stored; the
    # others' attempts to remember it collided with it, after their orders were committed.
    assert await count(db_engine, "orders") == duplicates
    assert await count(db_engine, "idempotency_keys") == 1
    assert sum(answer.status_code == 201 for answer in answers) == 1
