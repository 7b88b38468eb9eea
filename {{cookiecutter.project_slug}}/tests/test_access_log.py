"""The access log line: written straight to the JSON handler's stream when that handler is the
only place it would go, through ``logging`` otherwise; the same fields either way.

(The real process writes one such line per request and none from uvicorn:
``tests/test_service_process.py``.)"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from {{ cookiecutter.package_name }}.logs import AccessLog, configure_logging, request_id_var

NAME = "{{ cookiecutter.package_name }}.access"
FIELDS = {"method": "GET", "path": "/users/7", "status": 404}


class Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """The service's logging set up, writing to a buffer; the previous setup restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    token = request_id_var.set("req-7")
    try:
        yield stream
    finally:
        request_id_var.reset(token)
        root.handlers[:], root.level = saved


def test_the_line_has_the_shape_of_every_other_line(json_logging: io.StringIO) -> None:
    AccessLog(NAME).write("GET", "/users/7", 404, 0.0123)
    logging.getLogger("elsewhere").info("an ordinary line")

    access, ordinary = (json.loads(line) for line in json_logging.getvalue().splitlines())
    assert access == {
        "ts": access["ts"], "level": "info", "logger": NAME, "message": "GET /users/7 404",
        "request_id": "req-7", **FIELDS, "duration_ms": 12.3,
    }  # fmt: skip
    assert list(access)[:5] == list(ordinary)[:5]  # ts, level, logger, message, request_id
    assert access["ts"].endswith("Z")
    assert len(access["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_a_handler_of_your_own_gets_an_ordinary_record(json_logging: io.StringIO) -> None:
    handler = Collecting()
    logger = logging.getLogger(NAME)
    logger.addHandler(handler)
    try:
        AccessLog(NAME).write("GET", "/users/7", 404, 0.0123)
    finally:
        logger.removeHandler(handler)

    [record] = handler.records
    assert record.getMessage() == "GET /users/7 404"
    assert {key: getattr(record, key) for key in FIELDS} == FIELDS
    assert json.loads(json_logging.getvalue())["message"] == "GET /users/7 404"  # still JSON


def test_log_level_warning_turns_the_access_log_off(json_logging: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.WARNING)

    assert not AccessLog(NAME).enabled()
