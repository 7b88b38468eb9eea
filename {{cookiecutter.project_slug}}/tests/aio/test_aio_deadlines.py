"""Deadlines on calls and on whole requests, and how a deadline gets defeated.

The middleware tests drive it as an ASGI server would: a tiny hand-written ASGI app, and
``receive``/``send`` callables that record every message. That is real ASGI, not a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.aio.deadlines import (
    DeadlineExceeded,
    Message,
    Receive,
    RequestDeadlineMiddleware,
    Scope,
    Send,
    call_deadline,
    with_deadline,
)


async def test_call_deadline_cuts_a_slow_call_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        async with call_deadline(0.1, what="GET preferences"):
            await asyncio.sleep(5)
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 0.6
    assert isinstance(caught.value, TimeoutError)  # mapped to 504 like any deadline
    assert caught.value.what == "GET preferences"
    assert "GET preferences" in str(caught.value)


async def test_call_deadline_bounds_the_whole_block_not_each_step() -> None:
    # A trickling upstream: every step is quick, the whole (50 x 0.02 s) is slow. A per-step
    # timeout of 0.25 s never fires; the total deadline does.
    steps = 0

    async def read_trickling_body() -> None:
        nonlocal steps
        async with call_deadline(0.3, what="trickle"):
            for _ in range(50):
                async with asyncio.timeout(0.25):
                    await asyncio.sleep(0.02)
                steps += 1

    with pytest.raises(DeadlineExceeded):
        await read_trickling_body()
    assert 1 <= steps < 50


async def test_with_deadline_returns_the_value_in_time() -> None:
    async def quick() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    assert await with_deadline(quick(), 1.0, what="quick") == "ok"
    with pytest.raises(DeadlineExceeded, match="slow"):
        await with_deadline(asyncio.sleep(5), 0.05, what="slow")


async def test_an_inner_timeout_is_not_renamed_by_an_outer_deadline() -> None:
    async def nested() -> None:
        async with call_deadline(5, what="outer"), call_deadline(0.05, what="inner"):
            await asyncio.sleep(5)

    async def raises_its_own() -> None:
        async with call_deadline(5, what="outer"):
            raise TimeoutError("raised by the call itself")

    with pytest.raises(DeadlineExceeded) as caught:
        await nested()
    assert caught.value.what == "inner"
    with pytest.raises(TimeoutError) as plain:
        await raises_its_own()
    assert not isinstance(plain.value, DeadlineExceeded)


@pytest.mark.pitfall
async def test_pitfall_swallowed_cancellation_overruns_the_deadline() -> None:
    async def swallows_cancellation() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # the bug: it eats the deadline's cancel
            await asyncio.sleep(5)
        await asyncio.sleep(0.3)  # ... and the work goes on past the deadline
        return "finished late"

    started = time.monotonic()
    async with asyncio.timeout(0.05):  # no TimeoutError comes out of this block
        result = await swallows_cancellation()
    assert result == "finished late"
    assert time.monotonic() - started >= 0.3


@pytest.mark.pitfall
async def test_pitfall_except_oserror_swallows_a_timeout() -> None:
    async def fetch() -> str:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except OSError:  # meant for connection errors; TimeoutError is an OSError
            return "treated as a connection error"
        return "fetched"

    assert issubclass(TimeoutError, OSError)
    assert await fetch() == "treated as a connection error"


async def test_catch_the_deadline_before_oserror() -> None:
    async def fetch() -> str:
        try:
            async with call_deadline(0.05, what="fetch"):
                await asyncio.sleep(5)
        except TimeoutError:
            return "deadline"
        except OSError:
            return "connection error"
        return "fetched"

    assert await fetch() == "deadline"


# --- RequestDeadlineMiddleware, driven as an ASGI server drives it ---------------------------


def _http_scope(path: str = "/slow") -> Scope:
    return {"type": "http", "method": "GET", "path": path, "headers": []}


class Exchange:
    """The server side of one request: an empty request body in, every sent message recorded."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return int(starts[0]["status"]) if starts else None

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _sleeping_app(seconds: float, observed: list[str], started: asyncio.Event | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if started is not None:
            started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            observed.append("app cancelled")
            raise
        await _respond(send, 200, b"late")

    return app


async def test_middleware_answers_504_json_when_the_app_is_too_slow() -> None:
    observed: list[str] = []
    middleware = RequestDeadlineMiddleware(
        _sleeping_app(5, observed), timeout=0.1, request_id=lambda: "req-7"
    )
    exchange = Exchange()
    started = time.monotonic()
    await middleware(_http_scope(), exchange.receive, exchange.send)
    assert time.monotonic() - started < 1.0
    assert observed == ["app cancelled"]
    assert exchange.status == 504
    headers = dict(exchange.sent[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(exchange.body())
    error = json.loads(exchange.body())["error"]
    assert error["code"] == "deadline_exceeded"
    assert error["request_id"] == "req-7"
    assert error["message"]


async def test_middleware_passes_fast_responses_through() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await _respond(send, 201, b'{"id": 1}')

    exchange = Exchange()
    await RequestDeadlineMiddleware(app, timeout=1.0)(
        _http_scope("/fast"), exchange.receive, exchange.send
    )
    assert exchange.status == 201
    assert exchange.body() == b'{"id": 1}'


async def test_middleware_does_not_send_504_after_the_response_started() -> None:
    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part 1", "more_body": True})
        await asyncio.sleep(5)
        await send({"type": "http.response.body", "body": b"part 2"})

    exchange = Exchange()
    await RequestDeadlineMiddleware(streaming_app, timeout=0.1)(
        _http_scope(), exchange.receive, exchange.send
    )
    assert exchange.status == 200
    assert [m["type"] for m in exchange.sent] == ["http.response.start", "http.response.body"]
    assert exchange.body() == b"part 1"


async def test_middleware_leaves_lifespan_and_websocket_scopes_alone() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.2)  # longer than the deadline: not cut
        calls.append(scope["type"])

    middleware = RequestDeadlineMiddleware(app, timeout=0.05)
    exchange = Exchange()
    await middleware({"type": "lifespan"}, exchange.receive, exchange.send)
    await middleware({"type": "websocket", "path": "/ws"}, exchange.receive, exchange.send)
    assert calls == ["lifespan", "websocket"]
    assert exchange.sent == []


async def test_middleware_lets_the_apps_own_timeout_error_through() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise TimeoutError("the app's own")

    exchange = Exchange()
    with pytest.raises(TimeoutError, match="the app's own"):
        await RequestDeadlineMiddleware(app, timeout=5)(
            _http_scope(), exchange.receive, exchange.send
        )
    assert exchange.sent == []


async def test_middleware_does_not_swallow_the_servers_cancellation() -> None:
    observed: list[str] = []
    started = asyncio.Event()
    middleware = RequestDeadlineMiddleware(_sleeping_app(5, observed, started), timeout=5)
    exchange = Exchange()
    serving = asyncio.create_task(middleware(_http_scope(), exchange.receive, exchange.send))
    await started.wait()
    serving.cancel()  # the server's shutdown grace ran out
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert serving.cancelled()
    assert observed == ["app cancelled"]
    # Not a 504 (it was not our deadline): a 503 in the service's error shape.
    assert exchange.status == 503
    assert json.loads(exchange.body())["error"]["code"] == "unavailable"


async def test_the_servers_cancellation_propagates_even_when_the_client_is_gone() -> None:
    started = asyncio.Event()
    middleware = RequestDeadlineMiddleware(_sleeping_app(5, [], started), timeout=5)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def broken_send(message: Message) -> None:
        raise OSError("connection reset by peer")

    serving = asyncio.create_task(middleware(_http_scope(), receive, broken_send))
    await started.wait()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


@pytest.mark.pitfall
async def test_pitfall_naive_deadline_middleware_swallows_the_servers_cancellation() -> None:
    observed: list[str] = []
    started = asyncio.Event()
    app = _sleeping_app(5, observed, started)

    async def naive_middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # The bug: any cancellation, the server's included, is treated as the deadline.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(app(scope, receive, send), timeout=5)
            return
        await _respond(send, 504, b'{"error": {"code": "deadline_exceeded"}}')

    exchange = Exchange()
    serving = asyncio.create_task(naive_middleware(_http_scope(), exchange.receive, exchange.send))
    await started.wait()
    serving.cancel()
    await serving  # returns normally: the server's cancellation was eaten
    assert not serving.cancelled()
    assert exchange.status == 504  # and a deadline that never happened was reported
