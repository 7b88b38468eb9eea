"""No blocking calls on the event loop: the test gate that catches them, the production monitor
that measures them, and what one of them costs every other request.

The service runs every request on one thread. A route that calls something blocking
(``time.sleep``, a synchronous driver, ``requests``, a big file read) stops that thread, so
every other request in the process waits with it, health checks included. Two nets catch it:

- in tests, blockbuster (the autouse fixture in conftest) turns a blocking call made from the
  service's code while a loop runs into ``BlockingError``, so the test fails where it happens;
- in production, ``LoopLagMonitor`` measures how late the loop wakes a sleeping task and logs
  a warning past ``LOOP_LAG_WARNING_SECONDS``: the lag is the delay every request just suffered.

The routes under test are added to the real app, so the blocking call runs inside the service's
own middleware, which is the code blockbuster watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from blockbuster import BlockingError
from fastapi import FastAPI

from {{ cookiecutter.package_name }} import errors
from {{ cookiecutter.package_name }}.aio import debug
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import resources_of
from .service_process import admin_headers

Service = tuple[httpx2.AsyncClient, Resources]
BLOCK_SECONDS = 0.5
CONCURRENT_REQUESTS = 5


class Timeline:
    """When the slow route's pause ended, to order the other requests' answers against it."""

    def __init__(self) -> None:
        self.pause_ended: float | None = None


def add_test_routes(app: FastAPI, timeline: Timeline) -> None:
    @app.get("/t/blocking-sleep")
    async def blocking_sleep(seconds: float = 0.01) -> dict[str, str]:
        time.sleep(seconds)  # noqa: ASYNC251 - the blocking call these tests are about
        timeline.pause_ended = time.monotonic()
        return {"status": "slept"}

    @app.get("/t/async-sleep")
    async def async_sleep(seconds: float = 0.01) -> dict[str, str]:
        await asyncio.sleep(seconds)
        timeline.pause_ended = time.monotonic()
        return {"status": "slept"}


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


@pytest.fixture
async def routed(settings: Settings, timeline: Timeline) -> AsyncIterator[Service]:
    app = create_app(settings)
    add_test_routes(app, timeline)
    async with LifespanManager(app) as manager:
        # raise_app_exceptions: an exception that got past the app's error path would reach the
        # test as itself (none does: see errors.py).
        transport = httpx2.ASGITransport(app=manager.app, raise_app_exceptions=True)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://service.test", headers=admin_headers()
        ) as http:
            yield http, resources_of(manager)


async def _eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Poll a plain condition (there is no event to wait on) for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


# --- the test gate -----------------------------------------------------------------------------


async def test_blockbuster_fails_a_blocking_call_made_on_the_loop(
    routed: Service, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = routed
    # Even a 10 ms sleep is caught: the gate looks at what is called, not at how long it takes.
    with caplog.at_level(logging.ERROR, logger=errors.__name__):
        response = await client.get("/t/blocking-sleep", params={"seconds": 0.01})

    # The service's error path treats it as the bug it is: a 500, logged with its traceback.
    assert response.status_code == 500
    caught = [
        record.exc_info[1]
        for record in caplog.records
        if record.exc_info and isinstance(record.exc_info[1], BlockingError)
    ]
    assert len(caught) == 1
    assert "sleep" in str(caught[0])


@pytest.mark.pitfall
@pytest.mark.allow_blocking
async def test_pitfall_without_the_gate_a_blocking_call_passes_every_functional_test(
    routed: Service,
) -> None:
    client, _ = routed
    response = await client.get("/t/blocking-sleep", params={"seconds": 0.01})
    # The answer is right and fast enough, so nothing shows it will stall the service under load.
    assert response.status_code == 200


# --- the production monitor --------------------------------------------------------------------


@pytest.mark.allow_blocking
async def test_the_loop_lag_monitor_sees_a_blocking_route(
    routed: Service, caplog: pytest.LogCaptureFixture
) -> None:
    client, resources = routed
    monitor = resources.loop_lag
    blocked = 0.4
    with caplog.at_level(logging.WARNING, logger=debug.__name__):
        response = await client.get("/t/blocking-sleep", params={"seconds": blocked})
        # The monitor's tick was due during the block and runs as soon as the loop is free; it
        # was due at most one interval after the block began, so it is late by at least this:
        least_lag = blocked - monitor.interval
        await _eventually(lambda: monitor.peak_lag >= least_lag - 0.01)
    assert response.status_code == 200
    assert monitor.peak_lag >= monitor.threshold
    assert "event loop lag" in caplog.text


# --- what a blocking call costs every other request ----------------------------------------


async def _slow_request_among_quick_ones(
    client: httpx2.AsyncClient, path: str
) -> tuple[httpx2.Response, list[float], list[float]]:
    """Start one slow request and five health checks at the same moment.

    Returns the slow response, how long each health check took from that moment, and when
    each one was answered (monotonic clock).
    """
    started = time.monotonic()
    answered: list[float] = []

    async def health_check() -> float:
        response = await client.get("/health/live")
        assert response.status_code == 200
        answered.append(time.monotonic())
        return answered[-1] - started

    # The slow request is created first, so it reaches its route first, as a request that
    # arrived a moment earlier would; the health checks are in flight while it runs.
    async with asyncio.TaskGroup() as group:
        slow = group.create_task(client.get(path, params={"seconds": BLOCK_SECONDS}))
        checks = [group.create_task(health_check()) for _ in range(CONCURRENT_REQUESTS)]
    return slow.result(), [check.result() for check in checks], answered


@pytest.mark.pitfall
@pytest.mark.allow_blocking
async def test_pitfall_one_blocking_call_stalls_every_concurrent_request(
    routed: Service, timeline: Timeline
) -> None:
    client, _ = routed

    slow, durations, answered = await _slow_request_among_quick_ones(client, "/t/blocking-sleep")

    assert slow.status_code == 200
    assert timeline.pause_ended is not None
    # Not one health check was answered while the route blocked: they all waited for it, and a
    # liveness probe this slow is how an orchestrator decides to restart a healthy process.
    assert all(when >= timeline.pause_ended for when in answered)
    assert min(durations) >= BLOCK_SECONDS - 0.05


async def test_an_awaited_pause_lets_concurrent_requests_through(
    routed: Service, timeline: Timeline
) -> None:
    client, _ = routed

    slow, durations, answered = await _slow_request_among_quick_ones(client, "/t/async-sleep")

    assert slow.status_code == 200
    assert timeline.pause_ended is not None
    # The same pause, awaited: the loop serves the health checks while the route waits.
    assert all(when < timeline.pause_ended for when in answered)
    assert max(durations) < 0.2
