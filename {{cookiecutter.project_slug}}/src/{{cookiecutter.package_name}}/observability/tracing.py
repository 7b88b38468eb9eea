"""OpenTelemetry traces: one trace per request, across the database, the upstreams and the work
the request leaves behind.

What is traced:

- every request, as a server span named by its route template (``POST /users/{user_id}/orders``,
  never the raw path: one name per endpoint, not one per user), with its status code;
- every SQL statement, as a child of whatever span is current (SQLAlchemy's instrumentor on
  ``engine.sync_engine``: the async engine runs its sync core in a greenlet, which is where the
  cursor events fire);
- every upstream call of the shared httpx2 client, as a client span, with a W3C ``traceparent``
  header so the upstream's own spans join the same trace;
- the order notification sent right after the commit: the supervisor's task copies the context of
  the request (``asyncio.create_task`` does), so its call is part of the request's trace even
  though the response has long gone out.

Configuration is the standard ``OTEL_*`` environment, read by the SDK itself:
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the service, ``OTEL_TRACES_SAMPLER``
(and ``_ARG``) choose what is kept, ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the ``_TRACES_``
variant), ``_HEADERS`` and ``_TIMEOUT`` say where spans go, over OTLP/HTTP (protobuf). With no
endpoint, or ``OTEL_TRACES_EXPORTER=none``, nothing is exported: no thread, no socket, no error;
spans are still made, so an incoming ``traceparent`` still reaches the upstreams.

The tracer provider belongs to the app, not to the process: none is set globally, so each test's
app has spans of its own. SQLAlchemy's instrumentor is the exception, a process-wide singleton
(it also wraps ``create_engine`` while active): one traced app per process at a time, which is
what a service is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import httpx2
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import PACKAGE_NAME

logger = logging.getLogger(__name__)

# Probes and scrapes come every few seconds from the platform: a trace each would bury the ones
# that matter. OTEL_PYTHON_FASTAPI_EXCLUDED_URLS replaces this list (comma-separated regexes).
DEFAULT_EXCLUDED_URLS = "/health/,/metrics"


def export_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether the standard variables ask for OTLP export of traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in {"", "none"}:
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def current_trace_context() -> dict[str, str] | None:
    """The current trace as propagation headers (W3C ``traceparent``, and ``tracestate`` or
    whatever ``OTEL_PROPAGATORS`` chooses), to store beside work that runs later; None outside
    any trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@contextmanager
def trace_context_of(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Run the block inside the trace that ``carrier`` (from ``current_trace_context``) names.

    The block's spans become children of the span that was current when the carrier was taken,
    whatever task, process or replica runs it, however much later. The context is built from
    the carrier alone, not on top of the current one, so an untraced caller (the outbox's
    poller) does not pass its suppression on. No carrier: the block starts a trace of its own.
    """
    token = otel_context.attach(propagate.extract(carrier or {}, context=otel_context.Context()))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def untraced() -> Iterator[None]:
    """Keep the instrumentations quiet in the block, and in every task it starts.

    For the outbox's polling loop: a claim query every poll interval on every replica would be a
    trace of its own each time, burying the traces of requests. What the loop delivers is traced
    all the same (``trace_context_of`` replaces the context for each attempt).
    """
    with suppress_instrumentation():
        yield


class Tracing:
    """The app's tracer provider and what it instruments.

    ``create_app`` makes one and instruments the app with it (the server span must wrap the
    whole middleware stack, which is built before the lifespan runs); the lifespan calls
    ``start`` with the engine and client it created, and ``stop`` at the end, which flushes what
    is buffered within the shutdown budget it is given.
    """

    def __init__(self, app: FastAPI) -> None:
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the package name. Not
        # Resource.create(): it runs its detectors in a thread pool and waits on a lock, which
        # blocks the event loop when the app is created inside one (tests, blockbuster).
        resource = Resource({SERVICE_NAME: PACKAGE_NAME}).merge(OTELResourceDetector().detect())
        # TracerProvider reads OTEL_TRACES_SAMPLER (and its argument) itself.
        self.provider = TracerProvider(resource=resource)
        self._engine: AsyncEngine | None = None
        self._client: httpx2.AsyncClient | None = None
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            excluded_urls=os.environ.get(
                "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS
            ),
            # The ASGI layer would add two spans per message sent or received: noise.
            exclude_spans=["receive", "send"],
        )

    def start(self, engine: AsyncEngine, client: httpx2.AsyncClient) -> None:
        """Trace the engine's statements and the client's calls; start export if configured."""
        if export_configured():
            # The exporter reads its endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*.
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            logger.info("exporting traces over OTLP")
        # The instrumentor's declared range stops below SQLAlchemy 2.1, whose cursor events it
        # uses unchanged: without skip_dep_check it logs a conflict and traces nothing (and its
        # check reads package metadata from disk, on the loop).
        SQLAlchemyInstrumentor().instrument(
            engine=engine.sync_engine, tracer_provider=self.provider, skip_dep_check=True
        )
        self._engine = engine
        # Typed for httpx's classes only, while it instruments httpx2's just the same.
        HTTPX2ClientInstrumentor.instrument_client(
            client,  # type: ignore[arg-type]
            tracer_provider=self.provider,
        )
        self._client = client

    async def stop(self, budget: float) -> None:
        """Stop tracing and send what is buffered, within ``budget`` seconds.

        The SDK bounds neither step: its flush ignores its timeout (opentelemetry-python#4568)
        and waits for the exporter, whose own timeout is 10 s and retries; its shutdown waits up
        to 30 s more. So both run in a daemon thread that this waits for only ``budget``
        seconds. Past that, what is still buffered is dropped with one warning, and the thread,
        stuck on a collector that does not answer, ends with the process instead of holding
        its exit (a thread of ``asyncio.to_thread`` would be joined at exit).
        """
        if self._client is not None:
            HTTPX2ClientInstrumentor.uninstrument_client(self._client)  # type: ignore[arg-type]
        if self._engine is not None:
            SQLAlchemyInstrumentor().uninstrument()

        def flush_and_shut_down() -> bool:
            flushed = self.provider.force_flush()
            self.provider.shutdown()
            return flushed

        if not await _within(budget, flush_and_shut_down):
            logger.warning("traces not flushed within %.1f s; the rest are dropped", budget)


async def _within(seconds: float, work: Callable[[], bool]) -> bool:
    """Run blocking ``work`` in a daemon thread; its result, or False after ``seconds``."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[bool] = loop.create_future()

    def settle(value: bool) -> None:
        if not outcome.done():
            outcome.set_result(value)

    def run() -> None:
        try:
            value = work()
        except Exception:
            logger.exception("flushing traces failed")
            value = False
        # The loop may be gone by now (the wait gave up, the process is ending): nothing to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=run, name="tracing-flush", daemon=True).start()
    try:
        async with asyncio.timeout(seconds):
            return await outcome
    except TimeoutError:
        return False
