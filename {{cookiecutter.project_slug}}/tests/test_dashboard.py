"""Dashboard: a TaskGroup fan-out over the database and two upstreams, all or nothing."""

from __future__ import annotations

import time

import httpx2
import pytest

from {{ cookiecutter.package_name }}.resources import Resources

from .upstream_server import ScriptedUpstream

Service = tuple[httpx2.AsyncClient, Resources]


async def new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post("/users", json={"email": "dash@example.com", "name": "Dash"})
    assert response.status_code == 201
    user_id: int = response.json()["id"]
    return user_id


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
    upstream.script("preferences", "delay", seconds=0.4)
    upstream.script("notifications", "delay", seconds=0.4)

    started = time.monotonic()
    response = await client.get(f"/users/{user_id}/dashboard")
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    # One after the other would take at least 0.8 s.
    assert 0.4 <= elapsed < 0.75


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
    # The hanging call was cancelled, not left to run into its 1 s deadline ...
    assert elapsed < 0.8
    # ... and the upstream saw the connection go away.
    assert await upstream.wait_abandoned("preferences", 1) == 1


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
    assert 1.0 <= elapsed < 2.0


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
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, resources = service
    upstream.script("preferences", "hang")

    started = time.monotonic()
    response = await client.get("/users/999/dashboard")
    elapsed = time.monotonic() - started

    assert response.status_code == 404
    assert elapsed < 0.8  # not held up by the hanging upstream
    # Every preferences call that had reached the upstream was abandoned.
    arrived = upstream.arrived("/preferences")
    assert await upstream.wait_abandoned("preferences", arrived) == arrived
    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
