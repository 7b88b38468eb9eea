"""A proxy in front of PostgreSQL that counts the round trips its clients make.

Every byte is passed on unchanged; the client's side is read as PostgreSQL's frontend protocol:
after the untyped start (SSL request, startup message), each message is a type byte and a
length. A round trip is a simple query (``Q``: how asyncpg sends ``BEGIN``, ``COMMIT`` and
``ROLLBACK``) or a ``Sync`` (``S``), which ends a batch of extended-protocol messages (parse, bind,
execute) and makes the server answer. Counting here sees what the server receives, whatever the
driver or SQLAlchemy do above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from types import TracebackType

from sqlalchemy import make_url

_UNTYPED_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest: the startup follows


@dataclass
class WireCounter:
    """``async with WireCounter(url) as counter``: ``counter.url`` reaches the same database
    through the proxy; ``counter.trips`` lists each round trip, ``"Q <sql>"`` or ``"S"``."""

    target_url: str
    trips: list[str] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> WireCounter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parsed = make_url(self.target_url)
        # No TLS through the proxy, or the messages could not be read.
        through = parsed.set(host="127.0.0.1", port=port, query={"ssl": "disable"})
        self.url = through.render_as_string(hide_password=False)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    def simple_queries(self) -> list[str]:
        return [trip[2:] for trip in self.trips if trip.startswith("Q ")]

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parsed = make_url(self.target_url)
        socket_dir = parsed.query.get("host")
        port = parsed.port or 5432
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(parsed.host or "127.0.0.1", port)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await self._open_upstream()
        pipes = [
            asyncio.create_task(self._client_to_server(client_in, server_out)),
            asyncio.create_task(_copy(server_in, client_out)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)
            for writer in (client_out, server_out):
                writer.close()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # the untyped start: length, then a request code or protocol version
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                writer.write(head + await reader.readexactly(length - 8))
                if code not in _UNTYPED_REQUESTS:
                    break
            while True:
                head = await reader.readexactly(5)
                kind, length = head[:1], struct.unpack("!i", head[1:])[0]
                body = await reader.readexactly(length - 4)
                if kind == b"Q":
                    self.trips.append("Q " + body.rstrip(b"\0").decode().strip())
                elif kind == b"S":
                    self.trips.append("S")
                writer.write(head + body)
                await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
