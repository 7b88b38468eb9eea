"""Overload is shed, not queued: past ``ADMISSION_LIMIT`` requests in flight, the excess waits at
most ``ADMISSION_TIMEOUT`` and is then refused with 503, ``Retry-After`` and a JSON body.

The tests run the service as a real process with a tiny pool (two connections, so the default
admission limit is two) and many clients, each on a keep-alive connection of its own
(``raw_http.py``). To make the database the bottleneck on cue, the test holds a lock on the
``users`` table (``database_pressure.py``): the two admitted requests then keep their
connections as a slow query would, and everything else is overload.

The figures (goodput and tail latency at 1x, 4x and 8x the pool) are not asserted here, they
depend on the machine: ``bench/overload.py`` measures them. What is asserted is the contract,
with bounds taken from the settings: who is answered, how, and how soon.

The pitfall is the same crowd without the gate: each request beyond the pool waits in the pool
for the whole ``DB_POOL_TIMEOUT`` before it is failed, and holds its connection and its memory
meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from .database_pressure import backends_waiting_for_a_lock, users_table_locked
from .raw_http import Answer, KeepAliveConnection
from .service_process import ServiceProcess, running_service

POOL_SIZE = 2  # and no overflow: ADMISSION_LIMIT, unset, is then 2 as well
ADMISSION_TIMEOUT = 0.1
POOL_TIMEOUT = 2.0
CLIENTS = 30  # 15 times what the pool holds


def _environment(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "DB_STATEMENT_TIMEOUT": "20",  # the lock, not the statement timeout, decides
        "REQUEST_TIMEOUT": "20",
        "ADMISSION_TIMEOUT": str(ADMISSION_TIMEOUT),
        **extra,
    }


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[ServiceProcess]:
    async with running_service(_environment(database_url)) as running:
        yield running


async def _user(service: ServiceProcess) -> int:
    async with await KeepAliveConnection.open(service.base_url) as connection:
        answer = await connection.request(
            "POST", "/users", json_body={"email": f"{uuid.uuid4().hex}@example.com", "name": "O"}
        )
    assert answer.status == 201
    user_id: int = answer.json()["id"]
    return user_id


async def _crowd(
    stack: AsyncExitStack, service: ServiceProcess, path: str, clients: int
) -> list[asyncio.Task[Answer]]:
    """``clients`` requests for ``path`` at once, each on a connection of its own."""
    connections = [
        await stack.enter_async_context(await KeepAliveConnection.open(service.base_url))
        for _ in range(clients)
    ]
    return [asyncio.create_task(connection.request("GET", path)) for connection in connections]


async def _until_answered(
    requests: list[asyncio.Task[Answer]], count: int, within: float
) -> set[asyncio.Task[Answer]]:
    """Wait until ``count`` of ``requests`` are answered, or ``within`` seconds have passed;
    return the answered ones."""
    answered: set[asyncio.Task[Answer]] = set()
    pending = set(requests)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(answered) < count and pending and loop.time() < deadline:
        done, pending = await asyncio.wait(
            pending, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
        )
        answered |= done
    return answered


def _assert_refused(answer: Answer) -> None:
    assert answer.status == 503, answer.body
    assert answer.headers["retry-after"] == "1"  # RETRY_AFTER's default
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "overloaded"
    assert error["request_id"] == answer.headers["x-request-id"]


async def test_the_excess_is_refused_within_the_admission_timeout_and_the_admitted_finish(
    service: ServiceProcess, db_engine: AsyncEngine
) -> None:
    user_id = await _user(service)
    async with AsyncExitStack() as connections:
        probe = await connections.enter_async_context(
            await KeepAliveConnection.open(service.base_url)
        )
        async with users_table_locked(db_engine):
            requests = await _crowd(connections, service, f"/users/{user_id}", CLIENTS)
            # Long before the pool would give up on a waiter, all but the admitted are answered.
            refused = await _until_answered(requests, CLIENTS - POOL_SIZE, POOL_TIMEOUT / 2)
            waiting_in_the_database = await backends_waiting_for_a_lock(db_engine, POOL_SIZE)
            live = await probe.request("GET", "/health/live")
        # The lock is gone: the admitted requests can finish.
        finished = [await request for request in requests if request not in refused]
        after = await probe.request("GET", f"/users/{user_id}")

    assert len(refused) == CLIENTS - POOL_SIZE
    for request in refused:
        _assert_refused(request.result())
        # Answered after waiting its turn for ADMISSION_TIMEOUT, and not much later.
        assert ADMISSION_TIMEOUT * 0.9 <= request.result().seconds < POOL_TIMEOUT / 2
    assert len(waiting_in_the_database) == POOL_SIZE  # only the admitted reached the pool
    assert live.status == 200  # probes are never counted nor refused
    assert [answer.status for answer in finished] == [200] * POOL_SIZE
    assert after.status == 200  # every slot was given back


async def test_under_sustained_overload_every_answer_is_a_200_or_a_prompt_503(
    service: ServiceProcess,
) -> None:
    user_id = await _user(service)
    answers: list[Answer] = []
    until = time.monotonic() + 2.0

    async def client(connection: KeepAliveConnection) -> None:
        # Back to back, as a closed-loop load generator does, 503s retried at once: the
        # harshest client there is. Any connection the server closed would raise here.
        while time.monotonic() < until:
            answers.append(await connection.request("GET", f"/users/{user_id}"))

    async with AsyncExitStack() as stack:
        connections = [
            await stack.enter_async_context(await KeepAliveConnection.open(service.base_url))
            for _ in range(8 * POOL_SIZE)
        ]
        async with asyncio.timeout(30), asyncio.TaskGroup() as group:
            for connection in connections:
                group.create_task(client(connection))

    statuses = {answer.status for answer in answers}
    assert statuses <= {200, 503}, statuses
    assert 200 in statuses
    for answer in answers:
        if answer.status == 503:
            _assert_refused(answer)
        # Nobody queued until the pool gave up: the slowest answer is far below DB_POOL_TIMEOUT.
        assert answer.seconds < POOL_TIMEOUT


@pytest.mark.pitfall
async def test_pitfall_without_admission_the_excess_waits_out_the_pool_timeout(
    database_url: str, db_engine: AsyncEngine
) -> None:
    pool_timeout = 1.5
    environment = _environment(
        database_url, ADMISSION_LIMIT="10000", DB_POOL_TIMEOUT=str(pool_timeout)
    )
    async with running_service(environment) as service, AsyncExitStack() as connections:
        user_id = await _user(service)
        async with users_table_locked(db_engine):
            requests = await _crowd(connections, service, f"/users/{user_id}", CLIENTS)
            await backends_waiting_for_a_lock(db_engine, POOL_SIZE)
            failed = await _until_answered(requests, CLIENTS - POOL_SIZE, pool_timeout * 4)
        await asyncio.gather(*requests)

    assert len(failed) == CLIENTS - POOL_SIZE
    for request in failed:
        answer = request.result()
        # Every request beyond the pool waited in it, told nothing, until the pool gave up on
        # it: a 503 that took the whole DB_POOL_TIMEOUT (without the service's error mapping, a
        # 500). With a longer pool timeout, or more clients behind a slow query, the wait grows.
        assert answer.status == 503
        assert answer.json()["error"]["code"] == "database_busy"
        assert answer.seconds >= pool_timeout * 0.9
