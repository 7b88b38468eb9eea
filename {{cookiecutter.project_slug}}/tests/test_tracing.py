"""Traces: a request, its SQL, its upstream calls and the notification it leaves behind, one trace.

Spans go to OpenTelemetry's in-memory exporter, added to the app's own tracer provider before its
lifespan starts: the real instrumentations, a real PostgreSQL and a real upstream server that
records the ``traceparent`` header it receives; no collector.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.observability.tracing import Tracing, untraced
from {{ cookiecutter.package_name }}.resources import Resources
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import resources_of, upstream_settings
from .service_process import admin_headers
from .upstream_server import ScriptedUpstream

ORDER = {"item": "teapot", "quantity": 2}


class RecordingExporter(InMemorySpanExporter):
    """The in-memory exporter, waking up tests that wait for a span to end."""

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self._loop.call_soon_threadsafe(self._changed.set)
        return result

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.get_finished_spans())

    async def wait_for(
        self, matching: Callable[[ReadableSpan], bool], within: float = 5.0
    ) -> ReadableSpan:
        """The first finished span ``matching``, once there is one."""
        async with asyncio.timeout(within):
            while not (found := [span for span in self.spans if matching(span)]):
                self._changed.clear()
                await self._changed.wait()
        return found[0]


@asynccontextmanager
async def traced(
    settings: Settings,
) -> AsyncIterator[tuple[httpx2.AsyncClient, Resources, RecordingExporter]]:
    application = create_app(settings)
    exporter = RecordingExporter()
    tracing: Tracing = application.state.tracing
    tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with LifespanManager(application) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://service.test", headers=admin_headers()
        ) as http:
            yield http, resources_of(manager), exporter


class Collector:
    """A stand-in OTLP/HTTP collector on 127.0.0.1: records each export's path and body, and
    answers 200 at once, or never (``hang``)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.exports: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1/traces"

    async def __aenter__(self) -> Collector:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                path = head.split(" ", 2)[1]
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                self.exports.append((path, await reader.readexactly(length)))
                self.arrived.set()
                if self.hang:
                    await reader.read()  # until the exporter gives up and closes
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def exporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "Otel" in t.name or "Span" in t.name]


def server_span(exporter: RecordingExporter, name: str) -> ReadableSpan:
    (span,) = [s for s in exporter.spans if s.kind is SpanKind.SERVER and s.name == name]
    return span


def status_of(span: ReadableSpan) -> Any:
    attributes = span.attributes or {}
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


def descends_from(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    parent = span.parent
    while parent is not None:
        if parent.span_id == ancestor.context.span_id:
            return bool(parent.trace_id == ancestor.context.trace_id)
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return False


def traceparent_ids(headers: dict[str, str]) -> tuple[int, int]:
    """The trace id and parent span id of a W3C ``traceparent`` header."""
    version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


async def new_user(http: httpx2.AsyncClient, email: str) -> int:
    response = await http.post("/users", json={"email": email, "name": "Ada"})
    assert response.status_code == 201
    user_id: int = response.json()["id"]
    return user_id


def notification_posts(upstream: ScriptedUpstream) -> list[dict[str, str]]:
    posts = [r for r in upstream.received if r.method == "POST" and r.path == "/notifications"]
    return [r.headers for r in posts]


async def test_request_span_is_named_by_route_template_with_its_status(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    async with traced(upstream_settings(database_url, upstream)) as (http, _, exporter):
        user_id = await new_user(http, "span@example.com")
        assert (await http.get(f"/users/{user_id}")).status_code == 200
        assert (await http.get(f"/users/{user_id + 1000}")).status_code == 404
        assert (await http.get("/health/live")).status_code == 200

        servers = [s for s in exporter.spans if s.kind is SpanKind.SERVER]
        assert sorted((s.name, status_of(s)) for s in servers) == [
            ("GET /users/{user_id}", 200),
            ("GET /users/{user_id}", 404),
            ("POST /users", 201),
        ]
        # One name per endpoint, never one per user; probes make no trace at all.
        assert not [s for s in exporter.spans if str(user_id) in s.name or "health" in s.name]


async def test_sql_statements_are_spans_inside_the_request_span(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    async with traced(upstream_settings(database_url, upstream)) as (http, _, exporter):
        user_id = await new_user(http, "sql@example.com")
        exporter.clear()
        assert (await http.get(f"/users/{user_id}")).status_code == 200

        request = server_span(exporter, "GET /users/{user_id}")
        spans = exporter.spans
        statements = [s for s in spans if (s.attributes or {}).get("db.system") == "postgresql"]
        assert statements, [s.name for s in spans]
        assert all(descends_from(s, request, spans) for s in statements)
        assert any("users" in str((s.attributes or {}).get("db.statement")) for s in statements)


async def test_upstream_call_is_a_child_span_whose_traceparent_reaches_the_upstream(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    async with traced(upstream_settings(database_url, upstream)) as (http, _, exporter):
        user_id = await new_user(http, "up@example.com")
        assert (await http.get(f"/users/{user_id}/dashboard")).status_code == 200

        request = server_span(exporter, "GET /users/{user_id}/dashboard")
        (received,) = [r for r in upstream.received if r.path == f"/preferences/{user_id}"]
        trace_id, parent_id = traceparent_ids(received.headers)
        assert trace_id == request.context.trace_id
        # The header names the client span of that very call, a descendant of the request's.
        client = await exporter.wait_for(lambda s: s.context.span_id == parent_id)
        assert client.kind is SpanKind.CLIENT
        assert descends_from(client, request, exporter.spans)


async def test_order_notification_continues_the_trace_of_the_request(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    async with traced(upstream_settings(database_url, upstream)) as (http, _, exporter):
        user_id = await new_user(http, "notify@example.com")
        response = await http.post(f"/users/{user_id}/orders", json=ORDER)
        assert response.status_code == 201
        await upstream.wait_for_notifications(1)

        request = server_span(exporter, "POST /users/{user_id}/orders")
        (headers,) = notification_posts(upstream)
        trace_id, parent_id = traceparent_ids(headers)
        assert trace_id == request.context.trace_id
        send = await exporter.wait_for(lambda s: s.context.span_id == parent_id)
        assert descends_from(send, request, exporter.spans)


async def _retry_from_the_poller(
    database_url: str, upstream: ScriptedUpstream, *, keep_trace_context: bool
) -> tuple[ReadableSpan, ReadableSpan, list[ReadableSpan]]:
    """Place an order whose first notification attempt fails, then let the real poller retry it;
    return the request's span, the retry's client span and every span recorded."""
    upstream.script("notify", "fail", status=503)
    settings = upstream_settings(
        database_url,
        upstream,
        # The poller looks every 50 ms, but the failed message is only due when the test says.
        outbox_poll_interval=0.05,
        outbox_retry_base=3600.0,
        outbox_retry_cap=3600.0,
    )
    async with traced(settings) as (http, resources, exporter):
        user_id = await new_user(http, "retry@example.com")
        assert (await http.post(f"/users/{user_id}/orders", json=ORDER)).status_code == 201
        await upstream.wait_for_notifications(1)
        # The first attempt records its failure (and the retry's time) after the answer. Once
        # its UPDATE has run, the row stays locked until that commit: the test's UPDATE below
        # waits for it, and lands after it.
        await exporter.wait_for(
            lambda s: "last_error" in str((s.attributes or {}).get("db.statement"))
        )
        upstream.script("notify", "ok")
        due_now = (
            "UPDATE outbox SET next_attempt_at = now()"
            if keep_trace_context
            else "UPDATE outbox SET next_attempt_at = now(), trace_context = NULL"
        )
        # The test's own statement stays out of the traces (the engine is instrumented).
        with untraced():
            async with resources.engine.begin() as connection:
                await connection.execute(text(due_now))
        await upstream.wait_for_notifications(2)

        request = server_span(exporter, "POST /users/{user_id}/orders")
        _, retry_parent = traceparent_ids(notification_posts(upstream)[1])
        retry = await exporter.wait_for(lambda s: s.context.span_id == retry_parent)
        return request, retry, exporter.spans


async def test_notification_retry_from_the_poller_continues_the_trace_of_the_request(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    request, retry, spans = await _retry_from_the_poller(
        database_url, upstream, keep_trace_context=True
    )

    assert retry.context.trace_id == request.context.trace_id
    assert descends_from(retry, request, spans)
    # The poller ran about every 50 ms meanwhile: its claim queries made no traces of their own.
    assert {span.context.trace_id for span in spans} <= {
        request.context.trace_id,
        *(s.context.trace_id for s in spans if s.name == "POST /users"),
{%- if cookiecutter.auth == "bearer" %}
        # auth=bearer: the JWKS load at startup, a trace of its own (not the poller's).
        *(
            s.context.trace_id
            for s in spans
            if str((s.attributes or {}).get("http.url")).endswith("/.well-known/jwks.json")
        ),
{%- endif %}
    }


@pytest.mark.pitfall
async def test_pitfall_retry_without_the_stored_trace_context_starts_an_unrelated_trace(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    """The poller's task was started with the app, not by the request: the context variables
    that carry the trace are not there. Without the trace stored in the row (as if the store
    did not keep it), the retry is the root of a trace that nothing links to the order."""
    request, retry, spans = await _retry_from_the_poller(
        database_url, upstream, keep_trace_context=False
    )

    assert retry.context.trace_id != request.context.trace_id
    assert retry.parent is None
    assert not descends_from(retry, request, spans)


async def test_spans_are_exported_over_otlp_from_the_standard_variables_and_flushed_at_stop(
    database_url: str,
    upstream: ScriptedUpstream,
    empty_tables: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Collector() as collector:
        base = collector.endpoint.removesuffix("/v1/traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-under-test")
        # The batch would wait 5 s before sending: only the flush at shutdown can send it in time.
        async with traced(upstream_settings(database_url, upstream)) as (http, _, _spans):
            assert (await http.get("/users/1")).status_code == 404
            assert collector.exports == []
        assert collector.exports
        assert {path for path, _ in collector.exports} == {"/v1/traces"}
        body = b"".join(body for _, body in collector.exports)
        assert b"orders-under-test" in body  # the resource, named by OTEL_SERVICE_NAME
        assert b"GET /users/{user_id}" in body


async def test_a_collector_that_hangs_does_not_hold_shutdown_past_the_budget(
    database_url: str,
    upstream: ScriptedUpstream,
    empty_tables: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grace = 1.0
    async with Collector(hang=True) as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.endpoint)
        settings = upstream_settings(database_url, upstream, shutdown_grace=grace)
        async with traced(settings) as (http, _, _spans):
            assert (await http.get("/users/1")).status_code == 404
            started = time.monotonic()
        took = time.monotonic() - started
        assert collector.exports  # the flush did try
    # OTLP's own timeout is 10 s and the SDK's shutdown waits up to 30 s: the budget won.
    assert took < grace + 1.0, took


async def test_without_an_endpoint_nothing_is_exported_and_no_exporter_thread_runs(
    database_url: str,
    upstream: ScriptedUpstream,
    empty_tables: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    before = exporter_threads()
    async with traced(upstream_settings(database_url, upstream)) as (http, _, spans):
        assert (await http.get("/users/1")).status_code == 404
        # Spans are made (the in-memory exporter sees them), but nothing would send them.
        assert spans.spans
        assert exporter_threads() == before
