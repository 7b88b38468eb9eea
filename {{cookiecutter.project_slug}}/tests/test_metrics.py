"""GET /metrics: the practices' effects as Prometheus series, cheap to collect, safe to scrape.

What an operator needs to see is each practice doing its job: requests by route template and
status, the loop lag the monitor measures, the database pool filling up, requests shed at the
door, background work failing or cut at shutdown, upstream calls by outcome, notifications waiting
or retried. Each test below makes one of those happen for real and reads it back from the text
exposition, parsed by prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.observability.metrics import UNMATCHED_ROUTE

from .conftest import make_settings, running_app, upstream_settings
from .service_process import admin_headers
from .upstream_server import ScriptedUpstream

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls), _ in samples.items() if n == name and label in dict(ls)}


async def scrape(http: httpx2.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


async def eventually(
    http: httpx2.AsyncClient, check: Callable[[Samples], bool], within: float = 10.0
) -> Samples:
    """Scrape every 50 ms until ``check`` holds (the thing measured happens in the background)."""
    async with asyncio.timeout(within):
        while True:
            samples = await scrape(http)
            if check(samples):
                return samples
            await asyncio.sleep(0.05)


async def create_users(http: httpx2.AsyncClient, count: int) -> list[int]:
    ids = []
    for n in range(count):
        response = await http.post("/users", json={"email": f"m{n}@example.com", "name": "M"})
        assert response.status_code == 201
        ids.append(response.json()["id"])
    return ids


async def test_requests_are_labelled_by_route_template_in_the_text_format(
    settings: Any, empty_tables: None
) -> None:
    async with running_app(settings) as (http, _):
        ids = await create_users(http, 3)
        for user_id in ids:
            assert (await http.get(f"/users/{user_id}")).status_code == 200
        assert (await http.get("/users/999999")).status_code == 404
        assert (await http.get("/no/such/page")).status_code == 404
        response = await http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.text)
    name = "http_request_duration_seconds_count"
    assert value(samples, name, route="/users/{user_id}", method="GET", status="200") == 3
    assert value(samples, name, route="/users/{user_id}", method="GET", status="404") == 1
    assert value(samples, name, route=UNMATCHED_ROUTE, status="404") == 1
    assert value(samples, name, route="/users", method="POST", status="201") == 3
    # One series per route, never one per user: no label holds an id.
    routes = label_values(samples, name, "route")
    assert not any(char.isdigit() for route in routes for char in route), routes
    assert value(samples, "http_requests_in_flight") == 1  # the scrape itself


async def test_upstream_calls_are_timed_by_outcome(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    settings = upstream_settings(database_url, upstream, upstream_timeout=0.3)
    async with running_app(settings) as (http, _):
        [user_id] = await create_users(http, 1)
        assert (await http.get(f"/users/{user_id}/summary")).status_code == 200
        upstream.script("preferences", "fail", status=500)
        upstream.script("notifications", "hang")
        assert (await http.get(f"/users/{user_id}/summary")).status_code == 200
        samples = await scrape(http)
    name = "upstream_call_duration_seconds_count"
    assert value(samples, name, upstream="preferences", outcome="ok") == 1
    assert value(samples, name, upstream="preferences", outcome="error") == 1
    assert value(samples, name, upstream="notifier", outcome="ok") == 1
    assert value(samples, name, upstream="notifier", outcome="deadline") == 1
    # The deadline case took about the deadline, not the hang.
    deadline_sum = value(samples, "upstream_call_duration_seconds_sum", outcome="deadline")
    assert 0.3 <= deadline_sum < 0.3 + settings.request_timeout


async def test_pool_background_work_and_outbox_are_read_at_scrape_time(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    settings = upstream_settings(
        database_url, upstream, db_pool_size=3, outbox_retry_base=30.0, outbox_retry_cap=30.0
    )
    upstream.script("notify", "fail", status=503)
    async with running_app(settings) as (http, resources):
        [user_id] = await create_users(http, 1)
        placed = await http.post(f"/users/{user_id}/orders", json={"item": "cup", "quantity": 1})
        assert placed.status_code == 201
        samples = await eventually(http, lambda s: value(s, "outbox_retried_total") == 1)
        assert value(samples, "outbox_messages", status="pending") == 1
        assert value(samples, "db_pool_size") == 3
        # The scrape's own outbox count has given its connection back.
        assert value(samples, "db_pool_checked_out") == 0

        async def fail() -> None:
            raise RuntimeError("boom")

        never = asyncio.Event()
        await asyncio.wait([resources.supervisor.spawn(fail(), name="failing")])
        resources.supervisor.spawn(never.wait(), name="stuck-forever")
        samples = await scrape(http)
        assert value(samples, "background_tasks_failed_total") == 1
        assert value(samples, "background_tasks_running") == 1
        await resources.supervisor.drain(0.0)  # what shutdown does when the grace runs out
        samples = await scrape(http)
        assert value(samples, "background_tasks_abandoned_total") == 1
        assert value(samples, "background_tasks_running") == 0


async def test_pool_waits_and_timeouts_are_counted(database_url: str, empty_tables: None) -> None:
    settings = make_settings(
        database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.2, retry_after=1
    )
    async with running_app(settings) as (http, resources):
        [user_id] = await create_users(http, 1)
        async with resources.engine.connect() as held:  # the pool's only connection
            await held.execute(text("SELECT 1"))
            refused = await http.get(f"/users/{user_id}")
            samples = await scrape(http)
        served = await http.get(f"/users/{user_id}")
    assert refused.status_code == 503
    assert served.status_code == 200
    # The refused read, and the scrape's own count of the outbox, which waited and gave up too
    # (the scrape still answered, with the other numbers).
    assert value(samples, "db_pool_timeouts_total") == 2
    assert value(samples, "db_pool_waits_total") == 2
    assert value(samples, "db_pool_checked_out") == 1


@pytest.mark.allow_blocking
async def test_loop_lag_shows_a_blocked_loop(settings: Any, empty_tables: None) -> None:
    # Longer than the 0.25 s bucket plus one beat interval: the blocked beat lands above the
    # bucket whatever phase the beats are at when the block starts.
    blocked_for = 0.4
    async with running_app(settings) as (http, resources):
        await asyncio.sleep(resources.loop_lag.interval * 3)  # a few normal beats first
        time.sleep(blocked_for)  # noqa: ASYNC251 - the blocking call the metric must reveal
        samples = await eventually(
            http,
            lambda s: (
                value(s, "event_loop_lag_sample_seconds_bucket", le="0.25")
                < value(s, "event_loop_lag_sample_seconds_count")
            ),
        )
    # The blocked beat landed above 0.25 s; the healthy ones below.
    assert value(samples, "event_loop_lag_sample_seconds_bucket", le="0.25") >= 1
    assert value(samples, "event_loop_lag_seconds") >= 0


async def test_shed_requests_are_counted_and_metrics_answer_while_saturated(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    settings = upstream_settings(
        database_url,
        upstream,
        admission_limit=1,
        admission_timeout=0.0,
        upstream_timeout=3.0,
        request_timeout=5.0,
    )
    async with running_app(settings) as (http, _):
        [user_id] = await create_users(http, 1)
        upstream.script("preferences", "delay", seconds=1.0)
        slow = asyncio.create_task(http.get(f"/users/{user_id}/dashboard"))
        await asyncio.wait_for(_until(lambda: upstream.arrived("/preferences") == 1), 5.0)
        shed = await http.get(f"/users/{user_id}")
        # The one slot is taken, yet the scrape is answered: /metrics is never shed.
        samples = await scrape(http)
        assert (await slow).status_code == 200
    assert shed.status_code == 503
    assert value(samples, "admission_shed_total") == 1
    assert value(samples, "admission_in_flight") == 1
    name = "http_request_duration_seconds_count"
    assert value(samples, name, route=UNMATCHED_ROUTE, status="503") == 1


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.02)


async def test_metrics_port_moves_metrics_off_the_main_port(
    database_url: str, empty_tables: None
) -> None:
    application = create_app(make_settings(database_url, metrics_port=0))
    async with LifespanManager(application) as manager:
        transport = httpx2.ASGITransport(app=manager.app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://svc.test", headers=admin_headers()
        ) as http:
            assert (await http.get("/health/live")).status_code == 200
            main_port = await http.get("/metrics")
        port = application.state.metrics_server.port
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            separate = await scraper.get("/metrics")
            elsewhere = await scraper.get("/users")
    assert main_port.status_code == 404
    assert separate.status_code == 200
    assert separate.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(separate.text)
    assert value(samples, "http_request_duration_seconds_count", route="/health/live") == 1
    assert value(samples, "db_pool_size") == application.state.settings.db_pool_size
    assert elsewhere.status_code == 404
    # The lifespan closed the listener on the way out.
    with pytest.raises(httpx2.ConnectError):
        async with httpx2.AsyncClient() as late:
            await late.get(f"http://127.0.0.1:{port}/metrics")


async def test_two_apps_in_one_process_keep_separate_metrics(
    settings: Any, empty_tables: None
) -> None:
    async with running_app(settings) as (first, _), running_app(settings) as (second, _):
        await create_users(first, 1)
        one = await scrape(first)
        other = await scrape(second)
    name = "http_request_duration_seconds_count"
    assert value(one, name, route="/users", method="POST") == 1
    assert value(other, name, route="/users", method="POST") == 0


@pytest.mark.pitfall
async def test_pitfall_labelling_by_raw_path_makes_a_series_per_user(
    settings: Any, empty_tables: None
) -> None:
    """The naive middleware labels by ``scope["path"]``: every user id is a new time series,
    so the number of series grows with the data (and Prometheus' memory with it)."""
    registry = CollectorRegistry()
    by_path = Histogram("naive_request_seconds", "by raw path", ("path",), registry=registry)
    async with LifespanManager(create_app(settings)) as manager:

        async def naive_middleware(scope: Any, receive: Any, send: Any) -> None:
            started = time.perf_counter()
            await manager.app(scope, receive, send)
            if scope["type"] == "http":
                by_path.labels(scope["path"]).observe(time.perf_counter() - started)

        transport = httpx2.ASGITransport(app=naive_middleware)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://svc.test", headers=admin_headers()
        ) as http:
            ids = await create_users(http, 5)
            for user_id in ids:
                await http.get(f"/users/{user_id}")
            real = await scrape(http)
    naive = label_values(
        parse(generate_latest(registry).decode()), "naive_request_seconds_count", "path"
    )
    assert {f"/users/{user_id}" for user_id in ids} <= naive  # one series per user...
    routes = label_values(real, "http_request_duration_seconds_count", "route")
    assert routes == {"/users", "/users/{user_id}"}  # ...where the template needs one


@pytest.mark.pitfall
def test_pitfall_the_global_registry_breaks_a_second_app() -> None:
    """Metrics created at import time or per app in prometheus-client's global REGISTRY collide
    as soon as a second app (a test, a worker) creates them again."""
    first = Histogram("pitfall_request_seconds", "per app", registry=REGISTRY)
    try:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            Histogram("pitfall_request_seconds", "per app", registry=REGISTRY)
    finally:
        REGISTRY.unregister(first)
