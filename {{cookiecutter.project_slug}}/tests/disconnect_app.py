"""The service's real app with test-only routes, served by uvicorn for ``test_disconnects.py``.

A client that really goes away needs a real server and a real socket: an in-process ASGI
transport has no connection to close. So the tests run uvicorn in a process of its own::

    python -m uvicorn --factory tests.disconnect_app:create_app_with_disconnect_routes

The routes sit on the app ``create_app`` builds, inside the service's own middleware, so what the
tests see is what the service does. Each route writes what it did to a journal, one list of
entries per ``run`` (one run per test), which the tests read back with ``GET /t/journal/{run}``:
the test process cannot look inside the server, so the server tells.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from {{ cookiecutter.package_name }}.api.deps import ResourcesDep
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.models import User
from {{ cookiecutter.package_name }}.db.session import transaction

# 499 is nginx's "client closed request": an answer nobody will read, named for the logs.
CLIENT_CLOSED_REQUEST = 499


def report_email(run: str) -> str:
    """The row a finished report leaves behind (the schema has no report table: a user row
    stands in for whatever the work would have saved)."""
    return f"report-{run}@disconnects.test"


def create_app_with_disconnect_routes() -> FastAPI:
    """The service's app, configured from the environment as the service is, plus the routes."""
    app = create_app()
    add_disconnect_routes(app)
    return app


def add_disconnect_routes(app: FastAPI) -> None:
    journal: defaultdict[str, list[str]] = defaultdict(list)

    @app.get("/t/journal/{run}")
    async def read_journal(run: str) -> list[str]:
        return journal[run]

    @app.post("/t/save")
    async def save(run: str, seconds: float, request: Request) -> dict[str, str]:
        """A handler of the usual shape: one await (a query, an upstream call), then the answer."""
        journal[run].append("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            journal[run].append("cancelled")
            raise
        # Only looked at here, to tell the test whether the client was still there at the end.
        gone = await request.is_disconnected()
        journal[run].append("finished, client gone" if gone else "finished, client connected")
        return {"status": "saved"}

    @app.post("/t/reports")
    async def build_report(
        run: str, steps: int, step_seconds: float, resources: ResourcesDep
    ) -> dict[str, str]:
        """The naive long handler: every step, then the commit, whoever is still listening."""
        for step in range(steps):
            await asyncio.sleep(step_seconds)  # one costly call: a query, an upstream request
            journal[run].append(f"step {step}")
        async with transaction(resources.sessionmaker) as session:
            session.add(User(email=report_email(run), name="report"))
        journal[run].append("committed")
        return {"status": "built"}

    @app.post("/t/careful-reports")
    async def build_report_for_a_present_client(
        run: str, steps: int, step_seconds: float, request: Request, resources: ResourcesDep
    ) -> Response:
        """The same work, asking before each step whether anyone still waits for the answer."""
        for step in range(steps):
            if await request.is_disconnected():
                journal[run].append(f"stopped before step {step}: client gone")
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            await asyncio.sleep(step_seconds)
            journal[run].append(f"step {step}")
        async with transaction(resources.sessionmaker) as session:
            session.add(User(email=report_email(run), name="report"))
        journal[run].append("committed")
        return Response(status_code=201)

    @app.get("/t/stream")
    async def stream(run: str, lines: int, line_seconds: float) -> StreamingResponse:
        async def numbered_lines() -> AsyncIterator[bytes]:
            try:
                for index in range(lines):
                    yield f"line {index}\n".encode()
                    journal[run].append(f"sent line {index}")
                    await asyncio.sleep(line_seconds)
                journal[run].append("finished")
            except asyncio.CancelledError:
                journal[run].append("cancelled")
                raise
            finally:
                journal[run].append("closed")

        return StreamingResponse(numbered_lines(), media_type="text/plain")
