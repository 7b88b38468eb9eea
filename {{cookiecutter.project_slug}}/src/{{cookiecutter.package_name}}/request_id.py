"""Give every request an id, in the logs, in error bodies and in the ``X-Request-ID`` header;
and write the access log line, which is where that id is most often looked up.

A pure ASGI middleware: it sets a context variable and gets out of the way. (Starlette's
``BaseHTTPMiddleware`` runs the app in another task, which breaks cancellation and context.)

The access log is written here rather than by uvicorn (whose access log is turned off in
``__main__.py``): this middleware already sees every response start, so the line costs no
extra layer, and it carries structured fields (method, path, status, duration) instead of one
preformatted string. How the line is written cheaply: ``AccessLog`` in ``logs.py``.
"""

from __future__ import annotations

import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import AccessLog, request_id_var

HEADER = b"x-request-id"
# Accept a caller's id only if it is short and plain, so it is safe to log and echo.
_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:-]{1,100}$")


def _new_request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID object (a
    # fifth of the instructions, on every request that arrives without an id).
    return os.urandom(16).hex()


class RequestIdMiddleware:
    """``access_log``: where the line of each request goes (None: no access log)."""

    def __init__(self, app: ASGIApp, access_log: AccessLog | None = None) -> None:
        self.app = app
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(HEADER, b"")
        request_id = incoming.decode() if _ACCEPTABLE.match(incoming) else _new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # what the client got if no response ever started

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self._access_log is not None and self._access_log.enabled():
                # The path without the query string: queries carry cursors and, in other
                # services, tokens.
                elapsed = time.perf_counter() - started
                self._access_log.write(scope["method"], scope["path"], status, elapsed)
            request_id_var.reset(token)
