"""What a client that goes away mid-request does to the handler, on the real uvicorn server.

Clients give up all the time: a user closes the tab, a caller's own deadline fires, a load
balancer drops an idle connection. What happens next is the server's and the framework's
choice, not asyncio's, so these tests run uvicorn in a process of its own (see
``disconnect_app.py``) and close a real socket in the middle of a request:

- a normal endpoint is NOT cancelled: uvicorn lets the handler run to its end and throws the
  answer away. Good for a short write (it is never torn in half), bad for long work;
- a ``StreamingResponse`` IS cancelled: uvicorn itself only drops, without a word, what is
  sent after the disconnect, but Starlette's ``StreamingResponse`` listens for the disconnect
  while it streams and cancels the generator, whose ``finally`` runs;
- a long handler that wants to stop must ask: ``await request.is_disconnected()`` between
  steps. The pitfall is the handler that does not, and spends every step and the commit on an
  answer nobody can receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .disconnect_app import report_email
from .service_process import (
    CONTRACT_VARIABLES,
    PROJECT_ROOT,
    admin_headers,
    auth_environment,
    free_port,
)

APP_FACTORY = "tests.disconnect_app:create_app_with_disconnect_routes"
STEPS = 20
STEP_SECONDS = 0.05  # a long handler: 20 steps, 1 s of work


@dataclass
class DisconnectServer:
    host: str
    port: int
    http: httpx2.AsyncClient  # for the journal, on connections of its own
    stderr_lines: list[str] = field(default_factory=list)

    async def journal(self, run: str) -> list[str]:
        response = await self.http.get(f"/t/journal/{run}")
        response.raise_for_status()
        entries: list[str] = response.json()
        return entries

    async def journal_when(
        self, run: str, condition: Callable[[list[str]], bool], within: float = 5.0
    ) -> list[str]:
        """Poll the journal (the server cannot push to us) until ``condition`` holds."""
        async with asyncio.timeout(within):
            while not condition(entries := await self.journal(run)):  # noqa: ASYNC110 - over HTTP
                await asyncio.sleep(0.02)
        return entries


async def _collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace"))


async def _wait_until_live(server: DisconnectServer, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.returncode is not None:
            raise RuntimeError("uvicorn exited:\n" + "".join(server.stderr_lines))
        with contextlib.suppress(httpx2.TransportError):
            if (await server.http.get("/health/live")).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start:\n" + "".join(server.stderr_lines))
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def uvicorn_server(database_url: str) -> AsyncIterator[DisconnectServer]:
    """uvicorn serving the service's app and the test routes, one process per test module."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in CONTRACT_VARIABLES}
    env.update({"ENVIRONMENT": "test", "DATABASE_URL": database_url, "GC_FREEZE": "false"})
    env.update(auth_environment())  # auth=bearer: it trusts the tests' tokens
    env["REQUEST_TIMEOUT"] = "30"  # far beyond any test: the service's deadline stays out of it
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT / "src"), str(PROJECT_ROOT), env.get("PYTHONPATH")])
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "--factory", APP_FACTORY,
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", cwd=PROJECT_ROOT,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    async with httpx2.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=5, headers=admin_headers()
    ) as http:
        server = DisconnectServer("127.0.0.1", port, http)
        collector = asyncio.create_task(_collect(process.stderr, server.stderr_lines))
        try:
            await _wait_until_live(server, process)
            yield server
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await collector


@dataclass
class RawRequest:
    """One request on a connection of its own, so the test decides when the socket closes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def hang_up(self) -> None:
        """Close the socket as a client that gives up does (FIN), without reading an answer."""
        self.writer.close()
        await self.writer.wait_closed()


async def send_request(server: DisconnectServer, method: str, target: str) -> RawRequest:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    credentials = "".join(f"{name}: {value}\r\n" for name, value in admin_headers().items())
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: {server.host}\r\n{credentials}"
        "Content-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    return RawRequest(reader, writer)


def new_run() -> str:
    return uuid.uuid4().hex


def steps_done(entries: list[str]) -> int:
    return sum(1 for entry in entries if entry.startswith("step "))


async def committed_reports(engine: AsyncEngine, run: str) -> int:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM users WHERE email = :email"), {"email": report_email(run)}
        )
        return int(result.scalar_one())


async def test_a_normal_endpoint_runs_to_the_end_after_the_client_disconnects(
    uvicorn_server: DisconnectServer,
) -> None:
    run = new_run()
    request = await send_request(uvicorn_server, "POST", f"/t/save?run={run}&seconds=0.5")
    await uvicorn_server.journal_when(run, lambda entries: "started" in entries)

    await request.hang_up()  # mid-request: the handler is in its 0.5 s await

    entries = await uvicorn_server.journal_when(run, lambda entries: len(entries) > 1)
    # Not cancelled: the handler finished its work, and saw at its end that the client had gone
    # (so the close did reach the server while the handler was still running).
    assert entries == ["started", "finished, client gone"]


async def test_a_streaming_response_is_cancelled_when_the_client_disconnects(
    uvicorn_server: DisconnectServer,
) -> None:
    run = new_run()
    lines = 200  # 10 s of streaming if nothing stopped it
    target = f"/t/stream?run={run}&lines={lines}&line_seconds=0.05"
    request = await send_request(uvicorn_server, "GET", target)
    async with asyncio.timeout(5):
        head = await request.reader.readuntil(b"\r\n\r\n")
        await request.reader.readuntil(b"line 0\n")  # the stream has begun to reach us
    assert head.startswith(b"HTTP/1.1 200")

    await request.hang_up()

    entries = await uvicorn_server.journal_when(run, lambda entries: "closed" in entries)
    assert "cancelled" in entries  # the generator was cancelled at its await ...
    assert "finished" not in entries
    assert entries[-2:] == ["cancelled", "closed"]  # ... and its cleanup ran
    assert sum(1 for entry in entries if entry.startswith("sent line")) < lines


async def test_a_long_handler_can_stop_early_by_checking_is_disconnected(
    uvicorn_server: DisconnectServer, db_engine: AsyncEngine, empty_tables: None
) -> None:
    run = new_run()
    target = f"/t/careful-reports?run={run}&steps={STEPS}&step_seconds={STEP_SECONDS}"
    request = await send_request(uvicorn_server, "POST", target)
    await uvicorn_server.journal_when(run, lambda entries: "step 0" in entries)

    await request.hang_up()
    done_when_the_client_left = steps_done(await uvicorn_server.journal(run))  # or fewer

    entries = await uvicorn_server.journal_when(
        run, lambda entries: any(e.startswith("stopped") or e == "committed" for e in entries)
    )
    assert entries[-1].startswith("stopped before step ")
    assert entries[-1].endswith(": client gone")
    # It stopped at the first check after the close (a step or two later on a busy machine),
    # not at the end of the work.
    assert steps_done(entries) <= done_when_the_client_left + 3 < STEPS
    assert "committed" not in entries
    assert await committed_reports(db_engine, run) == 0


@pytest.mark.pitfall
async def test_pitfall_work_after_a_disconnect_is_done_for_nobody(
    uvicorn_server: DisconnectServer, db_engine: AsyncEngine, empty_tables: None
) -> None:
    run = new_run()
    target = f"/t/reports?run={run}&steps={STEPS}&step_seconds={STEP_SECONDS}"
    request = await send_request(uvicorn_server, "POST", target)
    await uvicorn_server.journal_when(run, lambda entries: "step 0" in entries)

    await request.hang_up()
    done_when_the_client_left = steps_done(await uvicorn_server.journal(run))  # or fewer

    entries = await uvicorn_server.journal_when(run, lambda entries: "committed" in entries)
    # Every step ran and the result was committed, most of it after the client had gone: the
    # database, the upstreams and the worker paid for an answer that went nowhere.
    assert steps_done(entries) == STEPS
    assert STEPS - done_when_the_client_left >= STEPS // 2
    assert await committed_reports(db_engine, run) == 1
