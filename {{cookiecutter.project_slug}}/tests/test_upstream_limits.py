"""Upstream answers are untrusted input too: read no further than ``UPSTREAM_MAX_BODY_BYTES``
and validated against their schema; either failure is a 502 and nothing of the answer is passed
on. The upstream here is a real HTTP server on 127.0.0.1 that serves whatever body it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx2
import pytest

from {{ cookiecutter.package_name }}.upstream.calls import UpstreamError, Upstreams
from {{ cookiecutter.package_name }}.upstream.client import create_http_client

from .conftest import make_settings, running_app

CAP = 64 * 1024
HUGE = 30 * 1024 * 1024
PIECE = 64 * 1024


@dataclass
class RawUpstream:
    """Answers every request with ``body`` (in pieces, with or without a Content-Length), or
    with ``by_route[<first path segment>]``, and counts the body bytes each answer managed to
    hand to the socket."""

    body: bytes = b"{}"
    by_route: dict[str, bytes] = field(default_factory=dict)
    declare_length: bool = True
    written: list[int] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # set after each answer
    base_url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        written = 0
        body = self.body
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            route = request.split(b" ", 2)[1].decode().strip("/").split("/")[0].split("?")[0]
            body = self.by_route.get(route, self.body)
            framing = f"content-length: {len(body)}" if self.declare_length else ""
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n"
            writer.write((head + "connection: close\r\n\r\n").encode())
            for start in range(0, len(body), PIECE):
                writer.write(body[start : start + PIECE])
                await writer.drain()
                written += PIECE
        except ConnectionError:
            pass  # the client hung up: what it refused to read is not sent
        finally:
            self.written.append(min(written, len(body)))
            self.answered.set()
            writer.transport.abort()


@contextlib.asynccontextmanager
async def raw_upstream(upstream: RawUpstream) -> AsyncIterator[RawUpstream]:
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield upstream


@contextlib.asynccontextmanager
async def upstreams_for(upstream: RawUpstream) -> AsyncIterator[Upstreams]:
    settings = make_settings("postgresql+asyncpg://u@db/app", upstream_timeout=5.0)
    # Loading the CA bundle reads files: off the loop, as the lifespan does it.
    client = await asyncio.to_thread(create_http_client, settings)
    try:
        yield Upstreams(
            client,
            preferences_url=upstream.base_url,
            notifier_url=upstream.base_url,
            deadline=settings.upstream_timeout,
            max_body_bytes=CAP,
        )
    finally:
        await client.aclose()


def huge_preferences() -> bytes:
    head = b'{"user_id": 7, "language": "en", "padding": "'
    return head + b"x" * HUGE + b'"}'


@pytest.mark.parametrize("declare_length", [True, False], ids=["declared", "streamed"])
async def test_an_answer_past_the_cap_is_502_and_read_no_further(declare_length: bool) -> None:
    upstream = RawUpstream(huge_preferences(), declare_length=declare_length)
    async with raw_upstream(upstream), upstreams_for(upstream) as upstreams:
        with pytest.raises(UpstreamError, match=f"more than {CAP} bytes") as raised:
            await upstreams.preferences(7)
        async with asyncio.timeout(5):
            await upstream.answered.wait()  # the server notices the hang-up on its next write

    assert raised.value.status_code == 502
    # The client hung up at the cap: what was written is what the sockets could buffer.
    assert upstream.written[0] < HUGE // 4


@pytest.mark.pitfall
async def test_pitfall_response_content_reads_the_whole_answer() -> None:
    upstream = RawUpstream(huge_preferences())
    async with raw_upstream(upstream), httpx2.AsyncClient(timeout=10) as client:
        response = await client.get(f"{upstream.base_url}/preferences/7")

    assert len(response.content) > HUGE  # all of it in memory before anyone looked


@pytest.mark.parametrize(
    ("route", "answer"),
    [
        ("preferences", {"user_id": 7, "language": 42}),
        ("preferences", {"user_id": 8, "language": "en"}),  # another user's
        ("preferences", ["not", "an", "object"]),
        ("notifications", [{"user_id": 7}, {"order_id": 3}]),
        ("notifications", [{"user_id": 7}] * 101),  # more than the notifier keeps
    ],
)
async def test_an_answer_that_breaks_its_schema_is_502(route: str, answer: object) -> None:
    upstream = RawUpstream(json.dumps(answer).encode())
    async with raw_upstream(upstream), upstreams_for(upstream) as upstreams:
        call = upstreams.preferences if route == "preferences" else upstreams.recent_notifications
        with pytest.raises(UpstreamError, match=r"schema|another user"):
            await call(7)


async def test_only_the_declared_fields_of_an_answer_are_passed_on() -> None:
    answer = {"user_id": 7, "language": "en", "internal_score": 0.3, "channels": ["sms"]}
    upstream = RawUpstream(json.dumps(answer).encode())
    async with raw_upstream(upstream), upstreams_for(upstream) as upstreams:
        preferences = await upstreams.preferences(7)

    assert preferences == {"user_id": 7, "language": "en", "channels": ["sms"]}


async def test_a_junk_upstream_answer_makes_the_dashboard_a_502(
    database_url: str, empty_tables: None
) -> None:
    # The notifier answers well: only the preferences' schema can make this a 502.
    upstream = RawUpstream(
        json.dumps({"user_id": 1, "language": ["x"] * 3}).encode(),
        by_route={"notifications": b"[]"},
    )
    async with raw_upstream(upstream):
        settings = make_settings(
            database_url, preferences_url=upstream.base_url, notifier_url=upstream.base_url
        )
        async with running_app(settings) as (client, _):
            created = await client.post("/users", json={"email": "j@example.com", "name": "J"})
            dashboard = await client.get(f"/users/{created.json()['id']}/dashboard")

    assert dashboard.status_code == 502
    assert dashboard.json()["error"]["code"] == "upstream_error"
    assert '"x"' not in dashboard.text
