"""Orders of a user: create, list, and the errors around them."""

from __future__ import annotations

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def new_user(client: httpx2.AsyncClient, email: str = "grace@example.com") -> int:
    response = await client.post("/users", json={"email": email, "name": "Grace"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def test_create_order_returns_it_with_its_id(
    client: httpx2.AsyncClient, db_engine: AsyncEngine
) -> None:
    user_id = await new_user(client)

    response = await client.post(f"/users/{user_id}/orders", json={"item": "book", "quantity": 2})

    assert response.status_code == 201
    order = response.json()
    assert order["user_id"] == user_id
    assert (order["item"], order["quantity"]) == ("book", 2)
    async with db_engine.connect() as connection:
        stored = await connection.execute(
            text("SELECT user_id, item, quantity FROM orders WHERE id = :id"), {"id": order["id"]}
        )
        assert stored.one() == (user_id, "book", 2)


async def test_orders_are_listed_oldest_first_and_per_user(client: httpx2.AsyncClient) -> None:
    first = await new_user(client, "first@example.com")
    second = await new_user(client, "second@example.com")
    for item in ("a", "b", "c"):
        response = await client.post(f"/users/{first}/orders", json={"item": item, "quantity": 1})
        assert response.status_code == 201
    await client.post(f"/users/{second}/orders", json={"item": "other", "quantity": 1})

    response = await client.get(f"/users/{first}/orders")

    assert response.status_code == 200
    assert [order["item"] for order in response.json()] == ["a", "b", "c"]


async def test_user_without_orders_has_an_empty_list(client: httpx2.AsyncClient) -> None:
    user_id = await new_user(client)

    response = await client.get(f"/users/{user_id}/orders")

    assert response.status_code == 200
    assert response.json() == []


async def test_order_for_missing_user_is_404_and_stores_nothing(
    client: httpx2.AsyncClient, db_engine: AsyncEngine
) -> None:
    response = await client.post("/users/777/orders", json={"item": "book", "quantity": 1})
    listing = await client.get("/users/777/orders")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert listing.status_code == 404
    async with db_engine.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM orders"))).scalar_one()
    assert count == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"item": "book", "quantity": 0}, id="zero-quantity"),
        pytest.param({"item": "book", "quantity": 10_001}, id="huge-quantity"),
        pytest.param({"item": "", "quantity": 1}, id="empty-item"),
        pytest.param({"item": "book"}, id="missing-quantity"),
        pytest.param({"item": "book", "quantity": "many"}, id="text-quantity"),
    ],
)
async def test_invalid_order_is_422(client: httpx2.AsyncClient, body: dict[str, object]) -> None:
    user_id = await new_user(client)

    response = await client.post(f"/users/{user_id}/orders", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
