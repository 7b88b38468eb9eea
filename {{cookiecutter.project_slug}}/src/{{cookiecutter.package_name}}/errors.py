"""One error shape for every failure: ``{"error": {"code", "message", "request_id"}}``.

Clients get a stable, machine-readable code and a human message; the stack trace goes to the
log only. Validation errors add ``details`` (where and what) and are 422.

One error path. The errors a handler expects (``ServiceError``, ``HTTPException``, validation, a
constraint) have handlers of their own class, which Starlette runs in its ``ExceptionMiddleware``
and which do not re-raise. Everything else reaches ``ErrorMiddleware``, the one place where an
exception becomes a 5xx answer: it is logged once, with the request id, and answered in the
service's shape, and it goes no further. Known failures of the database are answered for what
they are (``answer_for``): no free connection in time is 503 ``database_busy`` with
``Retry-After``; a statement past its timeout is 504 ``database_timeout``; a database that
refuses or drops the connection is 503 ``database_unavailable`` with ``Retry-After``. The rest
is 500 ``internal_error``.

Why not ``app.add_exception_handler(Exception, ...)``: Starlette runs that handler in
``ServerErrorMiddleware``, outside every middleware of the app, and re-raises the exception after
the answer is sent. The server then logs the same error again ("Exception in ASGI application")
and closes the client's keep-alive connection, and the 500 misses what the inner middleware adds
(the ``X-Request-ID`` header). A pure ASGI middleware placed inside ``RequestIdMiddleware`` that
does not re-raise has none of these faults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db.reads import ConnectionLostError
from .logs import request_id_var

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "deadline_exceeded",
}


class ServiceError(Exception):
    """An error the service expects and maps to a status and a code."""

    status_code = 500
    code = "internal_error"
    headers: Mapping[str, str] | None = None

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class NotFoundError(ServiceError):
    status_code = 404
    code = "not_found"


class ConflictError(ServiceError):
    status_code = 409
    code = "conflict"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    request_id = request_id_var.get()
    if request_id is not None:
        error["request_id"] = request_id
    error.update(extra)
    return {"error": error}


def error_response(
    status_code: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, **extra), status_code=status_code, headers=headers
    )


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ServiceError):  # registered for that class only
        raise exc
    return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # registered for that class only
        raise exc
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # registered for that class only
        raise exc
    details = [
        {
            "location": [str(part) for part in error.get("loc", ())],
            "message": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    return error_response(422, "validation_error", "the request is not valid", details=details)


async def _integrity_error(_: Request, exc: Exception) -> JSONResponse:
    # A constraint the handler did not check first, found at flush or commit time: a conflict
    # with existing data, not a server fault. The constraint name goes to the log only.
    logger.warning("integrity error: %s", getattr(exc, "orig", exc).__class__.__name__)
    return error_response(409, "conflict", "the request conflicts with existing data")


def install_error_handlers(app: FastAPI) -> None:
    """The handlers of expected errors. Unexpected ones are ``ErrorMiddleware``'s: no handler
    for ``Exception`` or 500 here (see the module's docstring)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(IntegrityError, _integrity_error)


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What the client is told about an exception no handler took, and how it is logged."""

    status: int
    code: str
    message: str
    retry_later: bool = False  # 503: add Retry-After
    # A known failure of a dependency: a warning without a stack trace. Anything else is a bug
    # of ours until proven otherwise: an error with its stack trace.
    expected: bool = False


INTERNAL_ERROR = ErrorAnswer(500, "internal_error", "internal server error")
DATABASE_BUSY = ErrorAnswer(
    503, "database_busy", "no database connection came free in time; retry later",
    retry_later=True, expected=True,
)  # fmt: skip
DATABASE_TIMEOUT = ErrorAnswer(
    504, "database_timeout", "the database did not answer in time", expected=True
)
DATABASE_UNAVAILABLE = ErrorAnswer(
    503, "database_unavailable", "the database cannot be reached; retry later",
    retry_later=True, expected=True,
)  # fmt: skip
# The database refused a value (SQLSTATE class 22, data exception: too long for its column, out
# of range, not valid for its type). The request's fault, not the service's: a 422, logged as
# one warning line with no stack trace, since the driver's message may quote the value.
DATABASE_REFUSED_VALUE = ErrorAnswer(
    422, "validation_error", "a value of the request is not accepted by the database",
    expected=True,
)  # fmt: skip

# SQLSTATE of a statement cancelled by statement_timeout (query_canceled; an administrator's
# pg_cancel_backend gives it too).
STATEMENT_TIMEOUT_SQLSTATE = "57014"
# The server is going away or cannot take the connection: class 08 (connection exception),
# admin or crash shutdown, still starting up, too many connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
# Class 22: a value the database refuses (22001 too long, 22003 out of range, 22P02 bad syntax).
DATA_EXCEPTION_CLASS = "22"


def answer_for(error: BaseException) -> ErrorAnswer:
    """The answer to ``error`` or to what caused it (``raise ... from``): a fan-out failure
    caused by a statement timeout is a statement timeout."""
    for link in _explicit_causes(error):
        answer = _database_answer(link)
        if answer is not None:
            return answer
        if isinstance(link, StarletteHTTPException):  # raised outside the router's handlers
            code = _CODES.get(link.status_code, "error")
            message = link.detail if isinstance(link.detail, str) else code.replace("_", " ")
            return ErrorAnswer(link.status_code, code, message, expected=True)
    return INTERNAL_ERROR


def _explicit_causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__


def _database_answer(error: BaseException) -> ErrorAnswer | None:
    if isinstance(error, PoolTimeoutError):  # waited pool_timeout for a connection in vain
        return DATABASE_BUSY
    if isinstance(error, DBAPIError):
        sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
        return _sqlstate_answer(sqlstate, connection_lost=error.connection_invalidated)
    if isinstance(error, asyncpg.PostgresError):  # raised on the driver's connection (db/reads.py)
        return _sqlstate_answer(str(error.sqlstate or ""), connection_lost=False)
    if isinstance(error, ConnectionLostError):
        return DATABASE_UNAVAILABLE
    if isinstance(error, OSError):
        return _plain_driver_answer(error)
    return None


def _sqlstate_answer(sqlstate: str, *, connection_lost: bool) -> ErrorAnswer | None:
    """The driver's error, wrapped by SQLAlchemy or not: the SQLSTATE tells what happened."""
    if sqlstate == STATEMENT_TIMEOUT_SQLSTATE:
        return DATABASE_TIMEOUT
    if connection_lost or sqlstate.startswith("08"):
        return DATABASE_UNAVAILABLE
    if sqlstate.startswith(DATA_EXCEPTION_CLASS):
        return DATABASE_REFUSED_VALUE
    return DATABASE_UNAVAILABLE if sqlstate in _UNAVAILABLE_SQLSTATES else None


def _plain_driver_answer(error: OSError) -> ErrorAnswer | None:
    """asyncpg raises some failures as plain ``OSError`` and ``TimeoutError``, and SQLAlchemy
    passes them on unwrapped: a refused or unreachable server, a connect timeout, and the
    ``command_timeout`` backstop. A plain ``TimeoutError`` could be anything, so the traceback
    decides: raised from inside asyncpg, it is the database's."""
    modules = _traceback_modules(error)
    if not any(module.startswith("asyncpg") for module in modules):
        return None
    if isinstance(error, TimeoutError) and "asyncpg.connect_utils" not in modules:
        return DATABASE_TIMEOUT  # the backstop: the server did not answer a statement
    return DATABASE_UNAVAILABLE  # refused, unreachable, or no answer while connecting


def _traceback_modules(error: BaseException) -> set[str]:
    modules = set()
    frames = error.__traceback__
    while frames is not None:
        modules.add(str(frames.tb_frame.f_globals.get("__name__", "")))
        frames = frames.tb_next
    return modules


class ErrorMiddleware:
    """Answer any exception the app raised and no handler took; log it once; never re-raise.

    Place it inside ``RequestIdMiddleware`` so that the answer carries ``X-Request-ID`` and the
    log line the request id. When the response had already started, its status is on the wire:
    the error is logged and the response left cut, so the server closes the connection and the
    client sees an incomplete body rather than a complete-looking wrong one. A cancellation is
    not an error and passes through. ``Retry-After`` of the 503s is ``retry_after`` seconds.
    """

    def __init__(self, app: ASGIApp, retry_after: int = 1) -> None:
        self.app = app
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception as error:  # noqa: BLE001 - the end of the line: answered, never lost
            answer = answer_for(error)
            _log(answer, error, scope, response_started)
            if not response_started:
                headers = {"retry-after": str(self.retry_after)} if answer.retry_later else None
                response = error_response(answer.status, answer.code, answer.message, headers)
                await response(scope, receive, send)


def _log(answer: ErrorAnswer, error: Exception, scope: Scope, response_started: bool) -> None:
    extra = {
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": answer.status,
        "error_code": answer.code,
        "response_started": response_started,
    }
    if answer.expected:
        # Expected under load or an outage, and possibly many a second: one line, no trace.
        logger.warning("%s (%s)", answer.message, type(error).__name__, extra=extra)
    else:
        logger.error("unhandled error", exc_info=error, extra=extra)
