"""One request id from the client's request to every upstream call and log line it causes.

The id enters at ``RequestIdMiddleware``, lives in ``request_id_var``, and leaves on every upstream
call as ``X-Request-ID`` (``Upstreams._exchange`` reads it; one place, so no call can forget it).
Work that outlives the request carries it too: the outbox row stores it, and the dispatcher puts
it back into the context for each delivery attempt, the first one and every retry.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.logs import JsonFormatter, request_id_var

from .conftest import running_app, upstream_settings
from .upstream_server import ScriptedUpstream

ORDER = {"item": "teapot", "quantity": 2}


class JsonLines(logging.Handler):
    """The service's own JSON formatting, applied when each record is emitted (in its context)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextmanager
def captured(logger_name: str) -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def wait_until(condition: Any, within: float = 10.0) -> None:
    """Poll ``condition`` every 20 ms until it holds, or fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def ids_received(upstream: ScriptedUpstream, method: str, path: str) -> list[str | None]:
    return [
        item.headers.get("x-request-id")
        for item in upstream.received
        if item.method == method and item.path.startswith(path)
    ]


async def create_user(http: Any, email: str) -> int:
    response = await http.post("/users", json={"email": email, "name": "Rid"})
    assert response.status_code == 201
    user_id: int = response.json()["id"]
    return user_id


async def test_every_upstream_call_of_a_request_carries_its_id(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    async with running_app(upstream_settings(database_url, upstream)) as (http, _):
        user_id = await create_user(http, "dash@example.com")
        dashboard = await http.get(
            f"/users/{user_id}/dashboard", headers={"X-Request-ID": "dash-req-1"}
        )
        summary = await http.get(f"/users/{user_id}/summary", headers={"X-Request-ID": "sum-req-2"})
    assert dashboard.status_code == 200
    assert summary.status_code == 200
    assert ids_received(upstream, "GET", "/preferences") == ["dash-req-1", "sum-req-2"]
    assert ids_received(upstream, "GET", "/notifications") == ["dash-req-1", "sum-req-2"]


async def test_a_generated_request_id_is_the_one_forwarded(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    async with running_app(upstream_settings(database_url, upstream)) as (http, _):
        user_id = await create_user(http, "gen@example.com")
        response = await http.get(f"/users/{user_id}/dashboard")
    assert response.status_code == 200
    # The service made the id up; the upstream saw that same id, so the logs join.
    assert ids_received(upstream, "GET", "/preferences") == [response.headers["x-request-id"]]


async def test_the_notification_carries_the_id_of_the_order_request_on_every_attempt(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    settings = upstream_settings(
        database_url,
        upstream,
        outbox_poll_interval=0.1,
        outbox_retry_base=0.05,
        outbox_retry_cap=0.1,
    )
    upstream.script("notify", "fail", status=503)
    with captured("{{ cookiecutter.package_name }}.outbox") as log:
        async with running_app(settings) as (http, _):
            user_id = await create_user(http, "notify@example.com")
            placed = await http.post(
                f"/users/{user_id}/orders", json=ORDER, headers={"X-Request-ID": "order-req-7"}
            )
            assert placed.status_code == 201
            # The immediate attempt fails; then the notifier recovers and the retry lands.
            await wait_until(lambda: upstream.arrived("/notifications") >= 1)
            await wait_until(lambda: any("failed" in line["message"] for line in log.lines))
            upstream.script("notify", "ok")
            await wait_until(lambda: len(upstream.notifications[user_id]) == 1)
    posts = ids_received(upstream, "POST", "/notifications")
    assert len(posts) >= 2, "expected the failed first attempt and a retry"
    assert set(posts) == {"order-req-7"}
    # Every line the outbox logged about this delivery names the request that caused it.
    assert log.lines
    assert all(line.get("request_id") == "order-req-7" for line in log.lines)


@pytest.mark.pitfall
async def test_pitfall_work_started_outside_the_request_context_loses_the_id(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    """A poller, a queue consumer or a task created from the lifespan runs in its own context:
    unless the id is stored with the work and set again, the upstream call and the log lines of
    that work carry no id (or a made-up one), and nothing joins them to the request."""
    logger = logging.getLogger("{{ cookiecutter.package_name }}.pitfall")
    async with running_app(upstream_settings(database_url, upstream)) as (http, resources):
        user_id = await create_user(http, "lost@example.com")

        async def deliver_later() -> None:
            logger.warning("sending the notification for order 1")
            await resources.upstreams.notify({"user_id": user_id, "order_id": 1})

        request_id_var.set("order-req-8")  # the request that queued the work...
        with captured("{{ cookiecutter.package_name }}.pitfall") as log:
            # ...and the consumer that runs it later, in a context of its own.
            await asyncio.get_running_loop().create_task(
                deliver_later(), context=contextvars.Context()
            )
    assert ids_received(upstream, "POST", "/notifications") == [None]
    assert "request_id" not in log.lines[0]
