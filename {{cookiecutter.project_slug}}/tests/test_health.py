"""Liveness and readiness, including a database that refuses and one that hangs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx2
import pytest
from asgi_lifespan import LifespanManager

from {{ cookiecutter.package_name }}.app import create_app

from .conftest import make_settings


async def test_live_is_200(client: httpx2.AsyncClient) -> None:
    response = await client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_ready_is_200_with_a_database(client: httpx2.AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word: a hung database."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def _ready_status(database_url: str) -> tuple[int, dict[str, object], float]:
    settings = make_settings(database_url, readiness_timeout=0.5, db_connect_timeout=5.0)
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=manager.app), base_url="http://t"
        ) as client,
    ):
        started = time.monotonic()
        response = await client.get("/health/ready")
        return response.status_code, response.json(), time.monotonic() - started


async def test_ready_is_503_when_the_database_refuses() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/postgres"

    status, body, _ = await _ready_status(url)

    assert status == 503
    assert body["error"]["code"] == "unavailable"  # type: ignore[index]


async def test_ready_is_503_within_its_deadline_when_the_database_hangs(
    silent_server: int,
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{silent_server}/postgres"

    status, _, elapsed = await _ready_status(url)

    # The connect timeout is 5 s; the readiness deadline (0.5 s) is what ends the wait.
    assert status == 503
    assert elapsed < 3.0
