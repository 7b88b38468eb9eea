"""Signals sent to the real server process (``python -m {{ cookiecutter.package_name }}``).

What happens on a signal depends on uvicorn and on how the process wires its handlers, so these
tests run the service as a real process, as an operator (or Kubernetes) would signal it:

- SIGUSR1 logs a dump of every asyncio task: a hung request shows what it waits for.
- SIGUSR2 makes faulthandler write every thread's stack to stderr, from C, at once.
- SIGTERM stops accepting, lets in-flight requests finish within ``SHUTDOWN_GRACE``, exits 0.
- The pitfall: a request longer than the grace is cut. That is the price of a bounded grace,
  and the grace must be bounded: uvicorn's own default waits for in-flight requests forever,
  and the orchestrator then kills the process with SIGKILL, skipping every cleanup.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx2
import pytest

from .service_process import ServiceProcess, running_service
from .upstream_server import ScriptedUpstream


def _environment(database_url: str, upstream: ScriptedUpstream, **extra: str) -> dict[str, str]:
    return {
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "PREFERENCES_URL": upstream.base_url,
        "NOTIFIER_URL": upstream.base_url,
        **extra,
    }


def _json_records(service: ServiceProcess) -> list[dict[str, Any]]:
    """The log records, skipping what faulthandler writes: it is raw text, not JSON."""
    return [json.loads(line) for line in service.stderr_lines if line.startswith("{")]


async def _eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a plain condition (there is no event to wait on) for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.02)


async def _new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post(
        "/users", json={"email": f"{uuid.uuid4().hex}@example.com", "name": "Signal"}
    )
    assert response.status_code == 201
    user_id: int = response.json()["id"]
    return user_id


async def _dashboard_in_flight(
    client: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> asyncio.Task[httpx2.Response]:
    """Start a dashboard request and return once its preferences call reached the upstream."""
    user_id = await _new_user(client)
    already = upstream.arrived("/preferences")
    request = asyncio.create_task(client.get(f"/users/{user_id}/dashboard"))
    await _eventually(lambda: upstream.arrived("/preferences") > already or request.done())
    assert not request.done()
    return request


async def test_sigusr1_logs_the_tasks_of_a_request_in_flight(
    database_url: str, upstream: ScriptedUpstream
) -> None:
    environment = _environment(database_url, upstream, UPSTREAM_TIMEOUT="5", REQUEST_TIMEOUT="10")
    upstream.script("preferences", "delay", seconds=1.5)
    async with (
        running_service(environment) as service,
        service.client(timeout=10) as client,
    ):
        request = await _dashboard_in_flight(client, upstream)

        service.process.send_signal(signal.SIGUSR1)

        def dumps() -> list[Mapping[str, Any]]:
            return [
                record
                for record in _json_records(service)
                if str(record["message"]).startswith("asyncio task dump")
            ]

        await _eventually(lambda: bool(dumps()))
        [dump] = dumps()
        assert "Task 'fanout:preferences' [pending] coroutine=_run_source" in str(dump["message"])
        assert " in preferences" in str(dump["message"])  # the chain reaches the upstream call
        assert dump["level"] == "warning"
        # The dump is a side glance: the request it caught in flight completes normally.
        response = await request
    assert response.status_code == 200


async def test_sigusr2_writes_every_threads_stack_and_the_service_keeps_serving(
    database_url: str, upstream: ScriptedUpstream
) -> None:
    async with (
        running_service(_environment(database_url, upstream)) as service,
        service.client(timeout=10) as client,
    ):
        service.process.send_signal(signal.SIGUSR2)

        # faulthandler writes raw text to the stderr file descriptor, not log records.
        await _eventually(lambda: any(" File " in line for line in service.stderr_lines))
        text = "".join(service.stderr_lines)
        assert "Current thread 0x" in text  # the main thread, where the loop runs
        assert "(most recent call first)" in text
        assert "__main__.py" in text  # python -m <package> is at the bottom of the stack

        assert (await client.get("/health/live")).status_code == 200
        assert service.process.returncode is None


async def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(
    database_url: str, upstream: ScriptedUpstream
) -> None:
    environment = _environment(database_url, upstream, SHUTDOWN_GRACE="5", UPSTREAM_TIMEOUT="5")
    upstream.script("preferences", "delay", seconds=1.0)
    async with (
        running_service(environment) as service,
        service.client(timeout=10) as client,
    ):
        request = await _dashboard_in_flight(client, upstream)

        service.process.send_signal(signal.SIGTERM)
        response = await request
        exit_code = await service.wait_for_exit(10)

    assert response.status_code == 200
    assert exit_code == 0
    messages = [record["message"] for record in _json_records(service)]
    assert "service stopping" in messages


@pytest.mark.pitfall
async def test_pitfall_a_request_longer_than_the_grace_is_cut_at_shutdown(
    database_url: str, upstream: ScriptedUpstream
) -> None:
    grace = 1.0
    environment = _environment(
        database_url,
        upstream,
        SHUTDOWN_GRACE=f"{grace:g}",
        UPSTREAM_TIMEOUT="10",
        REQUEST_TIMEOUT="10",
    )
    upstream.script("preferences", "delay", seconds=4.0)
    async with (
        running_service(environment) as service,
        service.client(timeout=10) as client,
    ):
        request = await _dashboard_in_flight(client, upstream)

        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        outcome: httpx2.Response | httpx2.TransportError
        try:
            outcome = await request
        except httpx2.TransportError as error:
            outcome = error
        answered = time.monotonic() - started
        exit_code = await service.wait_for_exit(15)
        exited = time.monotonic() - started

    # The request needed 4 s: it got the grace and was then cut, long before it could finish,
    # and the process still exited 0 (the process's own exit after the server stopped takes
    # a second or two more on a busy machine, hence the wider bound).
    assert grace <= answered < grace + 2
    assert exit_code == 0
    assert exited < grace + 5
    # uvicorn cancelled the request's task; the deadline middleware still answers in the
    # service's error shape (503 unavailable), not uvicorn's plain-text 500.
    assert isinstance(outcome, httpx2.Response), outcome
    assert outcome.status_code == 503
    assert outcome.json()["error"]["code"] == "unavailable"
    assert any(
        "timeout graceful shutdown exceeded" in str(record["message"])
        for record in _json_records(service)
    )
    # The cut reached the upstream call too: its connection was closed, not left running.
    assert await upstream.wait_abandoned("preferences", 1) == 1


async def test_shutdown_fits_in_one_budget_with_requests_and_background_work_in_flight(
    database_url: str, upstream: ScriptedUpstream
) -> None:
    grace = 3.0
    environment = _environment(
        database_url,
        upstream,
        SHUTDOWN_GRACE=f"{grace:g}",
        UPSTREAM_TIMEOUT="30",
        REQUEST_TIMEOUT="60",
    )
    upstream.script("notify", "hang")
    upstream.script("preferences", "hang")
    async with (
        running_service(environment) as service,
        service.client(timeout=60) as client,
    ):
        user_id = await _new_user(client)
        placed = await client.post(f"/users/{user_id}/orders", json={"item": "pen", "quantity": 1})
        assert placed.status_code == 201
        # The order's notification is now stuck on the notifier, in the background ...
        await _eventually(lambda: upstream.arrived("/notifications") > 0)
        # ... and a request is stuck on the preferences service.
        request = await _dashboard_in_flight(client, upstream)

        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        exit_code = await service.wait_for_exit(grace + 15)
        exited = time.monotonic() - started
        request.cancel()

    # The request and the drain shared one budget: an orchestrator that kills at the grace
    # plus a margin finds the process gone. With a grace for each step, it took twice that.
    assert exit_code == 0
    assert grace <= exited < grace + 2
    messages = [str(record["message"]) for record in _json_records(service)]
    assert "timeout graceful shutdown exceeded" in " ".join(messages)
    assert any("still running after" in message for message in messages)  # the drain cut it
    assert "background work drained" in messages
    # An orderly shutdown, not one ended by the watchdog (which would also exit in time).
    assert not any("shutdown did not finish" in message for message in messages)
