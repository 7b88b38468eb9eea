"""The users API against the real app, lifespan and PostgreSQL."""

from __future__ import annotations

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def create_user(client: httpx2.AsyncClient, email: str = "ada@example.com") -> int:
    response = await client.post("/users", json={"email": email, "name": "Ada"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def test_create_user_stores_it_in_the_database(
    client: httpx2.AsyncClient, db_engine: AsyncEngine
) -> None:
    response = await client.post("/users", json={"email": " Ada@Example.COM ", "name": "Ada"})

    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "ada@example.com"
    assert body["name"] == "Ada"
    async with db_engine.connect() as connection:
        stored = await connection.execute(
            text("SELECT email, name FROM users WHERE id = :id"), {"id": body["id"]}
        )
        assert stored.one() == ("ada@example.com", "Ada")


async def test_get_user_returns_what_was_created(client: httpx2.AsyncClient) -> None:
    user_id = await create_user(client)

    response = await client.get(f"/users/{user_id}")

    assert response.status_code == 200
    assert response.json()["id"] == user_id
    assert response.json()["email"] == "ada@example.com"


async def test_missing_user_is_404_in_the_error_shape(client: httpx2.AsyncClient) -> None:
    response = await client.get("/users/424242")

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "424242" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


async def test_duplicate_email_is_409_and_the_first_user_stays(
    client: httpx2.AsyncClient, db_engine: AsyncEngine
) -> None:
    await create_user(client, "ada@example.com")

    response = await client.post("/users", json={"email": "ADA@example.com", "name": "Other"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    async with db_engine.connect() as connection:
        names = (await connection.execute(text("SELECT name FROM users"))).scalars().all()
    assert names == ["Ada"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        pytest.param({"name": "Ada"}, ["body", "email"], id="missing-email"),
        pytest.param({"email": "not-an-email", "name": "Ada"}, ["body", "email"], id="bad-email"),
        pytest.param({"email": "a@example.com", "name": ""}, ["body", "name"], id="empty-name"),
        pytest.param({"email": "a@example.com", "name": "x" * 201}, ["body", "name"], id="long"),
        pytest.param({"email": "a@example.com", "name": "A\x00B"}, ["body", "name"], id="nul"),
        pytest.param(
            {"email": "a@example.com", "name": "A", "admin": True}, ["body", "admin"], id="extra"
        ),
        pytest.param({"email": 5, "name": "Ada"}, ["body", "email"], id="wrong-type"),
    ],
)
async def test_invalid_user_is_422_naming_the_field(
    client: httpx2.AsyncClient, body: dict[str, object], location: list[str]
) -> None:
    response = await client.post("/users", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert location in [detail["location"] for detail in error["details"]]


async def test_malformed_json_is_422_not_500(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/users", content=b'{"email": ', headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("user_id", ["abc", "0", "-1", str(2**63), "1.5"])
async def test_bad_user_id_in_path_is_422(client: httpx2.AsyncClient, user_id: str) -> None:
    response = await client.get(f"/users/{user_id}")

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["location"] == ["path", "user_id"]


async def test_unknown_route_and_method_use_the_error_shape(client: httpx2.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    wrong_method = await client.delete("/users")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_request_id_is_echoed_or_generated(client: httpx2.AsyncClient) -> None:
    echoed = await client.get("/health/live", headers={"x-request-id": "abc-123"})
    generated = await client.get("/health/live", headers={"x-request-id": "bad id\twith tab"})

    assert echoed.headers["x-request-id"] == "abc-123"
    assert generated.headers["x-request-id"] not in {"", "bad id\twith tab"}
    assert len(generated.headers["x-request-id"]) == 32
