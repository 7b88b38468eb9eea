"""Give every request an id, in the logs, in error bodies and in the ``X-Request-ID`` header.

A pure ASGI middleware: it sets a context variable and gets out of the way. (Starlette's
``BaseHTTPMiddleware`` runs the app in another task, which breaks cancellation and context.)
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id_var

HEADER = b"x-request-id"
# Accept a caller's id only if it is short and plain, so it is safe to log and echo.
_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:-]{1,100}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(HEADER, b"")
        request_id = incoming.decode() if _ACCEPTABLE.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
