"""The real service under load, with and without ``gc.freeze()``: req/s, latency, loop lag.

What it measures
    The service as it runs in production, in a process of its own (uvicorn, the JSON access
    log, the real lifespan), started the way a deployment starts it:
    ``python -m {{ cookiecutter.package_name }}``.
    PostgreSQL is real: the server in ``TEST_DATABASE_URL`` when that is set (in a throwaway
    database, dropped at the end), else an embedded one started in a temporary folder, and it
    is migrated first with ``python -m {{ cookiecutter.package_name }} migrate``.
    One user is created, then ``--clients`` concurrent httpx2 clients (one keep-alive
    connection each, like ``wrk -c``) send ``GET /users/{id}`` back to back for ``--seconds``,
    after a one-second warm-up. The loop lag comes from the service's own heartbeat
    (``LoopLagMonitor``), read from ``GET /debug/tasks`` with a ``DEBUG_TOKEN`` set for the run.

    This is done twice, with ``GC_FREEZE=false`` and then ``GC_FREEZE=true``. A full garbage
    collection walks every tracked object of the process, FastAPI's, pydantic's and
    SQLAlchemy's included, and the event loop stands still meanwhile; ``gc.freeze()`` after
    startup moves those long-lived objects out of the collector's way.

How to read the output
    One row per run: requests per second; latency percentiles and the slowest request, in
    milliseconds, as the clients saw them (queueing included); the largest loop lag of the
    measured window; the failed requests (anything but a 200; expect 0) out of all sent.
    The last row divides the ``GC_FREEZE=true`` run by the ``GC_FREEZE=false`` one: below 1
    means the freeze made that column smaller. A full collection shows first in the loop lag
    and the slowest request; it reaches p99 only when collections are frequent enough to
    touch one request in a hundred. A ``<=`` before a lag means no new peak appeared during
    the window, so only an upper bound is known (the monitor keeps its peak since startup).
    The load generator, the service and PostgreSQL share the machine: absolute figures move
    with the machine and its other work, so compare the ratios of one run, never figures
    taken from different runs.

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/load.py [--seconds N] [--clients C]

Only 127.0.0.1 (and PostgreSQL's unix socket) is contacted; every loop is bounded in time and
count, and the run stops by itself (about ``2 * N + 15`` seconds; 35 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import secrets
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import IO

import httpx2
from harness import (
    MAX_REQUESTS_PER_CLIENT,
    OVERRUN_SECONDS,
    WARMUP_SECONDS,
    Run,
    machine_load,
    migrated_database,
    run_in_temporary_folder,
)
from harness import running_service as service_process

# Variables of the service's contract that must come from this script, not the caller's shell.
CONTRACT_VARIABLES = (
    "DATABASE_URL", "ENVIRONMENT", "HOST", "PORT", "PREFERENCES_URL", "NOTIFIER_URL",
    "UPSTREAM_TIMEOUT", "REQUEST_TIMEOUT", "DB_STATEMENT_TIMEOUT", "SHUTDOWN_GRACE", "DEBUG_TOKEN",
    "GC_FREEZE", "LOG_LEVEL",
)  # fmt: skip
REQUEST_TIMEOUT = 10.0
USER_PATH = "/users/<id>"


@dataclass(frozen=True)
class Service:
    base_url: str
    debug_token: str

    @property
    def debug_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.debug_token}"}


@dataclass(frozen=True)
class Window:
    """What the clients saw during one measured window."""

    latencies: list[float]  # seconds, successful requests only
    errors: int
    elapsed: float


@dataclass(frozen=True)
class RunResult:
    label: str
    requests_per_second: float
    p50: float
    p90: float
    p99: float
    worst: float
    lag_peak: float
    lag_peak_exact: bool  # False: the peak was reached before the window (an upper bound)
    errors: int
    requests: int


@contextlib.asynccontextmanager
async def running_service(
    database_url: str, *, gc_freeze: bool, log: IO[bytes]
) -> AsyncIterator[Service]:
    """Run the service in a process of its own, on a free port of 127.0.0.1.

    Stopped with SIGTERM at the end (SIGKILL past the harness's ``STOP_TIMEOUT``).
    """
    token = secrets.token_urlsafe(16)
    async with service_process(
        database_url,
        log,
        CONTRACT_VARIABLES,
        DEBUG_TOKEN=token,
        GC_FREEZE=str(gc_freeze).lower(),
        SHUTDOWN_GRACE="2",
    ) as (host, port):
        yield Service(f"http://{host}:{port}", token)


async def _client_loop(
    client: httpx2.AsyncClient, path: str, until: float, latencies: list[float]
) -> int:
    errors = 0
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if time.perf_counter() >= until:
            break
        start = time.perf_counter()
        try:
            response = await client.get(path)
        except httpx2.HTTPError:
            errors += 1
            await asyncio.sleep(0.01)  # a refused connection must not become a busy loop
            continue
        if response.status_code == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1
    return errors


async def drive(clients: Sequence[httpx2.AsyncClient], path: str, seconds: float) -> Window:
    """Every client sends ``GET path`` back to back for ``seconds``."""
    latencies: list[float] = []
    start = time.perf_counter()
    until = start + seconds
    async with asyncio.timeout(seconds + OVERRUN_SECONDS), asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_client_loop(client, path, until, latencies)) for client in clients
        ]
    return Window(latencies, sum(task.result() for task in tasks), time.perf_counter() - start)


async def loop_lag_peak(admin: httpx2.AsyncClient, service: Service) -> float:
    response = await admin.get("/debug/tasks", headers=service.debug_headers)
    response.raise_for_status()
    peak: float = response.json()["loop_lag"]["peak_seconds"]
    return peak


async def measure(service: Service, label: str, client_count: int, seconds: float) -> RunResult:
    async with contextlib.AsyncExitStack() as stack:
        admin = await stack.enter_async_context(
            httpx2.AsyncClient(base_url=service.base_url, timeout=REQUEST_TIMEOUT)
        )
        created = await admin.post(
            "/users", json={"email": f"bench-{uuid.uuid4().hex}@example.com", "name": "Bench"}
        )
        created.raise_for_status()
        path = f"/users/{created.json()['id']}"
        one_connection = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
        clients = [
            await stack.enter_async_context(
                httpx2.AsyncClient(
                    base_url=service.base_url, timeout=REQUEST_TIMEOUT, limits=one_connection
                )
            )
            for _ in range(client_count)
        ]
        # Warm-up: connections opened, the database pool filled, caches and code paths hot.
        await drive(clients, path, WARMUP_SECONDS)
        peak_before = await loop_lag_peak(admin, service)
        # This process's own collections would add the same noise to both runs' latencies.
        gc.collect()
        gc.disable()
        try:
            window = await drive(clients, path, seconds)
        finally:
            gc.enable()
        peak_after = await loop_lag_peak(admin, service)
    latencies = window.latencies
    if len(latencies) < 2:
        raise RuntimeError(f"{label}: only {len(latencies)} successful requests")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return RunResult(
        label=label,
        requests_per_second=len(latencies) / window.elapsed,
        p50=cuts[49],
        p90=cuts[89],
        p99=cuts[98],
        worst=max(latencies),
        lag_peak=peak_after,
        lag_peak_exact=peak_after > peak_before,
        errors=window.errors,
        requests=len(latencies) + window.errors,
    )


async def run_benchmark(place: Run, client_count: int, seconds: float) -> list[RunResult]:
    log = place.logs["service"]
    async with migrated_database(place, log, CONTRACT_VARIABLES) as database_url:
        results = []
        for gc_freeze in (False, True):
            async with running_service(database_url, gc_freeze=gc_freeze, log=log) as service:
                label = f"GC_FREEZE={str(gc_freeze).lower()}"
                results.append(await measure(service, label, client_count, seconds))
        return results


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old > 0 else "-"


HEADER = ("run", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "lag peak ms", "errors")
WIDTHS = (17, 8, 9, 9, 9, 9, 13, 12)


def _row(cells: Sequence[str]) -> str:
    label, *values = cells
    padded = (value.rjust(width) for value, width in zip(values, WIDTHS[1:], strict=False))
    return label.ljust(WIDTHS[0]) + "".join(padded)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def format_table(results: Sequence[RunResult], client_count: int, seconds: float) -> str:
    title = f"GET {USER_PATH}: {client_count} clients, {seconds:g} s per run{machine_load()}"
    lines = [title, _row(HEADER)]
    for result in results:
        lag = ("" if result.lag_peak_exact else "<=") + _ms(result.lag_peak)
        latencies = (result.p50, result.p90, result.p99, result.worst)
        lines.append(
            _row(
                [result.label, f"{result.requests_per_second:.0f}"]
                + [_ms(value) for value in latencies]
                + [lag, f"{result.errors}/{result.requests}"]
            )
        )
    if len(results) == 2:
        off, on = results
        pairs = [
            (on.requests_per_second, off.requests_per_second),
            (on.p50, off.p50),
            (on.p90, off.p90),
            (on.p99, off.p99),
            (on.worst, off.worst),
            (on.lag_peak, off.lag_peak),
        ]
        lines.append(_row(["ratio true/false"] + [_ratio(new, old) for new, old in pairs]))
    return "\n".join(lines)


def run(client_count: int, seconds: float) -> list[RunResult]:
    """The whole run, in a temporary folder that holds the log and the embedded PostgreSQL."""
    return run_in_temporary_folder(
        "bench-load-",
        ["service"],
        lambda place: run_benchmark(place, client_count, seconds),
        uvloop=False,  # the clients run on asyncio's own loop, as they always have here
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GET /users/{id} under load, GC_FREEZE off/on")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent (default 32)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1:
        parser.error("--seconds must be positive and --clients at least 1")
    # SIGTERM (a CI job's timeout, a plain `kill`) stops the run the way Ctrl-C does, through
    # every `finally`: the service and the embedded PostgreSQL are stopped, not left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = run(args.clients, args.seconds)
    except KeyboardInterrupt:
        print("interrupted; the service and PostgreSQL have been stopped", file=sys.stderr)
        return 130
    print(format_table(results, args.clients, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
