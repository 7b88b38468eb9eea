"""Summary: the dashboard's sources fetched at once, partial, so one broken upstream costs one
section instead of the whole page.

Each section is ``{"status": "ok", "data": ...}`` or ``{"status": "error", "error": {"code",
"message"}}``. The user is not a section: without a user there is nothing to summarise (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx2
import pytest

from {{ cookiecutter.package_name }}.resources import Resources

from .upstream_server import Mode, Route, ScriptedUpstream

Service = tuple[httpx2.AsyncClient, Resources]

DEADLINE = 1.0  # the service fixture's UPSTREAM_TIMEOUT
SLOW = DEADLINE / 2  # an upstream delay that each call survives on its own
SECTIONS = {"orders", "preferences", "notifications"}


async def new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post("/users", json={"email": "sum@example.com", "name": "Sum"})
    assert response.status_code == 201
    user_id: int = response.json()["id"]
    return user_id


async def get_summary(client: httpx2.AsyncClient, user_id: int) -> dict[str, Any]:
    response = await client.get(f"/users/{user_id}/summary")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["user"]["id"] == user_id
    assert set(body["sections"]) == SECTIONS
    return body


async def calls_overlapped(upstream: ScriptedUpstream, request: asyncio.Task[Any]) -> bool:
    """Whether the preferences and notifications calls were at the upstream together, neither
    answered yet. One after the other, the second arrives only once the first is answered.

    The upstream has no event for arrivals, so this polls until both arrived or the request
    is over."""
    routes = ("preferences", "notifications")

    def both_arrived() -> bool:
        return all(upstream.arrived(f"/{route}") for route in routes)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2 * DEADLINE):
            while not (request.done() or both_arrived()):  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.005)
    return both_arrived() and not any(upstream.completed[route] for route in routes)


def failed(section: dict[str, Any]) -> str:
    """The error code of a failed section, after checking its shape."""
    assert section["status"] == "error"
    assert section["data"] is None
    assert set(section["error"]) == {"code", "message"}
    assert section["error"]["message"]
    code: str = section["error"]["code"]
    return code


async def test_every_section_ok(service: Service, upstream: ScriptedUpstream) -> None:
    client, _ = service
    user_id = await new_user(client)
    placed = await client.post(f"/users/{user_id}/orders", json={"item": "pen", "quantity": 3})
    order_id = placed.json()["id"]
    # The order's notification is sent in the background: wait for it to land upstream.
    await upstream.wait_for_notifications(1)

    sections = (await get_summary(client, user_id))["sections"]

    assert {section["status"] for section in sections.values()} == {"ok"}
    assert all(section["error"] is None for section in sections.values())
    assert [order["item"] for order in sections["orders"]["data"]] == ["pen"]
    assert sections["preferences"]["data"] == {"user_id": user_id, "language": "en"}
    assert [item["order_id"] for item in sections["notifications"]["data"]] == [order_id]


@pytest.mark.parametrize("route", ["preferences", "notifications"])
@pytest.mark.parametrize(
    ("mode", "code"),
    [("fail", "upstream_error"), ("reset", "upstream_error"), ("hang", "deadline_exceeded")],
)
async def test_one_failing_upstream_costs_only_its_section(
    service: Service, upstream: ScriptedUpstream, route: Route, mode: Mode, code: str
) -> None:
    client, _ = service
    user_id = await new_user(client)
    await client.post(f"/users/{user_id}/orders", json={"item": "pen", "quantity": 1})
    upstream.script(route, mode, status=503)

    started = time.monotonic()
    sections = (await get_summary(client, user_id))["sections"]
    elapsed = time.monotonic() - started

    assert failed(sections[route]) == code
    other = ({"preferences", "notifications"} - {route}).pop()
    assert sections[other]["status"] == "ok"
    assert sections[other]["data"] is not None
    assert sections["orders"]["status"] == "ok"
    assert [order["item"] for order in sections["orders"]["data"]] == ["pen"]
    if mode == "hang":
        # A hanging upstream holds the page up to its own deadline and no longer, and its
        # call is closed, not left behind.
        assert DEADLINE - 0.01 <= elapsed < 2 * DEADLINE
        assert await upstream.wait_abandoned(route, 1) == 1
    else:
        assert elapsed < DEADLINE


async def test_both_upstreams_failing_leaves_two_error_sections(
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, _ = service
    user_id = await new_user(client)
    upstream.script("preferences", "fail", status=503)
    upstream.script("notifications", "junk")

    sections = (await get_summary(client, user_id))["sections"]

    assert failed(sections["preferences"]) == "upstream_error"
    assert failed(sections["notifications"]) == "upstream_error"
    assert sections["orders"] == {"status": "ok", "data": [], "error": None}


async def test_a_missing_user_is_404(service: Service) -> None:
    client, _ = service

    response = await client.get("/users/999/summary")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_latency_is_the_slowest_source_not_the_sum(
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, _ = service
    user_id = await new_user(client)
    upstream.script("preferences", "delay", seconds=SLOW)
    upstream.script("notifications", "delay", seconds=SLOW)

    started = time.monotonic()
    request = asyncio.create_task(get_summary(client, user_id))
    overlapped = await calls_overlapped(upstream, request)
    sections = (await request)["sections"]
    elapsed = time.monotonic() - started

    assert {section["status"] for section in sections.values()} == {"ok"}
    assert overlapped  # both upstream calls were in flight at the same moment
    # One after the other can never take less than 2 * SLOW; the rest is room for a busy machine.
    assert SLOW <= elapsed < 1.75 * SLOW
