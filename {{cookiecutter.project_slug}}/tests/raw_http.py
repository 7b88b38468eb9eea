"""One HTTP/1.1 keep-alive connection driven by hand, for tests about the connection itself.

An HTTP client library opens a new connection whenever the server has closed the previous one,
so a test written with it cannot tell "the connection survived the error" from "the client
quietly reconnected". Here every request goes on the one socket, and a server that closed it is
an exception, never a silent retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit
{%- if cookiecutter.auth == "bearer" %}

from .service_process import admin_headers
{%- endif %}


class ServerClosedConnection(ConnectionError):  # noqa: N818 - named for what happened
    """The server closed the connection instead of answering the request sent on it."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    seconds: float  # from sending the request to the end of the answer

    def json(self) -> Any:
        return json.loads(self.body)


class KeepAliveConnection:
    """Requests sent one after another on a single TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, base_url: str) -> Self:
        url = urlsplit(base_url)
        assert url.hostname is not None
        assert url.port is not None
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer, url.netloc)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        body = b"" if json_body is None else json.dumps(json_body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"host: {self._host}"]
{%- if cookiecutter.auth == "bearer" %}
        # auth=bearer: an admin caller's token unless the test sends its own Authorization.
        headers = {**admin_headers(), **(headers or {})}
{%- endif %}
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if json_body is not None:
            lines += ["content-type: application/json", f"content-length: {len(body)}"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self._writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
            await self._writer.drain()
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            message = f"{method} {path}: the server closed the connection"
            raise ServerClosedConnection(message) from error
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        length = int(answer_headers["content-length"])  # every answer here has one
        content = await self._reader.readexactly(length)
        return Answer(int(status_line.split()[1]), answer_headers, content, loop.time() - started)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):  # the server may have closed it already
            await self._writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()
