"""Dashboard: a TaskGroup fan-out over the database and two upstreams, all or nothing.

Timings are compared with the upstream deadline and with what one call after another would
take, with wide margins: the suite runs on busy machines. Whether calls overlapped, reached the
upstream or were cancelled is read from the scripted upstream, not inferred from the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.resources import Resources

from .upstream_server import ScriptedUpstream

Service = tuple[httpx2.AsyncClient, Resources]

DEADLINE = 1.0  # the service fixture's UPSTREAM_TIMEOUT
SLOW = DEADLINE / 2  # an upstream delay that each call survives on its own
# Well before a call's own deadline, with room left for a busy machine. A call left running
# (not cancelled) is cut only by that deadline, which starts after the request does.
PROMPTLY = 0.75 * DEADLINE


async def new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post("/users", json={"email": "dash@example.com", "name": "Dash"})
    assert response.status_code == 201
    user_id: int = response.json()["id"]
    return user_id


async def poll(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition`` came true within ``within`` seconds (the upstream's arrivals have
    no event to wait on)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - polling state that has no event
                await asyncio.sleep(0.005)
            return True
    return False


def left(started: float, budget: float) -> float:
    """What remains of ``budget`` seconds counted from ``started``."""
    return max(0.0, started + budget - time.monotonic())


async def calls_overlapped(
    upstream: ScriptedUpstream, request: asyncio.Task[httpx2.Response]
) -> bool:
    """Whether the preferences and notifications calls were at the upstream together, neither
    answered yet. One after the other, the second arrives only once the first is answered."""
    routes = ("preferences", "notifications")

    def both_arrived() -> bool:
        return all(upstream.arrived(f"/{route}") for route in routes)

    await poll(lambda: request.done() or both_arrived(), within=2 * DEADLINE)
    return both_arrived() and not any(upstream.completed[route] for route in routes)


async def test_dashboard_returns_every_section(service: Service) -> None:
    client, _ = service
    user_id = await new_user(client)
    await client.post(f"/users/{user_id}/orders", json={"item": "pen", "quantity": 3})

    response = await client.get(f"/users/{user_id}/dashboard")

    assert response.status_code == 200
    body = response.json()
    assert body["user"]["id"] == user_id
    assert [order["item"] for order in body["orders"]] == ["pen"]
    assert body["preferences"] == {"user_id": user_id, "language": "en"}
    assert isinstance(body["notifications"], list)


async def test_latency_is_the_slowest_source_not_the_sum(
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, _ = service
    user_id = await new_user(client)
    upstream.script("preferences", "delay", seconds=SLOW)
    upstream.script("notifications", "delay", seconds=SLOW)

    started = time.monotonic()
    request = asyncio.create_task(client.get(f"/users/{user_id}/dashboard"))
    overlapped = await calls_overlapped(upstream, request)
    response = await request
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert overlapped  # both upstream calls were in flight at the same moment
    # One after the other can never take less than 2 * SLOW; the rest is room for a busy machine.
    assert SLOW <= elapsed < 1.75 * SLOW


async def test_first_failure_cancels_the_other_sources(
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, _ = service
    user_id = await new_user(client)
    upstream.script("preferences", "hang")
    upstream.script("notifications", "fail", status=503)

    started = time.monotonic()
    response = await client.get(f"/users/{user_id}/dashboard")
    elapsed = time.monotonic() - started

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert elapsed < PROMPTLY  # not held up by the hanging call
    # The hanging call had started, and the failure cancelled it: the upstream sees its
    # connection close well before the call's own deadline would have cut it. (Left running,
    # as gather leaves it, it would go on until that deadline.)
    abandoned = await upstream.wait_abandoned("preferences", 1, within=left(started, PROMPTLY))
    assert (upstream.arrived("/preferences"), abandoned) == (1, 1)


async def test_a_source_past_its_deadline_is_504(
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, _ = service
    user_id = await new_user(client)
    upstream.script("preferences", "hang")

    started = time.monotonic()
    response = await client.get(f"/users/{user_id}/dashboard")
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert DEADLINE <= elapsed < 2 * DEADLINE


@pytest.mark.parametrize("mode", ["reset", "junk", "fail"])
async def test_a_broken_upstream_is_502(
    service: Service, upstream: ScriptedUpstream, mode: str
) -> None:
    client, _ = service
    user_id = await new_user(client)
    upstream.script("notifications", mode)  # type: ignore[arg-type]

    response = await client.get(f"/users/{user_id}/dashboard")

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


async def test_missing_user_is_404_and_cancels_the_upstream_calls(
    service: Service, upstream: ScriptedUpstream, db_engine: AsyncEngine
) -> None:
    client, resources = service
    upstream.script("preferences", "hang")

    # Hold the user lookup until the preferences call has reached the upstream, so that the
    # 404 has a call in flight to cancel (a fast database could otherwise answer first).
    async with db_engine.connect() as connection, connection.begin():
        await connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        request = asyncio.create_task(client.get("/users/999/dashboard"))
        reached = await poll(lambda: upstream.arrived("/preferences") > 0, within=PROMPTLY)
    response = await request
    elapsed = time.monotonic() - started

    assert reached
    assert response.status_code == 404
    assert elapsed < PROMPTLY  # not held up by the hanging upstream
    # Its call was cancelled: the upstream sees the connection close well before the call's
    # own deadline would have cut it.
    abandoned = await upstream.wait_abandoned("preferences", 1, within=left(started, PROMPTLY))
    assert (upstream.arrived("/preferences"), abandoned) == (1, 1)
    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
