"""The transactional session dependency keeps its promises, each shown against a real database.

The routes under test are added to the real app: they write through ``SessionDep`` and then
succeed, fail, or wait to be cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from {{ cookiecutter.package_name }}.api.deps import SessionDep, transactional_session
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.models import User
from {{ cookiecutter.package_name }}.db.session import transaction
from {{ cookiecutter.package_name }}.errors import ServiceError
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import idle_in_transaction, resources_of, running_app
from .service_process import admin_headers

# The same dependency with FastAPI's default scope: exit code after the response is sent.
LateCommitSessionDep = Annotated[AsyncSession, Depends(transactional_session, scope="request")]


class FailAfterWriteError(ServiceError):
    status_code = 418
    code = "failed_after_write"


def add_test_routes(app: FastAPI, written: asyncio.Event) -> None:
    @app.post("/t/commit")
    async def commit(session: SessionDep) -> dict[str, str]:
        session.add(User(email="ok@example.com", name="Ok"))
        return {"status": "written"}

    @app.post("/t/fail-after-write")
    async def fail_after_write(session: SessionDep) -> dict[str, str]:
        session.add(User(email="lost@example.com", name="Lost"))
        await session.flush()
        raise FailAfterWriteError("failed after the row was flushed")

    @app.post("/t/duplicate-at-commit")
    async def duplicate_at_commit(session: SessionDep) -> dict[str, str]:
        # No flush: the unique violation surfaces only when the dependency commits.
        session.add(User(email="taken@example.com", name="Second"))
        return {"status": "written"}

    @app.post("/t/duplicate-at-commit-late")
    async def duplicate_at_commit_late(session: LateCommitSessionDep) -> dict[str, str]:
        session.add(User(email="taken@example.com", name="Second"))
        return {"status": "written"}

    @app.post("/t/write-then-hang")
    async def write_then_hang(session: SessionDep) -> dict[str, str]:
        session.add(User(email="hung@example.com", name="Hung"))
        await session.flush()
        written.set()
        await asyncio.sleep(30)
        return {"status": "never"}


@pytest.fixture
async def written() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def routed(
    settings: Settings, empty_tables: None, written: asyncio.Event
) -> AsyncIterator[tuple[httpx2.AsyncClient, Resources]]:
    app = create_app(settings)
    add_test_routes(app, written)
    async with LifespanManager(app) as manager:
        # Like a real server: an exception raised after the response started is logged by the
        # server, while the client keeps the response it already received.
        transport = httpx2.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://t", headers=admin_headers()
        ) as client:
            await client.get("/health/live")
            yield client, resources_of(manager)


async def emails(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT email FROM users ORDER BY id"))
        return list(rows.scalars())


async def insert_taken(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO users (email, name) VALUES ('taken@example.com', 'First')")
        )


async def test_commits_on_success(
    routed: tuple[httpx2.AsyncClient, Resources], db_engine: AsyncEngine
) -> None:
    client, _ = routed

    response = await client.post("/t/commit")

    assert response.status_code == 200
    assert await emails(db_engine) == ["ok@example.com"]


async def test_nothing_persists_when_the_handler_fails_after_writing(
    routed: tuple[httpx2.AsyncClient, Resources], db_engine: AsyncEngine
) -> None:
    client, _ = routed

    response = await client.post("/t/fail-after-write")

    assert response.status_code == 418
    assert await emails(db_engine) == []


async def test_a_failed_commit_is_the_response(
    routed: tuple[httpx2.AsyncClient, Resources], db_engine: AsyncEngine
) -> None:
    client, _ = routed
    await insert_taken(db_engine)

    response = await client.post("/t/duplicate-at-commit")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert await emails(db_engine) == ["taken@example.com"]


@pytest.mark.pitfall
async def test_pitfall_request_scope_reports_success_for_a_commit_that_failed(
    routed: tuple[httpx2.AsyncClient, Resources], db_engine: AsyncEngine
) -> None:
    client, _ = routed
    await insert_taken(db_engine)

    response = await client.post("/t/duplicate-at-commit-late")

    # The client is told the write succeeded; the database says it never happened.
    assert response.status_code == 200
    assert await emails(db_engine) == ["taken@example.com"]


async def test_no_connection_stays_checked_out_after_requests(
    routed: tuple[httpx2.AsyncClient, Resources],
) -> None:
    client, resources = routed

    for path in ("/t/commit", "/t/fail-after-write", "/t/duplicate-at-commit", "/users/1"):
        await client.post(path) if path.startswith("/t/") else await client.get(path)

    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_cancelled_request_leaves_no_connection_and_no_open_transaction(
    routed: tuple[httpx2.AsyncClient, Resources], written: asyncio.Event, db_engine: AsyncEngine
) -> None:
    client, resources = routed
    request = asyncio.create_task(client.post("/t/write-then-hang"))
    await asyncio.wait_for(written.wait(), timeout=5)

    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request

    assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await idle_in_transaction(db_engine) == 0
    assert await emails(db_engine) == []


async def cancel_until_done(task: asyncio.Task[None]) -> int:
    """Cancel ``task`` on every pass of the loop until it ends, as a deadline, then a shutdown,
    then another deadline would; return how many cancellations it took."""
    cancellations = 0
    while not task.done():
        task.cancel()
        cancellations += 1
        await asyncio.sleep(0)
    return cancellations


async def backend_pid(resources: Resources) -> int:
    async with resources.sessionmaker() as session:
        pid: int = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def repeatedly_cancelled_session(
    open_session: Callable[[], AbstractAsyncContextManager[AsyncSession]],
) -> tuple[int, int]:
    """Use a session in a task and cancel the task again and again, also while the session is
    closing; return the server process of its connection and how many cancellations it took."""
    began = asyncio.Event()
    pids: list[int] = []

    async def work() -> None:
        async with open_session() as session:
            pids.append((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            began.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(work())
    await began.wait()
    cancellations = await cancel_until_done(task)
    assert task.cancelled()
    return pids[0], cancellations


@asynccontextmanager
async def plainly_closed(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """The usual hand-written version: close in ``finally``, with nothing to protect the close."""
    session = sessionmaker()
    try:
        yield session
        await session.commit()
    finally:
        await session.close()


async def test_the_session_closes_before_a_repeatedly_cancelled_task_returns(
    settings: Settings, empty_tables: None
) -> None:
    async with running_app(settings) as (_, resources):
        pid, cancellations = await repeatedly_cancelled_session(
            lambda: transaction(resources.sessionmaker)
        )

        assert cancellations > 1  # the close itself was cancelled, and went on regardless
        # The moment the task is done its connection is back, rolled back and healthy ...
        assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # ... and the next session gets that same connection: nothing had to be reopened.
        assert await backend_pid(resources) == pid


@pytest.mark.pitfall
async def test_pitfall_a_plain_close_cut_by_a_second_cancellation_loses_the_connection(
    settings: Settings, empty_tables: None
) -> None:
    async with running_app(settings) as (_, resources):
        pid, cancellations = await repeatedly_cancelled_session(
            lambda: plainly_closed(resources.sessionmaker)
        )

        assert cancellations > 1
        # SQLAlchemy gives the pool slot back, but the rollback was cut, so it can only
        # terminate the connection: the next session has to open a new one. In a storm of
        # deadlines and a shutdown, every cancelled request costs a reconnect.
        assert resources.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await backend_pid(resources) != pid


@pytest.mark.pitfall
async def test_pitfall_a_session_left_open_by_a_cancelled_task_holds_its_connection(
    settings: Settings, db_engine: AsyncEngine, empty_tables: None
) -> None:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        resources = resources_of(manager)
        began = asyncio.Event()
        opened: list[AsyncSession] = []

        async def naive() -> None:
            session = resources.sessionmaker()  # no `async with`, no close on cancellation
            opened.append(session)
            await session.execute(text("SELECT 1"))
            began.set()
            await asyncio.sleep(30)

        task = asyncio.create_task(naive())
        await began.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # The connection is neither returned nor rolled back: the server sees an open
        # transaction that nobody will ever finish (until garbage collection finds it).
        assert resources.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert await idle_in_transaction(db_engine) == 1
        await opened[0].close()
