"""A real HTTP/1.1 server on 127.0.0.1 that serves the upstream contract and misbehaves on cue.

Tests script each route: answer at once, after a delay, never (hang), a byte at a time
(trickle), with a connection reset, with a 5xx, or with a body that is not JSON. The server
records what it received and how many calls the client abandoned before the answer was complete,
which is how a test sees that a cancelled call really went away.

It is deliberately not a framework app: misbehaving at the socket level (resets, trickles) needs
control over every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Mode = Literal["ok", "delay", "hang", "trickle", "reset", "fail", "junk"]
Route = Literal["preferences", "notifications", "notify"]


@dataclass
class Behaviour:
    mode: Mode = "ok"
    seconds: float = 0.0  # the delay, or the pause between trickled bytes
    status: int = 500  # for "fail"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


@dataclass
class ScriptedUpstream:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    abandoned: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)
    notifications: defaultdict[int, list[Any]] = field(default_factory=lambda: defaultdict(list))
    base_url: str = ""
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)
    notified: asyncio.Condition = field(default_factory=asyncio.Condition)

    def script(self, route: Route, mode: Mode, seconds: float = 0.0, status: int = 500) -> None:
        self.behaviours[route] = Behaviour(mode, seconds, status)

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> ScriptedUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_for_notifications(self, count: int, within: float = 5.0) -> list[Any]:
        """Wait until ``count`` POST /notifications have arrived; return their bodies."""
        async with asyncio.timeout(within), self.notified:
            await self.notified.wait_for(lambda: self.completed["notify"] >= count)
        return [item.body for item in self.received if item.method == "POST"]

    async def _abandon(self, route: str) -> None:
        async with self.notified:
            self.abandoned[route] += 1
            self.notified.notify_all()

    def arrived(self, route_prefix: str) -> int:
        """How many requests whose path starts with ``route_prefix`` have arrived."""
        return sum(1 for item in self.received if item.path.startswith(route_prefix))

    async def wait_abandoned(self, route: str, count: int, within: float = 2.0) -> int:
        """Wait until the server has seen ``count`` calls of ``route`` abandoned by the client.

        The client closes its side first; the server notices a moment later.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within), self.notified:
                await self.notified.wait_for(lambda: self.abandoned[route] >= count)
        return self.abandoned[route]

    # -- the server ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        raw_body = await reader.readexactly(int(headers.get("content-length", "0")))
        url = urlsplit(target)
        body = json.loads(raw_body) if raw_body else None
        self.received.append(Received(method, url.path, parse_qs(url.query), body, headers=headers))
        route, status, payload = self._answer(method, url.path, parse_qs(url.query), body)
        behaviour = self.behaviours.get(route, Behaviour())
        return await self._respond(route, behaviour, (status, payload), reader, writer)

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[str, int, Any]:
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 2 and parts[0] == "preferences":
            return "preferences", 200, {"user_id": int(parts[1]), "language": "en"}
        if method == "GET" and parts == ["notifications"]:
            user_id = int(query["user_id"][0])
            return "notifications", 200, self.notifications[user_id][-10:]
        if method == "POST" and parts == ["notifications"]:
            return "notify", 202, {"status": "accepted"}
        return "unknown", 404, {"error": "no such route"}

    async def _respond(
        self,
        route: str,
        behaviour: Behaviour,
        answer: tuple[int, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        mode = behaviour.mode
        status, payload = answer
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode in {"hang", "delay"}:
            wait = None if mode == "hang" else behaviour.seconds
            if await _client_left_within(reader, wait):
                await self._abandon(route)
                return False
        if mode == "fail":
            status, payload = behaviour.status, {"error": "scripted failure"}
        content = b"this is not json" if mode == "junk" else json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(content)}\r\n\r\n"
        ).encode()
        writer.write(head)
        if mode == "trickle":
            for index in range(len(content)):
                writer.write(content[index : index + 1])
                try:
                    await writer.drain()
                except ConnectionError:
                    await self._abandon(route)
                    return False
                if await _client_left_within(reader, behaviour.seconds):
                    await self._abandon(route)
                    return False
        else:
            writer.write(content)
        await writer.drain()
        if route == "notify" and status < 300:
            user_id = int(self.received[-1].body["user_id"])
            self.notifications[user_id].append(self.received[-1].body)
        async with self.notified:
            self.completed[route] += 1
            self.notified.notify_all()
        return True


async def _client_left_within(reader: asyncio.StreamReader, seconds: float | None) -> bool:
    """Wait ``seconds`` (forever if None); True as soon as the client closes the connection."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            data = await reader.read(1)
            return data == b""
    return False
