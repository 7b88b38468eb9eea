"""One error path: every failure is answered in the service's shape, logged once with the
request id, and never reaches the server, so the client's keep-alive connection survives it.

What happens after an error depends on the server (uvicorn closes a connection when an
exception reaches it, and logs it again), so these tests run the service as a real process
(``python -m {{ cookiecutter.package_name }}``) and send their requests by hand on one
connection (``raw_http.py``): a request answered on the same socket after a 5xx is the proof
that the connection was kept. The database is made to fail for real: a statement past
``DB_STATEMENT_TIMEOUT`` behind a lock the test holds, a pool whose connections the test keeps
busy, a connection terminated by the server, a server process stopped (for asyncpg's backstop),
a port where nothing listens, and a column renamed under the service (a bug: the 500).

The pitfall serves a bare app with the usual catch-all, ``add_exception_handler(Exception,
...)``, on a real uvicorn: the client gets its 500, then the server logs the error a second time
and closes the connection, and the 500 has no ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }} import errors
from {{ cookiecutter.package_name }}.aio.fanout import FanoutError
from {{ cookiecutter.package_name }}.db.reads import ConnectionLostError
from {{ cookiecutter.package_name }}.errors import (
    DATABASE_BUSY,
    DATABASE_REFUSED_VALUE,
    DATABASE_TIMEOUT,
    DATABASE_UNAVAILABLE,
    INTERNAL_ERROR,
    ErrorMiddleware,
    answer_for,
    error_response,
)
from {{ cookiecutter.package_name }}.request_id import RequestIdMiddleware

from .database_pressure import backends_waiting_for_a_lock, users_table_locked
from .raw_http import Answer, KeepAliveConnection, ServerClosedConnection
from .service_process import ServiceProcess, free_port, running_service

POOL_SIZE = 2
POOL_TIMEOUT = 0.5
STATEMENT_TIMEOUT = 2.0
BACKSTOP = STATEMENT_TIMEOUT + 1.0  # asyncpg's command_timeout (db/engine.py)
RETRY_AFTER = 2  # not the default, so the header is seen to follow the setting
REQUEST_TIMEOUT = 10.0


def _environment(database_url: str) -> dict[str, str]:
    return {
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": "0",
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "DB_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
        "REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "RETRY_AFTER": str(RETRY_AFTER),
        # The gate must not refuse first: these tests are about what the database does.
        "ADMISSION_LIMIT": "100",
    }


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[ServiceProcess]:
    async with running_service(_environment(database_url)) as running:
        yield running


@asynccontextmanager
async def connection_to(service: ServiceProcess) -> AsyncIterator[KeepAliveConnection]:
    async with await KeepAliveConnection.open(service.base_url) as connection:
        yield connection


def new_request_id() -> dict[str, str]:
    return {"X-Request-ID": f"test-{uuid.uuid4().hex}"}


async def new_user(connection: KeepAliveConnection) -> int:
    answer = await connection.request(
        "POST", "/users", json_body={"email": f"{uuid.uuid4().hex}@example.com", "name": "E"}
    )
    assert answer.status == 201, answer.body
    user_id: int = answer.json()["id"]
    return user_id


def records_of(service: ServiceProcess) -> list[dict[str, Any]]:
    """The service's JSON log records (any other text on stderr is not a record)."""
    return [json.loads(line) for line in service.stderr_lines if line.startswith("{")]


async def _eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a plain condition (log lines arrive through a pipe, with no event) a bounded time."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.02)


async def logged_once(service: ServiceProcess, failed: str, next_request: str) -> dict[str, Any]:
    """The one warning or error logged for request ``failed``, checked once the log has reached
    request ``next_request``, sent after it on the same connection: a second line about the
    failure, if the server wrote one, would be in the log by then."""
    await _eventually(
        lambda: any(record.get("request_id") == next_request for record in records_of(service))
    )
    about_it = [
        record
        for record in records_of(service)
        if record.get("request_id") == failed and record["level"] in {"warning", "error"}
    ]
    assert len(about_it) == 1, about_it
    assert not [
        record
        for record in records_of(service)
        if "Exception in ASGI application" in str(record["message"])
    ]
    return about_it[0]


def assert_error(answer: Answer, status: int, code: str, request_id: str) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-request-id"] == request_id
    error = answer.json()["error"]
    assert (error["code"], error["request_id"]) == (code, request_id)


# --- the database, too slow --------------------------------------------------------------------


async def test_a_statement_past_its_timeout_is_504_and_the_connection_serves_the_next_request(
    service: ServiceProcess, db_engine: AsyncEngine
) -> None:
    async with connection_to(service) as connection:
        user_id = await new_user(connection)
        failing, following = new_request_id(), new_request_id()

        async with users_table_locked(db_engine):
            answer = await connection.request("GET", f"/users/{user_id}", headers=failing)
        after = await connection.request("GET", f"/users/{user_id}", headers=following)

    assert_error(answer, 504, "database_timeout", failing["X-Request-ID"])
    # The server's statement_timeout ended it, well before the request's own deadline.
    assert STATEMENT_TIMEOUT * 0.9 <= answer.seconds < REQUEST_TIMEOUT
    assert after.status == 200  # on the same connection
    record = await logged_once(service, failing["X-Request-ID"], following["X-Request-ID"])
    assert (record["error_code"], record["status"]) == ("database_timeout", 504)
    assert "exception" not in record  # expected under load: one line, no stack trace


async def test_a_pool_with_no_free_connection_is_503_with_retry_after(
    service: ServiceProcess, db_engine: AsyncEngine
) -> None:
    async with connection_to(service) as connection:
        user_id = await new_user(connection)
        failing, following = new_request_id(), new_request_id()

        async with users_table_locked(db_engine):
            # Every pooled connection is taken by a request that waits for the lock.
            holders = [
                asyncio.create_task(_get_on_a_new_connection(service, f"/users/{user_id}"))
                for _ in range(POOL_SIZE)
            ]
            await backends_waiting_for_a_lock(db_engine, POOL_SIZE)
            answer = await connection.request("GET", f"/users/{user_id}", headers=failing)
        held = await asyncio.gather(*holders)
        after = await connection.request("GET", f"/users/{user_id}", headers=following)

    assert_error(answer, 503, "database_busy", failing["X-Request-ID"])
    assert answer.headers["retry-after"] == str(RETRY_AFTER)
    # It waited DB_POOL_TIMEOUT for a connection, and no longer: the holders still held theirs.
    assert POOL_TIMEOUT * 0.9 <= answer.seconds < STATEMENT_TIMEOUT
    assert [holder.status for holder in held] == [200] * POOL_SIZE
    assert after.status == 200
    record = await logged_once(service, failing["X-Request-ID"], following["X-Request-ID"])
    assert record["error_code"] == "database_busy"


async def _get_on_a_new_connection(service: ServiceProcess, path: str) -> Answer:
    async with connection_to(service) as connection:
        return await connection.request("GET", path)


# --- the database, gone ------------------------------------------------------------------------


async def test_a_connection_the_database_drops_is_503_and_the_next_request_is_served(
    service: ServiceProcess, db_engine: AsyncEngine
) -> None:
    async with connection_to(service) as connection:
        user_id = await new_user(connection)
        failing, following = new_request_id(), new_request_id()

        # A write: a read that loses its connection is run again on a new one instead
        # (db/reads.py, tests/test_read_path.py), and here it would wait for the lock again.
        order = {"item": "teapot", "quantity": 1}
        async with users_table_locked(db_engine):
            request = asyncio.create_task(
                connection.request(
                    "POST", f"/users/{user_id}/orders", json_body=order, headers=failing
                )
            )
            [pid] = await backends_waiting_for_a_lock(db_engine, 1)
            async with db_engine.connect() as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            answer = await request
        after = await connection.request("GET", f"/users/{user_id}", headers=following)

    assert_error(answer, 503, "database_unavailable", failing["X-Request-ID"])
    assert answer.headers["retry-after"] == str(RETRY_AFTER)
    assert after.status == 200  # the pool replaced the dropped connection
    record = await logged_once(service, failing["X-Request-ID"], following["X-Request-ID"])
    assert record["error_code"] == "database_unavailable"


async def test_a_database_that_refuses_connections_is_503_on_a_connection_that_stays_open(
    database_url: str,
) -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    environment = {**_environment(database_url), "DATABASE_URL": nowhere}
    async with running_service(environment) as service, connection_to(service) as connection:
        first, second = new_request_id(), new_request_id()
        answers = [
            await connection.request("GET", "/users/1", headers=request_id)
            for request_id in (first, second)
        ]
        record = await logged_once(service, first["X-Request-ID"], second["X-Request-ID"])

    assert_error(answers[0], 503, "database_unavailable", first["X-Request-ID"])
    assert_error(answers[1], 503, "database_unavailable", second["X-Request-ID"])
    assert answers[0].headers["retry-after"] == str(RETRY_AFTER)
    assert "ConnectionRefusedError" in str(record["message"])


def _can_stop_server_processes() -> bool:
    # Only the embedded PostgreSQL, which the tests started on this machine as this user: a pid
    # of a server elsewhere could name an unrelated local process.
    return not os.environ.get("TEST_DATABASE_URL") and hasattr(signal, "SIGSTOP")


@pytest.mark.skipif(not _can_stop_server_processes(), reason="needs the embedded PostgreSQL")
async def test_a_database_that_stops_answering_is_504_from_the_client_side_backstop(
    service: ServiceProcess, db_engine: AsyncEngine
) -> None:
    async with connection_to(service) as connection:
        user_id = await new_user(connection)
        failing, following = new_request_id(), new_request_id()

        async with users_table_locked(db_engine):
            request = asyncio.create_task(
                connection.request("GET", f"/users/{user_id}", headers=failing)
            )
            [pid] = await backends_waiting_for_a_lock(db_engine, 1)
            # A server process that is stopped cannot enforce its statement_timeout: only
            # asyncpg's command_timeout, a second later, ends the wait (a hung host, a network
            # partition).
            os.kill(pid, signal.SIGSTOP)
        try:
            answer = await request
        finally:
            os.kill(pid, signal.SIGCONT)
        after = await connection.request("GET", f"/users/{user_id}", headers=following)

    assert_error(answer, 504, "database_timeout", failing["X-Request-ID"])
    assert BACKSTOP * 0.9 <= answer.seconds < REQUEST_TIMEOUT
    assert after.status == 200
    record = await logged_once(service, failing["X-Request-ID"], following["X-Request-ID"])
    assert "TimeoutError" in str(record["message"])


# --- a bug: the 500 ----------------------------------------------------------------------------


async def test_an_unexpected_error_is_a_500_logged_once_and_the_connection_stays_open(
    service: ServiceProcess, db_engine: AsyncEngine
) -> None:
    async with connection_to(service) as connection:
        user_id = await new_user(connection)
        failing, following = new_request_id(), new_request_id()

        # Schema drift, a bug of ours: the code reads a column the table no longer has.
        async with db_engine.begin() as admin:
            await admin.execute(text("ALTER TABLE orders RENAME COLUMN item TO item_renamed"))
        try:
            answer = await connection.request("GET", f"/users/{user_id}/orders", headers=failing)
        finally:
            async with db_engine.begin() as admin:
                await admin.execute(text("ALTER TABLE orders RENAME COLUMN item_renamed TO item"))
        after = await connection.request("GET", f"/users/{user_id}", headers=following)

    assert_error(answer, 500, "internal_error", failing["X-Request-ID"])
    assert b"item_renamed" not in answer.body
    assert b"Traceback" not in answer.body
    assert after.status == 200  # the same connection, after a 500
    record = await logged_once(service, failing["X-Request-ID"], following["X-Request-ID"])
    assert record["level"] == "error"
    assert record["message"] == "unhandled error"
    assert "UndefinedColumnError" in record["exception"]  # the stack trace is in the log only


# --- the mapping, case by case -----------------------------------------------------------------


def _raised(error: Exception) -> Exception:
    """``error`` with a traceback, as a handler receives it."""
    try:
        raise error
    except Exception as caught:
        return caught


def test_a_database_failure_inside_a_fan_out_is_answered_as_that_failure() -> None:
    pool_timeout = _raised(PoolTimeoutError("QueuePool limit reached"))
    wrapped = FanoutError("orders", pool_timeout)
    wrapped.__cause__ = pool_timeout

    assert answer_for(wrapped) is DATABASE_BUSY


def test_errors_of_the_hot_read_on_the_driver_connection_keep_their_answers() -> None:
    # db/reads.py runs GET /users/{id} on asyncpg's connection, so SQLAlchemy wraps nothing:
    # the driver's own errors must get the answers their wrapped versions get.
    timeout = asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
    refused = asyncpg.exceptions.StringDataRightTruncationError("value too long")
    assert answer_for(_raised(timeout)) is DATABASE_TIMEOUT
    assert answer_for(_raised(refused)) is DATABASE_REFUSED_VALUE
    assert answer_for(_raised(ConnectionLostError("lost twice"))) is DATABASE_UNAVAILABLE
    # A server error that is none of these is a bug of ours until proven otherwise.
    unknown = asyncpg.exceptions.UndefinedColumnError("column does not exist")
    assert answer_for(_raised(unknown)) is INTERNAL_ERROR


def test_a_timeout_error_of_our_own_code_is_not_taken_for_the_database() -> None:
    # Only a TimeoutError raised inside asyncpg is its backstop; anything else is ours to fix.
    assert answer_for(_raised(TimeoutError())) is INTERNAL_ERROR
    assert answer_for(_raised(ConnectionRefusedError())) is INTERNAL_ERROR


async def test_an_error_after_the_response_started_is_logged_and_the_response_left_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[dict[str, Any]] = []

    async def streaming_then_failing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("failed mid-stream")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    middleware = ErrorMiddleware(streaming_then_failing)
    with caplog.at_level(logging.ERROR, logger=errors.__name__):
        await middleware({"type": "http", "method": "GET", "path": "/s"}, receive, send)

    # No second status, no closing chunk that would make the cut body look complete: the
    # server sees an unfinished response and closes the connection, which tells the client.
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1]["more_body"] is True
    [record] = [record for record in caplog.records if record.exc_info]
    assert record.response_started is True  # type: ignore[attr-defined]


# --- the pitfall -------------------------------------------------------------------------------


def _naive_app() -> FastAPI:
    """The usual advice: one handler for ``Exception`` that logs and answers 500 JSON."""
    app = FastAPI()

    async def catch_all(_: Request, error: Exception) -> JSONResponse:
        logging.getLogger("naive").error("unhandled error", exc_info=error)
        return error_response(500, "internal_error", "internal server error")

    app.add_exception_handler(Exception, catch_all)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/fine")
    async def fine() -> dict[str, str]:
        return {"status": "fine"}

    app.add_middleware(RequestIdMiddleware)
    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on a real uvicorn in this process (the behaviour under test is uvicorn's)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await _eventually(lambda: server.started or task.done())
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.mark.pitfall
async def test_pitfall_a_catch_all_exception_handler_logs_twice_and_drops_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        async with (
            serving(_naive_app()) as base_url,
            await KeepAliveConnection.open(base_url) as connection,
        ):
            answer = await connection.request("GET", "/boom", headers=new_request_id())
            with pytest.raises(ServerClosedConnection):
                await connection.request("GET", "/fine")

    # The client did get the handler's 500 JSON ...
    assert answer.status == 500
    assert answer.json()["error"]["code"] == "internal_error"
    # ... but from outside every middleware of the app: no X-Request-ID, and no request_id in the
    # body (the handler runs after the request id middleware has finished).
    assert "x-request-id" not in answer.headers
    assert "request_id" not in answer.json()["error"]
    # Starlette re-raised the exception after answering: uvicorn logged it again, with its
    # stack trace, then closed the connection (the next request above failed).
    errors = [record for record in caplog.records if record.exc_info]
    assert [record.name for record in errors] == ["naive", "uvicorn.error"]
    assert errors[1].getMessage().startswith("Exception in ASGI application")
