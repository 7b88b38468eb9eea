"""The order's first notification attempt is sent fire-and-forget under the app's supervisor.

The notification itself is durable (a row of the outbox, see ``test_outbox.py``); its first
attempt is a task of the supervisor, started right after the commit. Three promises: the
response does not wait for the notifier, and the notification leaves at once, not at the next
poll of the outbox; a failure is logged the moment it happens, with the id of the request that
caused it, and retried; and shutdown lets a pending notification finish instead of cutting it off.
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
from .service_process import admin_headers
from .upstream_server import ScriptedUpstream

OUTBOX_LOGGER = "{{ cookiecutter.package_name }}.outbox"
NOTIFIER_DELAY = 1.0
ORDER = {"item": "kettle", "quantity": 1}


class JsonLines(logging.Handler):
    """Formats each record with the service's JSON formatter at the moment it is emitted.

    That moment matters: the formatter reads the request id from a context variable, so what it
    prints is whatever context the logging call ran in.
    """

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []
        self.emitted = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))
        self.emitted.set()


@contextmanager
def json_lines(logger_name: str, level: int = logging.ERROR) -> Iterator[JsonLines]:
    handler = JsonLines(level)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def notifier_settings(
    database_url: str, upstream: ScriptedUpstream, **overrides: object
) -> Settings:
    # The upstream deadline is well above the notifier's scripted delay: the slow notification
    # must succeed, late.
    values: dict[str, object] = {
        "preferences_url": upstream.base_url,
        "notifier_url": upstream.base_url,
        "upstream_timeout": 3.0,
        "request_timeout": 3.0,
        "shutdown_grace": 3.0,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


async def new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post("/users", json={"email": "notify@example.com", "name": "N"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def test_the_response_does_not_wait_for_the_notification(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    upstream.script("notify", "delay", seconds=NOTIFIER_DELAY)
    # The outbox's poller looks once, at startup: only the attempt made right after the commit
    # can deliver this notification in time.
    settings = notifier_settings(database_url, upstream, outbox_poll_interval=60.0)
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)

        started = time.monotonic()
        response = await client.post(f"/users/{user_id}/orders", json=ORDER)
        answered_after = time.monotonic() - started
        assert upstream.completed["notify"] == 0  # the client has its answer; the notifier not

        bodies = await upstream.wait_for_notifications(1)
        notified_after = time.monotonic() - started

    assert response.status_code == 201
    assert answered_after < NOTIFIER_DELAY / 2
    # Sent at once: the notifier's delay, and no wait for a poll of the outbox.
    assert NOTIFIER_DELAY * 0.95 <= notified_after < NOTIFIER_DELAY + 1.0
    assert [body["order_id"] for body in bodies] == [response.json()["id"]]


async def test_a_failed_notification_is_logged_at_once_with_its_request_id_and_retried(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    upstream.script("notify", "fail", status=500)
    settings = notifier_settings(
        database_url, upstream, outbox_poll_interval=0.05, outbox_retry_base=0.1
    )
    with json_lines(OUTBOX_LOGGER, logging.WARNING) as log:
        async with running_app(settings) as (client, _):
            user_id = await new_user(client)
            response = await client.post(
                f"/users/{user_id}/orders", json=ORDER, headers={"X-Request-ID": "order-req-42"}
            )
            # Logged while the service runs, when the attempt fails: not at shutdown, and not
            # whenever the garbage collector gets to an unobserved exception.
            await asyncio.wait_for(log.emitted.wait(), timeout=2.0)
            first_failure = log.lines[0]
            # The failure is not the end of it: the outbox sends it again.
            upstream.script("notify", "ok")
            async with asyncio.timeout(5):
                while not upstream.notifications[user_id]:  # noqa: ASYNC110 - no event to wait on
                    await asyncio.sleep(0.02)

    order_id = response.json()["id"]
    assert response.status_code == 201
    assert first_failure["level"] == "warning"
    assert "attempt 1 failed" in first_failure["message"]
    assert "notifier answered 500" in first_failure["message"]
    # The request id of the request that created the order, stored with its outbox row and
    # set again for the delivery, so the log line of a retry names it as well.
    assert first_failure["request_id"] == "order-req-42"
    assert all(line["request_id"] == "order-req-42" for line in log.lines)
    assert [body["order_id"] for body in upstream.notifications[user_id]] == [order_id]


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
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://service.test", headers=admin_headers()
        ) as http:
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
