"""Bad input is the client's error, never the server's, and leaves no personal data behind.

Lengths are checked on the normalized value against the column they go to; a value the database
refuses anyway is a 422; no request value reaches the log with a database error, and a duplicate
email is refused without echoing the address. Lists come in bounded pages with a keyset cursor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import httpx2
import pytest
from pydantic import StringConstraints, TypeAdapter
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }}.api.schemas import EMAIL_MAX_LENGTH, PAGE_DEFAULT, PAGE_MAX
from {{ cookiecutter.package_name }}.db.engine import create_engine
from {{ cookiecutter.package_name }}.logs import JsonFormatter

from .conftest import make_settings, running_app

# "İ" (U+0130) lowercases to two code points: "i" and a combining dot above.
GROWS_WHEN_LOWERED = "İ" * 200 + "@example.com"
PRIVATE_EMAIL = "ada.private-7f3c@example.com"
PRIVATE_NAME = "Ada Lovelace-Private-91b2"


def logged_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record captured so far, as the JSON line the service writes for it."""
    formatter = JsonFormatter()
    return [formatter.format(record) for record in caplog.records]


async def _create_user(client: httpx2.AsyncClient, email: str, name: str = "Ada") -> int:
    answer = await client.post("/users", json={"email": email, "name": name})
    assert answer.status_code == 201, answer.text
    user_id: int = answer.json()["id"]
    return user_id


async def test_an_email_too_long_once_lowercased_is_refused_by_validation(
    client: httpx2.AsyncClient,
) -> None:
    assert len(GROWS_WHEN_LOWERED) <= EMAIL_MAX_LENGTH < len(GROWS_WHEN_LOWERED.lower())

    answer = await client.post("/users", json={"email": GROWS_WHEN_LOWERED, "name": "Ada"})

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert [detail["location"] for detail in error["details"]] == [["body", "email"]]


@pytest.mark.pitfall
def test_pitfall_a_length_checked_before_lowercasing_lets_an_overlong_email_through() -> None:
    checked_first = TypeAdapter(Annotated[str, StringConstraints(max_length=EMAIL_MAX_LENGTH)])

    stored = checked_first.validate_python(GROWS_WHEN_LOWERED).lower()

    assert len(stored) > EMAIL_MAX_LENGTH  # valid by the schema, too long for the column


@pytest.fixture
async def narrow_name_column(db_engine: AsyncEngine, empty_tables: None) -> AsyncIterator[int]:
    """The column shorter than the schema's limit, as after a migration the code has not caught
    up with: the value passes validation and the database refuses it (SQLSTATE 22001). On empty
    tables: a longer name that an earlier test left would make the ALTER itself fail."""
    async with db_engine.begin() as connection:
        await connection.execute(text("ALTER TABLE users ALTER COLUMN name TYPE varchar(5)"))
    try:
        yield 5
    finally:
        async with db_engine.begin() as connection:
            await connection.execute(text("ALTER TABLE users ALTER COLUMN name TYPE varchar(200)"))


async def test_a_value_the_database_refuses_is_422_and_logged_without_it(
    client: httpx2.AsyncClient, narrow_name_column: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = await client.post("/users", json={"email": PRIVATE_EMAIL, "name": PRIVATE_NAME})
    lines = logged_lines(caplog)

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert error["request_id"] == answer.headers["x-request-id"]
    [warning] = [line for line in lines if json.loads(line)["level"] == "warning"]
    assert "not accepted by the database" in warning  # one line, no stack trace
    assert "exception" not in json.loads(warning)
    assert PRIVATE_NAME not in "\n".join([answer.text, *lines])
    assert PRIVATE_EMAIL not in "\n".join([answer.text, *lines])


async def test_no_request_value_reaches_the_log_on_a_database_error(
    database_url: str, db_engine: AsyncEngine, empty_tables: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(make_settings(database_url)) as (client, _):
        async with db_engine.begin() as connection:
            await connection.execute(text("ALTER TABLE users RENAME COLUMN name TO name_renamed"))
        try:
            with caplog.at_level(logging.DEBUG):
                failed = await client.post(
                    "/users", json={"email": PRIVATE_EMAIL, "name": PRIVATE_NAME}
                )
        finally:
            async with db_engine.begin() as connection:
                await connection.execute(
                    text("ALTER TABLE users RENAME COLUMN name_renamed TO name")
                )
    lines = logged_lines(caplog)

    assert failed.status_code == 500
    [logged] = [line for line in lines if json.loads(line)["level"] == "error"]
    assert "INSERT INTO users" in logged  # the failing statement is there, with its trace
    assert "parameters hidden" in logged
    assert PRIVATE_EMAIL not in "\n".join(lines)
    assert PRIVATE_NAME not in "\n".join(lines)


@pytest.mark.pitfall
async def test_pitfall_an_engine_that_shows_parameters_puts_the_email_in_its_errors(
    database_url: str,
) -> None:
    default = create_async_engine(database_url)
    hiding = create_engine(make_settings(database_url), database_url)
    statement = text("SELECT :email FROM no_such_table")
    messages = []
    try:
        for engine in (default, hiding):
            async with engine.connect() as connection:
                with pytest.raises(DBAPIError) as raised:
                    await connection.execute(statement, {"email": PRIVATE_EMAIL})
            messages.append(str(raised.value))
    finally:
        await default.dispose()
        await hiding.dispose()

    assert PRIVATE_EMAIL in messages[0]  # what a logged traceback carries by default
    assert PRIVATE_EMAIL not in messages[1]


@pytest.mark.pitfall
async def test_pitfall_a_value_too_long_is_no_integrity_error(
    db_engine: AsyncEngine, narrow_name_column: int
) -> None:
    """A handler for ``IntegrityError`` (the usual "409 on constraint") never sees it: without
    a mapping of its SQLSTATE it falls through to the catch-all and is a 500."""
    async with db_engine.connect() as connection:
        with pytest.raises(DBAPIError) as raised:
            await connection.execute(
                text("INSERT INTO users (email, name) VALUES ('x@example.com', 'far too long')")
            )

    assert not isinstance(raised.value, IntegrityError)
    assert getattr(raised.value.orig, "sqlstate", None) == "22001"


async def test_a_duplicate_email_is_409_without_the_address(client: httpx2.AsyncClient) -> None:
    await _create_user(client, PRIVATE_EMAIL)

    again = await client.post("/users", json={"email": PRIVATE_EMAIL, "name": "Ada"})

    assert again.status_code == 409
    assert PRIVATE_EMAIL not in again.text
    assert PRIVATE_EMAIL.split("@", 1)[0] not in again.text


async def _insert_orders(engine: AsyncEngine, user_id: int, count: int) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO orders (user_id, item, quantity) "
                "SELECT :user_id, 'item-' || n, 1 FROM generate_series(1, :count) AS n"
            ),
            {"user_id": user_id, "count": count},
        )


async def test_orders_come_in_bounded_pages_that_a_cursor_walks(
    client: httpx2.AsyncClient, db_engine: AsyncEngine
) -> None:
    user_id = await _create_user(client, "pages@example.com")
    await _insert_orders(db_engine, user_id, PAGE_DEFAULT + 7)

    first = await client.get(f"/users/{user_id}/orders")
    pages = [first.json()]
    following = first
    while "x-next-cursor" in following.headers:
        link = following.headers["link"]
        assert link.endswith('>; rel="next"')
        following = await client.get(link[1 : link.index(">")])
        pages.append(following.json())
    small = await client.get(f"/users/{user_id}/orders", params={"limit": 3})
    too_many = await client.get(f"/users/{user_id}/orders", params={"limit": PAGE_MAX + 1})

    assert [len(page) for page in pages] == [PAGE_DEFAULT, 7]
    ids = [order["id"] for page in pages for order in page]
    assert ids == sorted(set(ids))  # every order once, oldest first
    assert len(ids) == PAGE_DEFAULT + 7
    assert first.headers["x-next-cursor"] == str(ids[PAGE_DEFAULT - 1])
    assert [order["id"] for order in small.json()] == ids[:3]
    assert too_many.status_code == 422


async def test_dashboard_and_summary_carry_one_page_of_orders(
    service: tuple[httpx2.AsyncClient, object], db_engine: AsyncEngine
) -> None:
    client, _ = service
    user_id = await _create_user(client, "dash-pages@example.com")
    await _insert_orders(db_engine, user_id, PAGE_DEFAULT + 1)

    dashboard = (await client.get(f"/users/{user_id}/dashboard")).json()
    summary = (await client.get(f"/users/{user_id}/summary", params={"orders_limit": 4})).json()

    assert len(dashboard["orders"]) == PAGE_DEFAULT
    assert dashboard["orders_next_cursor"] == dashboard["orders"][-1]["id"]
    assert len(summary["sections"]["orders"]["data"]) == 4


@pytest.mark.pitfall
async def test_pitfall_offset_pages_skip_a_row_when_an_earlier_one_goes(
    db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with db_engine.begin() as connection:
        await connection.execute(text("INSERT INTO users (email, name) VALUES ('o@x.io', 'O')"))
    await _insert_orders(db_engine, 1, 4)
    page = text("SELECT id FROM orders ORDER BY id LIMIT 2 OFFSET :offset")
    async with db_engine.connect() as connection:
        first = list((await connection.execute(page, {"offset": 0})).scalars())
        await connection.execute(text("DELETE FROM orders WHERE id = :id"), {"id": first[0]})
        second = list((await connection.execute(page, {"offset": 2})).scalars())
        remaining = list((await connection.execute(text("SELECT id FROM orders"))).scalars())

    seen = set(first) | set(second)
    assert [order for order in remaining if order not in seen] == [3]  # never served
