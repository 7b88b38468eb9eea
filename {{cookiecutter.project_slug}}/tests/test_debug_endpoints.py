"""``GET /debug/tasks``: absent without ``DEBUG_TOKEN``, guarded by it, and useful when it answers.

Useful means: while a request is stuck on a slow upstream, the dump names the tasks that wait
(``fanout:preferences``, ``fanout:notifications``) and shows how far down each one is, which is
what an engineer needs when a process is alive but not answering.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

from {{ cookiecutter.package_name }}.resources import Resources

from .conftest import make_settings, running_app, upstream_settings
from .upstream_server import ScriptedUpstream

Service = tuple[httpx2.AsyncClient, Resources]
TOKEN = "debug-token-for-tests"
ERROR_KEYS = {"code", "message", "request_id"}


@pytest.fixture
async def debug_service(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> AsyncIterator[Service]:
    """The app with a debug token, wired to the scripted upstream, with room for slow calls."""
    settings = upstream_settings(
        database_url, upstream, debug_token=TOKEN, upstream_timeout=3.0, request_timeout=5.0
    )
    async with running_app(settings) as running:
        yield running


async def _eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Poll a plain condition (there is no event to wait on) for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


def _assert_error(response: httpx2.Response, status: int, code: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == code
    assert "Traceback" not in response.text


async def test_without_a_token_the_debug_routes_do_not_exist(database_url: str) -> None:
    # 404 rather than 401: without a token configured nothing even hints the route is there.
    async with running_app(make_settings(database_url, debug_token=None)) as (client, _):
        response = await client.get("/debug/tasks", headers={"Authorization": f"Bearer {TOKEN}"})
    _assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-token", f"Basic {TOKEN}", TOKEN, "Bearer "],
    ids=["missing", "wrong-token", "wrong-scheme", "no-scheme", "empty-token"],
)
async def test_a_missing_or_wrong_token_is_401(
    debug_service: Service, authorization: str | None
) -> None:
    client, _ = debug_service
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.get("/debug/tasks", headers=headers)

    _assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "tasks" not in response.json()


async def test_the_dump_shows_the_tasks_of_a_request_in_flight(
    debug_service: Service, upstream: ScriptedUpstream
) -> None:
    client, _ = debug_service
    created = await client.post(
        "/users", json={"email": f"{uuid.uuid4().hex}@example.com", "name": "Stuck"}
    )
    user_id = created.json()["id"]
    upstream.script("preferences", "delay", seconds=0.8)
    upstream.script("notifications", "delay", seconds=0.8)
    stuck = asyncio.create_task(client.get(f"/users/{user_id}/dashboard"), name="stuck-request")
    try:
        # Both upstream calls are on the wire: the request is now waiting on them.
        await _eventually(
            lambda: (
                upstream.arrived("/preferences") >= 1 and upstream.arrived("/notifications") >= 1
            )
        )

        response = await client.get("/debug/tasks", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        dashboard = await stuck

    assert response.status_code == 200
    body = response.json()
    tasks: dict[str, dict[str, Any]] = {task["name"]: task for task in body["tasks"]}
    for source, call in (("preferences", "preferences"), ("notifications", "recent_notifications")):
        info = tasks[f"fanout:{source}"]
        assert info["state"] == "pending"
        assert info["coroutine"] == "_run_source"
        functions = [frame["function"] for frame in info["awaiting"]]
        # The chain goes from the fan-out wrapper down through the upstream call into the
        # HTTP client: far more than the one frame Task.print_stack would show.
        assert functions[:2] == ["_run_source", call]
        assert len(functions) > 3
        assert all(frame["file"] and frame["line"] > 0 for frame in info["awaiting"])
        assert info["waiting_on"]  # the future the innermost frame is suspended on
    assert "loop-lag-monitor" in tasks
    assert set(body["loop_lag"]) == {"current_seconds", "peak_seconds"}
    assert body["loop_lag"]["peak_seconds"] >= 0
    assert body["background_tasks_pending"] == 0
    # Looking did not disturb: the request in flight still completes normally.
    assert dashboard.status_code == 200
    assert dashboard.json()["preferences"]["user_id"] == user_id
