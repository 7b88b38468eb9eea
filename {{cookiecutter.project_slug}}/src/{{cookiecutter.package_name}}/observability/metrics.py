"""Prometheus metrics that show the practices at work, in a registry owned by one app.

Two kinds of numbers:

- Events measured as they happen, on the hot path: request durations (``MetricsMiddleware``),
  upstream call durations (``Upstreams`` calls ``observe_upstream_call``), loop-lag samples
  (``LoopLagMonitor`` calls ``observe_loop_lag``). Each is one histogram ``observe``.
- State read only when Prometheus scrapes (``_StateCollector``): the database pool, the admission
  gate, the background supervisor and the outbox counters. Reading them at scrape time costs the
  requests nothing, and the numbers cannot drift from the objects they describe.

Requests are labelled by route TEMPLATE (``/users/{user_id}``), never by the raw path: one series
per user id is unbounded cardinality that takes Prometheus down. A request no route matched
(404, or shed at the door before routing) gets the fixed label ``UNMATCHED_ROUTE``.

Every app gets its own ``CollectorRegistry``: several apps in one process (tests, a worker
beside the server) would otherwise collide on the global registry's metric names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..db.session import transaction
from ..outbox.store import count_by_status

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from ..aio.admission import AdmissionGate
    from ..aio.background import TaskSupervisor
    from ..outbox.dispatcher import OutboxDispatcher

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED_ROUTE = "<unmatched>"
# A client may send any method name; labels must stay a bounded set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
# Request and upstream latencies: from a cached read to a request cut at its deadline.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Loop lag: healthy is a millisecond or two; anything near a second is a blocked loop.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# How long a scrape may wait for the outbox count: a slow database must not hang /metrics.
OUTBOX_COUNT_TIMEOUT = 1.0


@dataclass(slots=True)
class StateSources:
    """The lifespan's objects whose state is read at every scrape (``ServiceMetrics.bind``)."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    supervisor: TaskSupervisor
    outbox: OutboxDispatcher
    admission: AdmissionGate


class ServiceMetrics:
    """Every metric of one app, in that app's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template.",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "http_requests_in_flight",
            "Requests being served right now (shed ones included, for the moment they last).",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "event_loop_lag_seconds",
            "How late the event loop woke the last heartbeat: the latest sample.",
            registry=self.registry,
        )
        self.loop_lag_samples = Histogram(
            "event_loop_lag_sample_seconds",
            "Every loop-lag heartbeat sample: the tail shows blocking calls and GC pauses.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "upstream_call_duration_seconds",
            "Upstream calls, body included, by upstream and outcome (ok, error, deadline).",
            ("upstream", "outcome"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.outbox_counts: dict[str, int] = {}
        self._state = _StateCollector(self)
        self.registry.register(self._state)

    def bind(self, sources: StateSources) -> None:
        """Read these objects' state at every scrape (the lifespan calls this once started)."""
        self._state.sources = sources

    def unbind(self) -> None:
        self._state.sources = None

    def observe_loop_lag(self, lag: float) -> None:
        self.loop_lag.set(lag)
        self.loop_lag_samples.observe(lag)

    def observe_upstream_call(self, upstream: str, outcome: str, seconds: float) -> None:
        self.upstream_duration.labels(upstream, outcome).observe(seconds)

    async def render(self) -> bytes:
        """The text exposition of every metric, with a fresh count of the outbox table."""
        await self._refresh_outbox_counts()
        return generate_latest(self.registry)

    async def _refresh_outbox_counts(self) -> None:
        sources = self._state.sources
        if sources is None:
            return
        try:
            async with asyncio.timeout(OUTBOX_COUNT_TIMEOUT):
                async with transaction(sources.sessionmaker) as session:
                    self.outbox_counts = await count_by_status(session)
        except Exception as error:  # noqa: BLE001 - the scrape goes on with the last counts
            logger.warning("could not count the outbox for /metrics (%r)", error)


class _StateCollector(Collector):
    """Reads the pool, the gate, the supervisor and the outbox when Prometheus scrapes."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self.sources: StateSources | None = None

    def describe(self) -> Iterator[Any]:
        return iter(())  # dynamic: described by what collect yields

    def collect(self) -> Iterator[Any]:
        sources = self.sources
        if sources is None:
            return
        pool: Any = sources.engine.sync_engine.pool
        yield GaugeMetricFamily(
            "db_pool_size", "Connections the pool keeps (DB_POOL_SIZE).", value=pool.size()
        )
        yield GaugeMetricFamily(
            "db_pool_checked_out", "Connections in use by a request or task.", pool.checkedout()
        )
        yield CounterMetricFamily(
            "db_pool_waits",
            "Checkouts that found every connection taken and had to wait for one.",
            getattr(pool, "waits_total", 0),
        )
        yield CounterMetricFamily(
            "db_pool_timeouts",
            "Waits for a connection that ran out (DB_POOL_TIMEOUT): answered 503.",
            getattr(pool, "timeouts_total", 0),
        )
        yield GaugeMetricFamily(
            "db_pool_overflow",
            "Connections open beyond DB_POOL_SIZE (negative: fewer open than the size).",
            value=pool.overflow(),
        )
        gate = sources.admission
        yield GaugeMetricFamily(
            "admission_in_flight", "Requests holding an admission slot.", gate.in_flight
        )
        yield GaugeMetricFamily(
            "admission_waiting", "Requests waiting for an admission slot.", gate.waiting
        )
        yield CounterMetricFamily(
            "admission_shed",
            "Requests refused with 503 because no slot came free in time.",
            gate.refused_total,
        )
        supervisor = sources.supervisor
        yield GaugeMetricFamily(
            "background_tasks_running", "Background tasks not finished yet.", supervisor.pending
        )
        yield CounterMetricFamily(
            "background_tasks_failed",
            "Background tasks that ended with an exception.",
            supervisor.failed_total,
        )
        yield CounterMetricFamily(
            "background_tasks_abandoned",
            "Background tasks cancelled because the shutdown grace ran out.",
            supervisor.abandoned_total,
        )
        outbox = sources.outbox
        yield CounterMetricFamily(
            "outbox_delivered", "Notifications this process delivered.", outbox.delivered_total
        )
        yield CounterMetricFamily(
            "outbox_retried", "Failed sends this process scheduled again.", outbox.retried_total
        )
        yield CounterMetricFamily(
            "outbox_dead",
            "Notifications this process set aside after the last attempt.",
            outbox.dead_total,
        )
        messages = GaugeMetricFamily(
            "outbox_messages",
            "Messages in the outbox table by status (all replicas).",
            labels=("status",),
        )
        for status, count in sorted(self._metrics.outbox_counts.items()):
            messages.add_metric((status,), count)
        yield messages


class MetricsMiddleware:
    """Times every HTTP request and labels it by the route template that served it.

    Pure ASGI and placed outside the error middleware, so it sees every answer, the 503 of a
    shed request and the 500 of a crash included. The route is read from ``scope["route"]``
    after the app returns: Starlette's router writes the matched route into the very scope
    dict it was handed.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self._duration = metrics.request_duration
        self._in_flight = metrics.requests_in_flight
        # One child histogram per (route, method, status), looked up once and kept: the label
        # lookup is the costly part of observe(), and the set of keys is small and bounded.
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client got if the app never started a response

        async def send_watching_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self._in_flight.inc()
        try:
            await self.app(scope, receive, send_watching_status)
        finally:
            self._in_flight.dec()
            method = scope["method"]
            key = (
                route_template(scope),
                method if method in KNOWN_METHODS else OTHER_METHOD,
                status,
            )
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._duration.labels(*key)
            child.observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that served ``scope``, or ``UNMATCHED_ROUTE``."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    template: str | None = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template or UNMATCHED_ROUTE
