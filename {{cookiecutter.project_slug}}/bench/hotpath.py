"""The hot path against two reference apps: ``GET /users/{id}`` on the service, on the bare
ceiling of its stack, and on the app a team writes without the template.

What it measures
    Three apps answering the same request with the same JSON, one user row, on the same
    PostgreSQL database, side by side on loopback, in one run:

    * ``ceiling``: ``bench/reference_ceiling.py``, bare Starlette and a raw asyncpg pool of the
      service's ``DB_POOL_SIZE``: the least work this stack can do, no access log.
    * ``service``: the service as deployed,
      ``python -m {{ cookiecutter.package_name }}``: uvicorn, the real lifespan, every
      middleware, the admission gate, JSON logs with the access log on stderr (to a file here),
      the default settings unless the environment sets others.
    * ``naive``: ``bench/reference_naive.py``, FastAPI and the ORM with their defaults, a
      session dependency, a response model, uvicorn's default logging with its access log.

    The database is the server in ``TEST_DATABASE_URL`` when that is set (a throwaway database,
    dropped at the end), else an embedded PostgreSQL in a temporary folder; it is migrated with
    ``python -m {{ cookiecutter.package_name }} migrate``, and one user is created through the
    service.
    The load generator is ``wrk`` when installed (``--generator auto``), else Python clients
    on raw keep-alive connections. For each connection count (``--connections``, 32 and 128 by
    default) the three apps are measured in turn, each after a one-second warm-up, for
    ``--seconds``; ``--rounds`` rounds alternate the order, and the median round of each app
    is reported. The service's loop lag comes from its own monitor: the loop-lag histogram of
    ``GET /metrics`` (p99 over the measured window, from the bucket counts before and after)
    and the peak of ``GET /debug/tasks`` (with a ``DEBUG_TOKEN`` of the run).

How to read the output
    A Markdown table, printed and written to ``--output`` (``docs/benchmarks.md`` by default),
    under a header that names the date, the machine, Python, the event loop and HTTP parser,
    the database and the generator. ``req/s`` counts the 200s per second; ``ratio`` divides it
    by the ceiling's in the same round, at the same connection count, and is the median of
    the rounds: that is the figure to read (absolute rates move with the machine and whatever
    else runs on it). Latencies are those of
    all answers as the generator saw them, queueing included. ``non-200`` counts every other
    answer (a 503 when the service's admission gate sheds load) and dropped connection over all
    rounds, out of ``requests``. See bench/README.md for what to expect.

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/hotpath.py [--seconds N] [--connections 32,128] [--rounds R]
                            [--generator auto|wrk|python] [--output docs/benchmarks.md]

Only 127.0.0.1 (and PostgreSQL's unix socket) is contacted; every wait and every loop is
bounded, and the run stops by itself, after about ``C * R * 3 * (N + 1) + 15`` seconds for C
connection counts (3.5 minutes by default). Ctrl-C or SIGTERM stops every process it started
and removes the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import importlib.util
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from harness import (
    PROJECT_ROOT,
    WARMUP_SECONDS,
    Run,
    Target,
    Window,
    create_user,
    free_port,
    generate_load,
    latencies,
    migrated_database,
    run_in_temporary_folder,
    running_process,
    running_service,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.settings import PACKAGE_NAME, Settings

# Variables that must come from this script, not from the caller's shell. METRICS_PORT: the
# metrics must be on the service's own port, where the loop lag is read.
CONTROLLED_VARIABLES = (
    "DATABASE_URL", "ENVIRONMENT", "HOST", "PORT", "PREFERENCES_URL", "NOTIFIER_URL",
    "DEBUG_TOKEN", "METRICS_PORT",
)  # fmt: skip
BENCH = Path(__file__).resolve().parent
APPS = ("ceiling", "service", "naive")  # the table's order; the rounds alternate it
REFERENCES = {"ceiling": "reference_ceiling.py", "naive": "reference_naive.py"}
LAG_BUCKETS = "event_loop_lag_sample_seconds_bucket"
MONITOR_TIMEOUT = 10.0
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks.md"
REQUEST = "GET /users/{id}"


@dataclass(frozen=True)
class Plan:
    seconds: float
    rounds: int
    connections: tuple[int, ...]
    use_wrk: bool
    pool_size: int  # the service's DB_POOL_SIZE, given to the ceiling's pool


@dataclass(frozen=True)
class Lag:
    """The service's loop lag over one measured window, in seconds."""

    p99: float | None  # at most this: a bucket's upper bound; None: no sample in the window
    largest_bound: float  # of the histogram's finite buckets (a p99 past it is inf)
    peak: float
    peak_in_window: bool  # False: no new peak in the window, ``peak`` is only an upper bound


@dataclass(frozen=True)
class Measurement:
    app: str
    connections: int
    window: Window
    lag: Lag | None = None  # the service only


@dataclass
class Report:
    plan: Plan
    database: str = ""
    measurements: list[Measurement] = field(default_factory=list)


# --- the service's loop-lag monitor ----------------------------------------------------------


@dataclass(frozen=True)
class LagSnapshot:
    buckets: Mapping[float, float]  # cumulative sample counts by upper bound (le)
    peak: float


class Monitor:
    """Reads the service's loop lag: ``/metrics`` (histogram) and ``/debug/tasks`` (peak)."""

    def __init__(self, client: httpx2.AsyncClient, debug_token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {debug_token}"}

    async def snapshot(self) -> LagSnapshot:
        metrics = await self.client.get("/metrics")
        metrics.raise_for_status()
        buckets = {
            float(sample.labels["le"]): sample.value
            for family in text_string_to_metric_families(metrics.text)
            for sample in family.samples
            if sample.name == LAG_BUCKETS
        }
        if not buckets:
            raise RuntimeError(f"/metrics has no {LAG_BUCKETS}")
        tasks = await self.client.get("/debug/tasks", headers=self.headers)
        tasks.raise_for_status()
        peak: float = tasks.json()["loop_lag"]["peak_seconds"]
        return LagSnapshot(buckets, peak)


def bucket_quantile(
    quantile: float, before: Mapping[float, float], after: Mapping[float, float]
) -> float | None:
    """The upper bound of the histogram bucket that holds the ``quantile`` of the samples
    observed between two scrapes (``inf`` past the largest bound); None without samples. The
    bound, not an interpolation: the buckets are all that is known of the samples."""
    total = after[math.inf] - before.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0.0) >= quantile * total:
            return bound
    return math.inf


def lag_between(before: LagSnapshot, after: LagSnapshot) -> Lag:
    p99 = bucket_quantile(0.99, before.buckets, after.buckets)
    largest = max(bound for bound in after.buckets if not math.isinf(bound))
    return Lag(p99, largest, after.peak, after.peak > before.peak)


# --- the run ---------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def running_reference(
    app: str, database_url: str, path: str, place: Run, plan: Plan
) -> AsyncIterator[Target]:
    """A reference app on a free port of 127.0.0.1, once it answers ``path``."""
    port = free_port()
    command = [sys.executable, str(BENCH / REFERENCES[app]), "--port", str(port),
               "--database-url", database_url]  # fmt: skip
    if app == "ceiling":
        command += ["--pool-size", str(plan.pool_size)]
    target = Target("127.0.0.1", port, path)
    async with running_process(
        app, command, env=os.environ, log=place.logs[app], ready_url=target.url
    ):
        yield target


async def describe_database(database_url: str, shared_server: bool) -> str:
    engine = create_async_engine(database_url)
    try:
        async with asyncio.timeout(MONITOR_TIMEOUT), engine.connect() as connection:
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    if shared_server:
        url = make_url(database_url)
        where = f"{url.host}:{url.port or 5432}" if url.host else "unix socket"
        return f"PostgreSQL {version}, the server of TEST_DATABASE_URL ({where})"
    return f"PostgreSQL {version}, embedded (unix socket)"


async def measure_app(
    app: str, target: Target, connections: int, plan: Plan, monitor: Monitor | None
) -> Measurement:
    """A warm-up, then one measured window; the loop lag around it for the service."""
    label = f"{app}, {connections} connections"
    wrk = plan.use_wrk
    await generate_load(target, connections, label, WARMUP_SECONDS, use_wrk=wrk, polite=False)
    before = await monitor.snapshot() if monitor else None
    window = await generate_load(
        target, connections, label, plan.seconds, use_wrk=wrk, polite=False
    )
    lag = lag_between(before, await monitor.snapshot()) if monitor and before else None
    return Measurement(app, connections, window, lag)


async def run_benchmark(place: Run, plan: Plan) -> Report:
    report = Report(plan)
    log = place.logs["service"]
    async with (
        migrated_database(place, log, CONTROLLED_VARIABLES) as database_url,
        contextlib.AsyncExitStack() as stack,
    ):
        report.database = await describe_database(database_url, place.shared_server)
        token = secrets.token_urlsafe(16)
        host, port = await stack.enter_async_context(
            running_service(database_url, log, CONTROLLED_VARIABLES, DEBUG_TOKEN=token)
        )
        path = f"/users/{await create_user(host, port)}"
        targets = {"service": Target(host, port, path)}
        for app in REFERENCES:
            reference = running_reference(app, database_url, path, place, plan)
            targets[app] = await stack.enter_async_context(reference)
        client = await stack.enter_async_context(
            httpx2.AsyncClient(base_url=f"http://{host}:{port}", timeout=MONITOR_TIMEOUT)
        )
        monitor = Monitor(client, token)
        for connections in plan.connections:
            for round_index in range(plan.rounds):
                order = APPS if round_index % 2 == 0 else APPS[::-1]
                for app in order:
                    measured = await measure_app(
                        app, targets[app], connections, plan, monitor if app == "service" else None
                    )
                    report.measurements.append(measured)
                    progress(
                        f"{connections} connections, round {round_index + 1}/{plan.rounds}: "
                        f"{app} {measured.window.goodput:.0f} req/s"
                    )
    return report


# --- the table -------------------------------------------------------------------------------


def median_round(measurements: Sequence[Measurement]) -> Measurement:
    """The round with the median req/s (the lower of the two middle ones for an even count)."""
    ordered = sorted(measurements, key=lambda measured: measured.window.goodput)
    return ordered[(len(ordered) - 1) // 2]


def round_ratio(app: Sequence[Measurement], ceiling: Sequence[Measurement]) -> float:
    """The median over the rounds of the app's req/s divided by the ceiling's in the same
    round: a machine whose speed drifts during the run (a shared host) moves both alike."""
    ratios = sorted(
        mine.window.goodput / theirs.window.goodput
        for mine, theirs in zip(app, ceiling, strict=True)
        if theirs.window.goodput
    )
    if not ratios:
        return 0.0
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def _ms(seconds: float | None, bound: bool = False) -> str:
    if seconds is None:
        return "-"
    return ("<=" if bound else "") + f"{seconds * 1000:.1f}"


def _lag_p99(lag: Lag) -> str:
    if lag.p99 is None:
        return "-"
    if math.isinf(lag.p99):
        return ">" + _ms(lag.largest_bound)
    return _ms(lag.p99, bound=True)


HEADER = ("connections", "app", "req/s", "ratio", "p50 ms", "p99 ms", "non-200", "requests",
          "loop lag p99 ms", "loop lag peak ms")  # fmt: skip


def table_rows(report: Report) -> list[list[str]]:
    rows = []
    for connections in report.plan.connections:
        rounds = {
            app: [m for m in report.measurements if m.app == app and m.connections == connections]
            for app in APPS
        }
        if not all(rounds.values()):
            continue
        for app in APPS:
            median = median_round(rounds[app])
            p50, p99, _, _ = latencies(median.window)
            lag = median.lag
            ratio = round_ratio(rounds[app], rounds["ceiling"])
            rows.append([
                str(connections), app, f"{median.window.goodput:.0f}", f"{ratio:.2f}",
                _ms(p50), _ms(p99),
                str(sum(m.window.not_ok for m in rounds[app])),
                str(sum(m.window.requests for m in rounds[app])),
                _lag_p99(lag) if lag else "-",
                _ms(lag.peak, bound=not lag.peak_in_window) if lag else "-",
            ])  # fmt: skip
    return rows


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Hardware", "cpu model"}:
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def server_stack() -> str:
    """What uvicorn's defaults pick here, for the service and the references alike."""
    loop = f"uvloop {_version('uvloop')}" if importlib.util.find_spec("uvloop") else "asyncio"
    http = (
        f"httptools {_version('httptools')}"
        if importlib.util.find_spec("httptools")
        else f"h11 {_version('h11')}"
    )
    return f"uvicorn {_version('uvicorn')}, event loop {loop}, HTTP parser {http}"


def generator_name(plan: Plan) -> str:
    wrk = shutil.which("wrk")
    if not plan.use_wrk or wrk is None:
        return "Python clients on raw keep-alive connections (uvloop), on the same cores"
    try:
        found = subprocess.run(  # noqa: S603 - wrk found on PATH, fixed arguments
            [wrk, "-v"], capture_output=True, text=True, timeout=10, check=False
        )
        version = (found.stdout or found.stderr).splitlines()[0].split(" Copyright")[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        version = "wrk"
    return f"{version}, up to 2 threads, on the same cores"


@dataclass(frozen=True)
class Context:
    """What the header says about the run, taken before it starts."""

    started: datetime.datetime
    load_average: str
    generator: str


def take_context(plan: Plan) -> Context:
    try:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except (AttributeError, OSError):
        load = "unknown"
    return Context(datetime.datetime.now(datetime.UTC), load, generator_name(plan))


def to_markdown(report: Report, context: Context) -> str:
    plan = report.plan
    settings = Settings(environment="test", database_url=None)
    service_pool = f"{settings.db_pool_size} + {settings.db_max_overflow} overflow"
    lines = [
        f"# Hot path: `{REQUEST}`, the service against its references",
        "",
        f"- date: {context.started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores, load average {context.load_average}"
        " (1, 5, 15 min) before the run",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); "
        + server_stack(),
        f"- database: {report.database}; pools: service {service_pool}, "
        f"ceiling {plan.pool_size}, naive 5 + 10 overflow (SQLAlchemy's defaults)",
        f"- load generator: {context.generator}",
        f"- {plan.seconds:g} s per measurement after a {WARMUP_SECONDS:g} s warm-up; "
        + ("1 round" if plan.rounds == 1 else f"{plan.rounds} rounds in alternating order")
        + ", the median round of each app shown",
        "",
        "| " + " | ".join(HEADER) + " |",
        "| ---: | --- |" + " ---: |" * (len(HEADER) - 2),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", *EXPLANATION]
    return "\n".join(lines) + "\n"


EXPLANATION = (
    "Rows: `ceiling` is `bench/reference_ceiling.py` (bare Starlette, a raw asyncpg pool, no",
    "access log: the least work this stack can do); `service` is this service as deployed",
    f"(`python -m {PACKAGE_NAME}`, every middleware, the admission gate, JSON logs and access",
    "log to a file); `naive` is `bench/reference_naive.py` (FastAPI and the ORM with their",
    "defaults, uvicorn's access log). All three read the same row of the same database.",
    "`req/s` counts the 200s per second (median round); `ratio` divides it by the ceiling's in",
    "the same round and connection count, median of the rounds. p50 and p99 are those of all",
    "answers as the generator saw them, queueing included. `non-200` counts every other",
    "answer (a 503 is the admission gate shedding load) and every dropped connection, over all",
    "rounds, out of `requests`. Loop lag",
    "is the service's own monitor (a heartbeat every 0.1 s): p99 over the measured window from",
    "its histogram, as the upper bound of its bucket, and the peak (`<=`: no new peak in the",
    "window, so the peak since startup bounds it).",
    "The generator, the apps and PostgreSQL share the machine: only ratios within one run are",
    "comparable, never figures of different runs or machines.",
)


# --- the command -----------------------------------------------------------------------------


def _connection_counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connection counts must be at least 1")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"{REQUEST}: the service against references")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument(
        "--connections", type=_connection_counts, default=(32, 128), help="e.g. 32,128"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per app (5)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    has_wrk = shutil.which("wrk") is not None
    if args.generator == "wrk" and not has_wrk:
        parser.error("--generator wrk: wrk is not installed (apt-get install wrk)")
    plan = Plan(
        seconds=args.seconds,
        rounds=args.rounds,
        connections=args.connections,
        use_wrk=args.generator == "wrk" or (args.generator == "auto" and has_wrk),
        pool_size=Settings(environment="test", database_url=None).db_pool_size,
    )
    context = take_context(plan)
    # SIGTERM (a CI job's timeout, a plain `kill`) stops the run the way Ctrl-C does, through
    # every `finally`: the apps, wrk and the embedded PostgreSQL are stopped, not left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = run_in_temporary_folder(
            "bench-hotpath-", ["service", *REFERENCES], lambda place: run_benchmark(place, plan)
        )
    except KeyboardInterrupt:
        print("interrupted; every process started has been stopped", file=sys.stderr)
        return 130
    markdown = to_markdown(report, context)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown)
    print(markdown)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
