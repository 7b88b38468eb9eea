"""Deadlines: a total time limit for one outbound call, and one for a whole HTTP request.

Why a total deadline: client libraries time each step (connect, each read), not the call. An
upstream that trickles a byte now and then never trips a read timeout, and a call can last many
times its "timeout". ``asyncio.timeout`` bounds the whole block, body included.

Why ``DeadlineExceeded``: a bare ``TimeoutError`` does not say what was slow. The subclass names
it, and it is still a ``TimeoutError`` for code that maps deadlines to 504. Mind that
``TimeoutError`` is an ``OSError``: a handler for ``except OSError`` written for connection errors
placed before ``except TimeoutError`` catches deadlines too.

A deadline works by cancelling the block. Code inside it that swallows ``CancelledError``
(``except BaseException``, a bare ``except:``, ``except CancelledError`` without re-raise, a
``return`` in ``finally``) defeats it: the block runs on past the deadline and no error is raised.

``RequestDeadlineMiddleware`` is a pure ASGI middleware (no framework import): the app runs in the
server's own task, so a cancellation from the server reaches it and is never mistaken for our
deadline; ``asyncio.timeout`` makes that distinction (it only converts its own cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

# The ASGI types, spelled the way ASGI frameworks spell them, so that this middleware and the
# apps it wraps fit each other's signatures without importing a framework.
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


class DeadlineExceeded(TimeoutError):  # noqa: N818 - named for what happened, like TimeoutError
    """``what`` did not finish within ``seconds``."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not finish within {seconds:g} s")
        self.what = what
        self.seconds = seconds


@asynccontextmanager
async def call_deadline(seconds: float, what: str = "call") -> AsyncIterator[asyncio.Timeout]:
    """Bound the whole ``async with`` block to ``seconds``; past it raise ``DeadlineExceeded``.

    Only this deadline is translated: a ``TimeoutError`` raised by the block itself (a shorter
    inner deadline, for one) propagates unchanged, and so does a cancellation from outside.
    The ``asyncio.Timeout`` is yielded so that the block can read or move its deadline.
    """
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield timeout
    except TimeoutError as exc:
        if timeout.expired():
            raise DeadlineExceeded(what, seconds) from exc
        raise


async def with_deadline(awaitable: Awaitable[T], seconds: float, what: str = "call") -> T:
    """Await ``awaitable`` under ``call_deadline(seconds, what)`` and return its value."""
    async with call_deadline(seconds, what):
        return await awaitable


class RequestDeadlineMiddleware:
    """Give each HTTP request ``timeout`` seconds; past it cancel the app and answer 504.

    If the response has not started, the client gets
    ``{"error": {"code": "deadline_exceeded", "message": ..., "request_id": ...}}`` with status
    504 (``request_id`` only when ``request_id`` returns one). If it has started, the status is
    already on the wire: the middleware just ends the response where it was cut. Lifespan and
    websocket scopes pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        timeout: float,
        request_id: Callable[[], str | None] | None = None,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self.app(scope, receive, watching_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own TimeoutError: its error handling decides, not us
            logger.warning(
                "request exceeded its %g s deadline",
                self.timeout,
                extra={"method": scope.get("method"), "path": scope.get("path")},
            )
            if not response_started:
                message = f"the request did not complete within {self.timeout:g} s"
                await self._send_error(send, 504, "deadline_exceeded", message)
        except asyncio.CancelledError:
            # Not our deadline: the server is cancelling the request (its shutdown grace ran
            # out). Tell the client in the service's error shape rather than leave it to the
            # server's plain-text 500, then let the cancellation go on.
            if not response_started:
                with contextlib.suppress(Exception):  # the client may be gone already
                    message = "the service stopped before the request completed"
                    await self._send_error(send, 503, "unavailable", message)
            raise

    async def _send_error(self, send: Send, status: int, code: str, message: str) -> None:
        error: dict[str, str] = {"code": code, "message": message}
        request_id = self.request_id() if self.request_id is not None else None
        if request_id is not None:
            error["request_id"] = request_id
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
