"""A request body larger than ``MAX_BODY_BYTES`` is refused with 413 before it is read, on the
real server: from its declared ``Content-Length`` at once, and a chunked body as soon as it
passes the limit. The process's peak memory does not grow with the size of what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .service_process import ServiceProcess, admin_headers, running_service

LIMIT = 1_048_576  # the default of MAX_BODY_BYTES
HUGE = 40 * 1024 * 1024
CHUNK = 64 * 1024
MIB = 1024 * 1024


def _environment(database_url: str, **more: str) -> dict[str, str]:
    return {"ENVIRONMENT": "test", "DATABASE_URL": database_url, "ADMISSION_LIMIT": "100", **more}


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[ServiceProcess]:
    async with running_service(_environment(database_url)) as running:
{%- if cookiecutter.auth == "bearer" %}
        # auth=bearer: the first token the process verifies costs it some memory, once; that
        # is paid here, before the tests compare its peak memory around a large body.
        async with running.client() as client:
            await client.get("/users/0")
{%- endif %}
        yield running


def peak_memory(process: ServiceProcess) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes: it never goes down, so a
    body read whole and freed at once still shows."""
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def huge_json_body(size: int) -> bytes:
    head, tail = b'{"email": "big@example.com", "name": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the server accepted from the socket before it answered
    closed: bool  # the server closed the connection after the answer


async def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    loop = asyncio.get_running_loop()
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("the server closed the connection without an answer")
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    while len(body) < int(headers["content-length"]):
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        body += chunk
    return int(status_line.split()[1]), headers, body


async def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection within a few seconds (a reset counts: it closed
    with our unread bytes still arriving)."""
    try:
        async with asyncio.timeout(5):
            return await asyncio.get_running_loop().sock_recv(sock, 65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def post_huge(
    base_url: str, body: bytes, *, chunked: bool, expect_close: bool = True
) -> Exchange:
    """POST ``body`` to /users on a raw socket, sending as fast as the server reads while
    reading its answer: the status may arrive while most of the body is still unsent. (A raw
    socket, because a stream that fails to write also fails the reading of what had arrived.)"""
    host, port = base_url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {len(body)}"
    credentials = "".join(f"{name}: {value}\r\n" for name, value in admin_headers().items())
    head = (
        f"POST /users HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"{credentials}{framing}\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode())
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):  # the server closed: it will read no more
            for start in range(0, len(body), CHUNK):
                piece = body[start : start + CHUNK]
                framed = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                await loop.sock_sendall(sock, framed)
                sent += len(piece)
            await loop.sock_sendall(sock, b"0\r\n\r\n" if chunked else b"")

    sender = asyncio.create_task(send_body())
    try:
        async with asyncio.timeout(20):
            status, headers, answer = await _read_answer(sock)
        answered_after = sent
        closed = await _closed_by_server(sock) if expect_close else False
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        sock.close()
    return Exchange(status, headers, answer, answered_after, closed)


def assert_payload_too_large(exchange: Exchange) -> None:
    assert exchange.status == 413, exchange.body[:300]
    error = json.loads(exchange.body)["error"]
    assert error["code"] == "payload_too_large"
    assert error["request_id"] == exchange.headers["x-request-id"]


async def test_a_declared_length_over_the_limit_is_413_before_the_body_is_read(
    service: ServiceProcess,
) -> None:
    before = peak_memory(service)

    exchange = await post_huge(service.base_url, huge_json_body(HUGE), chunked=False)

    assert_payload_too_large(exchange)
    assert exchange.closed  # the unread rest cannot be taken for the next request
    # At most what the sockets buffered (about 7 MB here), never the 40 MB.
    assert exchange.sent < HUGE // 2
    assert peak_memory(service) - before < 2 * LIMIT


async def test_a_chunked_body_is_cut_at_the_limit_and_memory_stays_flat(
    service: ServiceProcess,
) -> None:
    before = peak_memory(service)

    exchange = await post_huge(service.base_url, huge_json_body(HUGE), chunked=True)

    assert_payload_too_large(exchange)
    assert exchange.closed
    assert exchange.sent < HUGE // 2
    assert peak_memory(service) - before < 2 * LIMIT


async def test_a_body_within_the_limit_is_served(service: ServiceProcess) -> None:
    body = json.dumps({"email": "fits@example.com", "name": "n" * 100}).encode()

    exchange = await post_huge(service.base_url, body, chunked=True, expect_close=False)

    assert exchange.status == 201, exchange.body


@pytest.mark.pitfall
async def test_pitfall_without_a_limit_a_large_body_is_read_whole(database_url: str) -> None:
    """MAX_BODY_BYTES above the body: what the service does with no limit, as FastAPI and
    uvicorn do by default. All 40 MB are read, held and parsed before the 422."""
    unlimited = _environment(database_url, MAX_BODY_BYTES=str(2 * HUGE))
    async with running_service(unlimited) as service:
        before = peak_memory(service)
        exchange = await post_huge(service.base_url, huge_json_body(HUGE), chunked=False)
        grown = peak_memory(service) - before

    assert exchange.status == 422  # the name is too long: found after reading it all
    assert exchange.sent == HUGE
    assert grown > HUGE
