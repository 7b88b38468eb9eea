"""Serving ``/metrics``: a route of the app, or a small server on a port of its own.

On the app's own port, ``/metrics`` is exempt from admission (a saturated service is exactly
when its metrics matter) and needs no debug token (it shows counts and timings, never data).
Where the metrics must not be reachable through the public port (a Service that exposes the app
to other teams), ``METRICS_PORT`` moves them to a separate listener that the lifespan starts and
stops: plain asyncio streams, one request a connection, nothing but ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import Request
from starlette.responses import Response

from .metrics import CONTENT_TYPE, ServiceMetrics

logger = logging.getLogger(__name__)

# A scraper sends a short request; a client that trickles its headers is cut off.
READ_TIMEOUT = 5.0
MAX_REQUEST_HEAD = 8192


async def metrics_endpoint(request: Request) -> Response:
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(await metrics.render(), media_type=CONTENT_TYPE)


class MetricsServer:
    """``GET /metrics`` on its own host and port, for the lifetime of ``async with``."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when 0 was asked for)."""
        if self._server is None:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> MetricsServer:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        logger.info("metrics served on a separate port", extra={"metrics_port": self.port})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # A scrape in progress is a second's work at most; do not let it hold shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].split()
            if len(head) > MAX_REQUEST_HEAD or len(request_line) < 2:
                status, body, content_type = b"400 Bad Request", b"bad request\n", b"text/plain"
            elif request_line[0] != b"GET":
                status, body, content_type = b"405 Method Not Allowed", b"", b"text/plain"
            elif request_line[1].split(b"?", 1)[0] != b"/metrics":
                status, body, content_type = b"404 Not Found", b"not found\n", b"text/plain"
            else:
                status, body, content_type = b"200 OK", await self._metrics.render(), b""
                content_type = CONTENT_TYPE.encode()
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: "
                + content_type
                + b"\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            # A client that went away or never finished its request: nothing to answer.
            logger.debug("metrics connection dropped before an answer")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
