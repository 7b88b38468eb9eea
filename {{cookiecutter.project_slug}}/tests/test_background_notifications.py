"""The order's notification is sent fire-and-forget under the app's supervisor.

Three promises: the response does not wait for the notifier; a failure is logged the moment it
happens, with the id of the request that caused it; and shutdown lets a pending notification
finish instead of cutting it off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, status

from {{ cookiecutter.package_name }}.api.deps import ResourcesDep
from {{ cookiecutter.package_name }}.api.schemas import OrderCreate, OrderOut, UserIdPath
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.queries import insert_order
from {{ cookiecutter.package_name }}.db.session import transaction
from {{ cookiecutter.package_name }}.logs import JsonFormatter
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings, resources_of, running_app
from .upstream_server import ScriptedUpstream

BACKGROUND_LOGGER = "{{ cookiecutter.package_name }}.background"
NOTIFIER_DELAY = 1.0
ORDER = {"item": "kettle", "quantity": 1}


class JsonLines(logging.Handler):
    """Formats each record with the service's JSON formatter at the moment it is emitted.

    That moment matters: the formatter reads the request id from a context variable, so what it
    prints is whatever context the logging call ran in.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []
        self.emitted = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))
        self.emitted.set()


@contextmanager
def json_lines(logger_name: str) -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def notifier_settings(database_url: str, upstream: ScriptedUpstream) -> Settings:
    # The upstream deadline is well above the notifier's scripted delay: the slow notification
    # must succeed, late.
    return make_settings(
        database_url,
        preferences_url=upstream.base_url,
        notifier_url=upstream.base_url,
        upstream_timeout=3.0,
        request_timeout=3.0,
        shutdown_grace=3.0,
    )


async def new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post("/users", json={"email": "notify@example.com", "name": "N"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def test_the_response_does_not_wait_for_the_notification(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    upstream.script("notify", "delay", seconds=NOTIFIER_DELAY)
    async with running_app(notifier_settings(database_url, upstream)) as (client, _):
        user_id = await new_user(client)

        started = time.monotonic()
        response = await client.post(f"/users/{user_id}/orders", json=ORDER)
        answered_after = time.monotonic() - started
        assert upstream.completed["notify"] == 0  # the client has its answer; the notifier not

        bodies = await upstream.wait_for_notifications(1)
        notified_after = time.monotonic() - started

    assert response.status_code == 201
    assert answered_after < NOTIFIER_DELAY / 2
    assert notified_after >= NOTIFIER_DELAY * 0.95
    assert [body["order_id"] for body in bodies] == [response.json()["id"]]


async def test_a_failed_notification_is_logged_at_once_with_its_request_id(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    upstream.script("notify", "fail", status=500)
    with json_lines(BACKGROUND_LOGGER) as log:
        async with running_app(notifier_settings(database_url, upstream)) as (client, _):
            user_id = await new_user(client)
            response = await client.post(
                f"/users/{user_id}/orders", json=ORDER, headers={"X-Request-ID": "order-req-42"}
            )
            # Logged while the service runs, when the task fails: not at shutdown, and not
            # whenever the garbage collector gets to an unobserved exception.
            await asyncio.wait_for(log.emitted.wait(), timeout=2.0)

    order_id = response.json()["id"]
    assert response.status_code == 201
    [line] = log.lines
    assert line["task"] == f"notify-order:{order_id}"
    assert f"notify-order:{order_id}" in line["message"]
    assert "notifier answered 500" in line["message"]
    # The request id of the request that created the order, read from the context the log
    # call ran in (the task's copy of the request's context), and recorded at spawn time too.
    assert line["request_id"] == "order-req-42"
    assert line["context"]["request_id"] == "order-req-42"
    assert "UpstreamError" in line["exception"]


async def test_shutdown_lets_a_pending_notification_finish(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    delay = 0.5
    upstream.script("notify", "delay", seconds=delay)
    async with running_app(notifier_settings(database_url, upstream)) as (client, resources):
        user_id = await new_user(client)
        response = await client.post(f"/users/{user_id}/orders", json=ORDER)
        assert response.status_code == 201
        assert resources.supervisor.pending == 1  # the notification, still on its way
        shutdown_started = time.monotonic()
    shutdown_took = time.monotonic() - shutdown_started

    # The lifespan waited for the notifier's answer before closing the HTTP client.
    assert upstream.completed["notify"] == 1
    assert upstream.abandoned["notify"] == 0
    assert shutdown_took >= delay * 0.5
    [body] = [item.body for item in upstream.received if item.method == "POST"]
    assert body["order_id"] == response.json()["id"]


# --- the pitfall: awaiting the notification inline --------------------------------------------


def add_inline_notify_route(app: FastAPI) -> None:
    @app.post("/t/users/{user_id}/orders-inline-notify", status_code=status.HTTP_201_CREATED)
    async def create_order_inline_notify(
        body: OrderCreate, user_id: UserIdPath, resources: ResourcesDep
    ) -> OrderOut:
        async with transaction(resources.sessionmaker) as session:
            order = OrderOut.model_validate(
                await insert_order(session, user_id, body.item, body.quantity)
            )
        # The naive version: the notification is awaited before the response is sent.
        await resources.upstreams.notify({"user_id": user_id, "order_id": order.id})
        return order


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[tuple[httpx2.AsyncClient, Resources]]:
    async with LifespanManager(app) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://service.test") as http:
            yield http, resources_of(manager)


@pytest.mark.pitfall
async def test_pitfall_an_awaited_notification_makes_the_response_as_slow_as_the_notifier(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    upstream.script("notify", "delay", seconds=NOTIFIER_DELAY)
    app = create_app(notifier_settings(database_url, upstream))
    add_inline_notify_route(app)
    async with serving(app) as (client, _):
        user_id = await new_user(client)

        started = time.monotonic()
        response = await client.post(f"/t/users/{user_id}/orders-inline-notify", json=ORDER)
        elapsed = time.monotonic() - started

    assert response.status_code == 201
    # Every order now costs the notifier's latency (and an outage turns a written order into a 502).
    assert elapsed >= NOTIFIER_DELAY * 0.95
