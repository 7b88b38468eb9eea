"""``aio/admission.py``: a bounded number of requests in flight, a bounded wait for the rest.

The gate is tested on its own (first come, first served; a bounded wait; cancellation never
loses a slot) and as ASGI middleware around a bare app (the refusal is a 503 with
``Retry-After`` in the service's error shape; exempt paths are never counted). The pitfall shows
the usual "limit the concurrency with a semaphore": it protects the database, but the queue it
builds has no bound, so the wait of the last request grows with the number of clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.aio.admission import (
    AdmissionGate,
    AdmissionMiddleware,
    Overloaded,
)

Message = MutableMapping[str, Any]


async def _settle() -> None:
    """Let every task that is ready run until it suspends again (a few loop iterations)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_admitted_in_arrival_order_as_slots_come_free() -> None:
    gate = AdmissionGate(limit=2, max_wait=5.0)
    await gate.acquire()
    await gate.acquire()
    admitted: list[int] = []

    async def arrive(number: int) -> None:
        await gate.acquire()
        admitted.append(number)

    waiters = [asyncio.create_task(arrive(number)) for number in range(3)]
    await _settle()
    assert (gate.in_flight, gate.waiting, admitted) == (2, 3, [])

    # Each release hands its slot straight to the longest waiter: the count in flight stays at
    # the limit and a newcomer cannot overtake the queue.
    for expected in ([0], [0, 1], [0, 1, 2]):
        gate.release()
        await _settle()
        assert admitted == expected
        assert gate.in_flight == 2
    await asyncio.gather(*waiters)
    gate.release()
    gate.release()
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_a_request_waits_at_most_max_wait_then_is_refused() -> None:
    max_wait = 0.2
    gate = AdmissionGate(limit=1, max_wait=max_wait)
    await gate.acquire()

    started = time.monotonic()
    with pytest.raises(Overloaded):
        async with asyncio.timeout(max_wait + 5):  # a wait with no end fails, never hangs
            await gate.acquire()
    waited = time.monotonic() - started

    assert max_wait * 0.9 <= waited < max_wait + 1.0
    assert (gate.in_flight, gate.waiting, gate.refused_total) == (1, 0, 1)


async def test_with_no_wait_budget_the_excess_is_refused_at_once() -> None:
    gate = AdmissionGate(limit=1, max_wait=0)
    await gate.acquire()

    with pytest.raises(Overloaded):
        await gate.acquire()
    assert gate.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    gate = AdmissionGate(limit=1, max_wait=5.0)
    await gate.acquire()
    leaving = asyncio.create_task(gate.acquire())
    staying = asyncio.create_task(gate.acquire())
    await _settle()

    leaving.cancel()
    await _settle()
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(staying, 1.0)

    assert leaving.cancelled()
    assert (gate.in_flight, gate.waiting) == (1, 0)


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_passes_to_the_next() -> None:
    gate = AdmissionGate(limit=1, max_wait=5.0)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await _settle()

    # No await in between: the slot is the first waiter's when its cancellation lands.
    gate.release()
    first.cancel()
    await asyncio.wait_for(second, 1.0)

    assert first.cancelled()
    assert (gate.in_flight, gate.waiting) == (1, 0)  # the second holds it; nothing was lost
    gate.release()
    assert gate.in_flight == 0


# --- the middleware ----------------------------------------------------------------------------


class Exchange:
    """What one request sent back through the middleware."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {key.decode(): value.decode() for key, value in self.messages[0]["headers"]}

    def json(self) -> Any:
        return json.loads(self.messages[1]["body"])


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": []}


def held_app(release: asyncio.Event) -> Callable[..., Awaitable[None]]:
    """An app whose requests stay in flight until ``release`` is set."""

    async def app(scope: Any, receive: Any, send: Callable[[Message], Awaitable[None]]) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def test_middleware_refuses_the_excess_with_503_retry_after_and_the_error_shape() -> None:
    release = asyncio.Event()
    gate = AdmissionGate(limit=1, max_wait=0.05)
    middleware = AdmissionMiddleware(
        held_app(release), gate, retry_after=3, request_id=lambda: "req-42"
    )
    admitted, refused = Exchange(), Exchange()

    in_flight = asyncio.create_task(middleware(_scope("/users/1"), _receive, admitted.send))
    await _settle()
    async with asyncio.timeout(5):  # a request admitted here would wait for good: fail instead
        await middleware(_scope("/users/2"), _receive, refused.send)

    assert refused.status == 503
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["content-type"] == "application/json"
    error = refused.json()["error"]
    assert (error["code"], error["request_id"]) == ("overloaded", "req-42")
    release.set()
    await in_flight
    assert admitted.status == 200
    assert gate.in_flight == 0


async def test_exempt_paths_are_neither_counted_nor_refused() -> None:
    release = asyncio.Event()
    gate = AdmissionGate(limit=1, max_wait=0)
    middleware = AdmissionMiddleware(held_app(release), gate, exempt_paths=("/health", "/metrics/"))
    probes = [Exchange() for _ in range(3)]

    holder = asyncio.create_task(middleware(_scope("/users/1"), _receive, Exchange().send))
    await _settle()
    tasks = [
        asyncio.create_task(middleware(_scope(path), _receive, probe.send))
        for path, probe in zip(("/health/live", "/health", "/metrics"), probes, strict=True)
    ]
    await _settle()
    release.set()
    await asyncio.gather(holder, *tasks)

    assert [probe.status for probe in probes] == [200, 200, 200]
    assert gate.admitted_total == 1  # only the request to /users/1
    # A path that merely starts with the same letters is not exempt.
    assert not middleware._exempt("/healthz")


async def test_the_slot_is_given_back_when_the_app_fails() -> None:
    async def failing_app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    gate = AdmissionGate(limit=1, max_wait=0)
    middleware = AdmissionMiddleware(failing_app, gate)

    for _ in range(2):  # the second would be refused if the first had kept its slot
        with pytest.raises(RuntimeError):
            await middleware(_scope("/users/1"), _receive, Exchange().send)
    assert gate.in_flight == 0


# --- the pitfall -------------------------------------------------------------------------------


async def _last_wait(limit: asyncio.Semaphore | AdmissionGate, clients: int, work: float) -> float:
    """``clients`` requests arrive at once, each holding a slot for ``work`` seconds; return
    how long the last one to finish (answered or refused) took from the moment they arrived."""
    started = time.monotonic()

    async def request() -> float:
        if isinstance(limit, asyncio.Semaphore):
            async with limit:
                await asyncio.sleep(work)
        else:
            try:
                await limit.acquire()
            except Overloaded:
                return time.monotonic() - started
            try:
                await asyncio.sleep(work)
            finally:
                limit.release()
        return time.monotonic() - started

    return max(await asyncio.gather(*(request() for _ in range(clients))))


@pytest.mark.pitfall
async def test_pitfall_a_semaphore_queues_without_bound_so_the_wait_grows_with_the_clients() -> (
    None
):
    work, slots = 0.05, 2
    few = await _last_wait(asyncio.Semaphore(slots), clients=4, work=work)
    many = await _last_wait(asyncio.Semaphore(slots), clients=40, work=work)

    # The semaphore does cap the work in flight, but every request beyond it waits its turn:
    # 40 clients on 2 slots take 20 rounds of work, ten times what 4 clients take.
    assert few < 4 / slots * work + 0.5
    assert many >= 40 / slots * work * 0.9
    # The gate bounds that wait: past max_wait the excess is refused, whatever the crowd.
    max_wait = 0.1
    bounded = await _last_wait(AdmissionGate(slots, max_wait), clients=40, work=work)
    assert bounded < max_wait + work + 0.5 < many
