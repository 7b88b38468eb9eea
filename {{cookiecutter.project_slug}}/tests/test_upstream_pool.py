"""The shared client's connection pool survives calls that are cancelled while they wait for it.

Cancelled calls are routine in this service: a request deadline, a server shutting down, a
fan-out whose sibling failed, all cancel the upstream calls in flight. When more calls are in
flight than the pool has connections, some of them are cancelled while waiting for a slot or
while their connection is still being opened. httpx 0.28.1 with httpcore 1.0.9 then keeps those
half-open connections counted against ``max_connections`` for good (encode/httpcore#1093): once
every slot is lost this way, each later call waits for the pool and fails with ``PoolTimeout``,
and the service cannot reach that upstream again until it restarts. The service uses httpx2,
which gives the slot back; the pitfall test below shows the same crowd wedging plain httpx.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import httpx2
import pytest

from {{ cookiecutter.package_name }}.upstream.calls import Upstreams, UpstreamTimeoutError
from {{ cookiecutter.package_name }}.upstream.client import (
    PHASE_TIMEOUT_FACTOR,
    create_http_client,
)

from .conftest import make_settings
from .upstream_server import ScriptedUpstream

SLOTS = 4  # upstream_max_connections
CROWD = 20  # calls started at once: 4 get a connection, 16 wait for the pool
POOL_WAIT = 1.0  # the client's pool timeout (and every other phase timeout)
ROUNDS = 3

Get = Callable[[str], Coroutine[Any, Any, object]]


@pytest.fixture
async def http(database_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    """The service's own client with a small pool, so that a crowd of calls must wait for it."""
    # The client sets each phase's timeout to PHASE_TIMEOUT_FACTOR times UPSTREAM_TIMEOUT.
    settings = make_settings(
        database_url,
        upstream_max_connections=SLOTS,
        upstream_timeout=POOL_WAIT / PHASE_TIMEOUT_FACTOR,
    )
    client = await asyncio.to_thread(create_http_client, settings)
    async with client:
        yield client


def hanging_url(upstream: ScriptedUpstream) -> str:
    upstream.script("preferences", "hang")
    return f"{upstream.base_url}/preferences/7"


def ok_url(upstream: ScriptedUpstream) -> str:
    return f"{upstream.base_url}/notifications?user_id=7"


async def cancel_a_crowd(get: Get, url: str) -> None:
    """Start CROWD calls of ``url`` at once and cancel them all on the loop's next pass.

    By then each call has started: a few are opening connections, the rest are queued for a
    slot. That is the moment httpcore#1093 needs, so the outcome does not depend on timing.
    """
    calls = [asyncio.create_task(get(url)) for _ in range(CROWD)]
    await asyncio.sleep(0)
    for call in calls:
        call.cancel()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)


async def run_out_of_time(http: httpx2.AsyncClient, base_url: str, deadline: float) -> None:
    """CROWD calls through the service's ``Upstreams`` with a deadline of a few milliseconds.

    The deadline cancels each call wherever it is at that moment: connecting, waiting for a
    slot, or waiting for the answer. With plain httpx this leaks some or all slots, how many
    depends on timing.
    """
    hurried = Upstreams(http, preferences_url=base_url, notifier_url=base_url, deadline=deadline)
    outcomes = await asyncio.gather(
        *(hurried.preferences(7) for _ in range(CROWD)), return_exceptions=True
    )
    assert all(isinstance(outcome, UpstreamTimeoutError) for outcome in outcomes)


async def test_cancelled_calls_give_their_pool_slots_back(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    hang, ok = hanging_url(upstream), ok_url(upstream)
    for _ in range(ROUNDS):
        await cancel_a_crowd(http.get, hang)

        async with asyncio.timeout(2.0):  # past POOL_WAIT a stuck pool would have raised
            response = await http.get(ok)
        assert response.status_code == 200


@pytest.mark.parametrize("deadline", [0.002, 0.005], ids=["2ms", "5ms"])
async def test_calls_cut_by_their_deadline_give_their_pool_slots_back(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream, deadline: float
) -> None:
    hanging_url(upstream)
    normal = Upstreams(
        http, preferences_url=upstream.base_url, notifier_url=upstream.base_url, deadline=2.0
    )
    for _ in range(ROUNDS):
        await run_out_of_time(http, upstream.base_url, deadline)

        assert await normal.recent_notifications(7) == []


async def test_after_many_cancellations_the_whole_pool_is_usable(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """One free slot would let a single call through: check that all of them came back."""
    hang = hanging_url(upstream)
    for deadline in (0.002, 0.005, 0.003):
        await cancel_a_crowd(http.get, hang)
        await run_out_of_time(http, upstream.base_url, deadline)
    delay = 0.8
    upstream.script("notifications", "delay", seconds=delay)

    started = time.monotonic()
    responses = await asyncio.gather(*(http.get(ok_url(upstream)) for _ in range(SLOTS)))
    elapsed = time.monotonic() - started

    assert [response.status_code for response in responses] == [200] * SLOTS
    # All at once: with even one slot gone, the last call would wait for another to finish
    # and the batch would take at least two delays.
    assert elapsed < 2 * delay


@pytest.mark.pitfall
async def test_pitfall_httpx_pool_is_stuck_after_cancelled_calls(
    upstream: ScriptedUpstream,
) -> None:
    timeout = httpx.Timeout(2.0, pool=POOL_WAIT)
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=SLOTS), timeout=timeout
    ) as plain:
        await cancel_a_crowd(plain.get, hanging_url(upstream))

        # Every slot is held by a connection no call owns any more. Waiting does not help:
        # the second try fails the same way.
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(httpx.PoolTimeout):
                await plain.get(ok_url(upstream))
            assert time.monotonic() - started >= POOL_WAIT - 0.01
    # The upstream is fine: it never even saw the call.
    assert upstream.arrived("/notifications") == 0
