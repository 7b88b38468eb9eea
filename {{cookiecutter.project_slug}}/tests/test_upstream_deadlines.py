"""Every upstream call has one total deadline, and every way an upstream breaks is a clean error.

The calls go through the service's own ``Upstreams`` on the client ``create_http_client`` builds,
against a real HTTP server on 127.0.0.1 that hangs, trickles, resets, fails or sends junk.

The trickle is the case that matters: the upstream sends one byte every 0.3 s, so no single read
ever waits long enough to trip a read timeout, and a 31-byte body takes about 9 s. Only the
``asyncio.timeout`` around the whole call (``call_deadline`` in ``upstream/calls.py``) stops it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from {{ cookiecutter.package_name }}.aio.deadlines import DeadlineExceeded
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.upstream.calls import (
    UpstreamError,
    Upstreams,
    UpstreamTimeoutError,
)
from {{ cookiecutter.package_name }}.upstream.client import create_http_client

from .conftest import make_settings
from .upstream_server import Mode, ScriptedUpstream

Service = tuple[httpx2.AsyncClient, Resources]

DEADLINE = 1.0  # UPSTREAM_TIMEOUT here: the total deadline (each phase's own timeout is 2 s)
TRICKLE = 0.3  # seconds between two bytes: well inside any per-read timeout used below
MARGIN = 0.6  # how late a cut may come on a busy 2-core machine running two test workers


@pytest.fixture
async def http(database_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    """The service's own client, built exactly as the lifespan builds it."""
    settings = make_settings(database_url, upstream_timeout=DEADLINE)
    # Building a client reads the CA bundle from disk: keep that off the loop, as the app does.
    client = await asyncio.to_thread(create_http_client, settings)
    async with client:
        yield client


def upstreams_at(http: httpx2.AsyncClient, base_url: str) -> Upstreams:
    return Upstreams(http, preferences_url=base_url, notifier_url=base_url, deadline=DEADLINE)


@pytest.fixture
def upstreams(http: httpx2.AsyncClient, upstream: ScriptedUpstream) -> Upstreams:
    return upstreams_at(http, upstream.base_url)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 where nothing listens: connecting to it is refused at once.

    The socket stays bound (without ``listen``) for the whole test, so no other process can
    take the port meanwhile and turn "refused" into something else.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


async def test_a_healthy_upstream_within_the_deadline_answers(
    upstreams: Upstreams, upstream: ScriptedUpstream
) -> None:
    upstream.script("preferences", "delay", seconds=0.2)

    assert await upstreams.preferences(7) == {"user_id": 7, "language": "en"}


async def test_a_hanging_upstream_is_cut_at_the_deadline(
    upstreams: Upstreams, upstream: ScriptedUpstream
) -> None:
    upstream.script("preferences", "hang")

    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as caught:
        await upstreams.preferences(7)
    elapsed = time.monotonic() - started

    assert DEADLINE - 0.01 <= elapsed < DEADLINE + MARGIN
    assert caught.value.status_code == 504
    assert caught.value.code == "deadline_exceeded"
    # The total deadline cut it, not the client's own (longer) read timeout.
    assert isinstance(caught.value.__cause__, DeadlineExceeded)
    # The connection was closed, not left hanging on the upstream's side.
    assert await upstream.wait_abandoned("preferences", 1) == 1


async def test_a_trickling_upstream_is_cut_at_the_total_deadline(
    upstreams: Upstreams, upstream: ScriptedUpstream
) -> None:
    # 31 bytes at 0.3 s each: about 9 s if nothing cuts it, and no read ever waits past 0.3 s,
    # far below the client's own 2 s read timeout.
    upstream.script("preferences", "trickle", seconds=TRICKLE)

    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as caught:
        await upstreams.preferences(7)
    elapsed = time.monotonic() - started

    assert DEADLINE - 0.01 <= elapsed < DEADLINE + MARGIN
    # It was the total deadline that fired, not one of httpx2's per-phase timeouts.
    assert isinstance(caught.value.__cause__, DeadlineExceeded)
    assert await upstream.wait_abandoned("preferences", 1) == 1


@pytest.mark.pitfall
async def test_pitfall_a_read_timeout_never_cuts_a_trickling_upstream(
    upstream: ScriptedUpstream,
) -> None:
    # What most code does: a client "timeout" and nothing around the call. Timeout(0.5) sets
    # connect, read, write and pool to 0.5 s each, and the read timeout restarts at every byte.
    read_timeout = 0.5
    # A short body (9 bytes) only so that the test ends in about 2.4 s; a longer one trickles
    # on for longer still, 0.3 s a byte, without ever tripping the read timeout.
    upstream.notifications[7] = [1, 2, 3]
    upstream.script("notifications", "trickle", seconds=TRICKLE)

    started = time.monotonic()
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(read_timeout)) as naive:
        response = await naive.get(f"{upstream.base_url}/notifications", params={"user_id": 7})
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json() == [1, 2, 3]  # it got the whole body, just very late
    assert elapsed > 3 * read_timeout


async def test_a_trickling_preferences_upstream_makes_the_dashboard_504(
    service: Service, upstream: ScriptedUpstream
) -> None:
    client, resources = service
    assert resources.settings.upstream_timeout == DEADLINE
    created = await client.post("/users", json={"email": "slow@example.com", "name": "Slow"})
    user_id = created.json()["id"]
    upstream.script("preferences", "trickle", seconds=TRICKLE)

    started = time.monotonic()
    response = await client.get(f"/users/{user_id}/dashboard")
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    # Near UPSTREAM_TIMEOUT, well before the 3 s REQUEST_TIMEOUT of the whole request.
    assert DEADLINE - 0.01 <= elapsed < DEADLINE + MARGIN
    assert await upstream.wait_abandoned("preferences", 1) == 1


@pytest.mark.parametrize(
    ("mode", "status"),
    [("reset", 500), ("fail", 503), ("fail", 500), ("junk", 500)],
    ids=["reset", "fail-503", "fail-500", "junk"],
)
async def test_a_broken_upstream_is_an_upstream_error(
    upstreams: Upstreams, upstream: ScriptedUpstream, mode: Mode, status: int
) -> None:
    upstream.script("preferences", mode, status=status)

    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await upstreams.preferences(7)

    # Reported as it happens, not after the deadline, and as a 502, not a 504.
    assert time.monotonic() - started < DEADLINE
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"


async def test_a_closed_port_is_an_upstream_error(
    http: httpx2.AsyncClient, closed_port: int
) -> None:
    upstreams = upstreams_at(http, f"http://127.0.0.1:{closed_port}")

    with pytest.raises(UpstreamError) as caught:
        await upstreams.recent_notifications(7)

    assert caught.value.status_code == 502
    assert "unreachable" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)
