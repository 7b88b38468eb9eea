"""Overload: goodput and latency tail with 1, 4, 8 and 16 times more clients than the pool.

What it measures
    The service as it runs in production, in a process of its own
    (``python -m {{ cookiecutter.package_name }}``: uvicorn, the real lifespan, the default
    settings unless the environment overrides them), on a real PostgreSQL: the server in
    ``TEST_DATABASE_URL`` when that is set (in a throwaway database, dropped at the end), else an
    embedded one in a temporary folder, migrated first with
    ``python -m {{ cookiecutter.package_name }} migrate``.
    One user is created, then ``C`` clients, each on one keep-alive connection of its own,
    send ``GET /users/{id}`` back to back for ``--seconds`` after a one-second warm-up. ``C`` is
    32 (the reference, as in ``load.py``), then 1, 4, 8 and 16 times the pool
    (``DB_POOL_SIZE + DB_MAX_OVERFLOW``: 15 by default). Then the service is started again
    without admission control (``ADMISSION_LIMIT`` far above any crowd) and measured at 8x and
    16x. Other settings pass through from the environment (``ADMISSION_LIMIT``,
    ``ADMISSION_TIMEOUT``, ``DB_POOL_SIZE``, ...), to compare them the same way.

    A client that gets a 503 sends its next request at once (``--retry at-once``, the default,
    as ``wrk`` does: the harshest client there is), or waits the ``Retry-After`` it was given
    (``--retry after-header``, what a well-behaved client does).

How to read the output
    One row per run: clients (and how many times the pool that is); goodput, the 200s per
    second, and its ratio to the 32-client goodput of the same run; 503s per second; failures,
    anything else (a 500, a 504, a dropped connection, a client timeout of 10 s) out of all
    requests; latency percentiles and the slowest answer of **all** answers (200s and 503s
    together, as the clients saw them), and p99 of the 200s alone, in milliseconds.
    The target, checked on the last line for the 8x run with admission: no failure, p99 of all
    answers under 1 s, goodput at least 0.8 of the 32-client goodput. The runs without
    admission show what the gate prevents: everybody queues, and the tail grows with the crowd.
    The load generator, the service and PostgreSQL share the machine: compare the ratios and
    the rows of one run, never figures from different runs or machines.

    With ``--wrk`` (and ``wrk`` installed) the crowd is ``wrk -c C`` instead of the Python
    clients: far less CPU for the generator; wrk retries a 503 at once and reports latency
    percentiles of all answers only (no p99 of the 200s, no maximum).

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/overload.py [--seconds N] [--retry at-once|after-header] [--wrk]

Only 127.0.0.1 (and PostgreSQL's unix socket) is contacted; every loop is bounded in time and
count, and the run stops by itself (about ``7 * (N + 1) + 15`` seconds; 80 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx2
from harness import free_port, migrate, service_environment, throwaway_database
from sqlalchemy import make_url

from {{ cookiecutter.package_name }}.db.embedded import asyncpg_url, start_embedded_postgres
from {{ cookiecutter.package_name }}.settings import PACKAGE_NAME, Settings

# Variables that must come from this script, not from the caller's shell.
CONTROLLED_VARIABLES = (
    "DATABASE_URL", "ENVIRONMENT", "HOST", "PORT", "PREFERENCES_URL", "NOTIFIER_URL",
    "DEBUG_TOKEN",
)  # fmt: skip
REFERENCE_CLIENTS = 32
POOL_MULTIPLES = (1, 4, 8, 16)
TARGET_MULTIPLE = 8  # the target is checked on this crowd
WARMUP_SECONDS = 1.0
CLIENT_TIMEOUT = 10.0
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
NO_ADMISSION = 100_000  # an ADMISSION_LIMIT no crowd here reaches: the gate never refuses
# Bounds on the traffic whatever the options say: per client, and past the planned duration.
MAX_REQUESTS_PER_CLIENT = 200_000
OVERRUN_SECONDS = 30.0
TARGET_P99 = 1.0
TARGET_GOODPUT_RATIO = 0.8


@dataclass
class Window:
    """What the clients saw in one measured window."""

    clients: int
    label: str
    elapsed: float = 0.0
    ok: list[float] = field(default_factory=list)  # latencies of the 200s, seconds
    refused: list[float] = field(default_factory=list)  # latencies of the 503s
    failures: int = 0  # any other status, a dropped connection, a client timeout
    # Filled by wrk runs only, which report percentiles instead of every latency.
    wrk_percentiles: dict[int, float] | None = None
    wrk_requests: int = 0

    @property
    def requests(self) -> int:
        return self.wrk_requests or len(self.ok) + len(self.refused) + self.failures

    @property
    def goodput(self) -> float:
        return len(self.ok) / self.elapsed if self.elapsed else 0.0


@contextlib.asynccontextmanager
async def running_service(
    database_url: str, log: IO[bytes], **settings: str
) -> AsyncIterator[tuple[str, int]]:
    """The service on a free port of 127.0.0.1; yields (host, port). SIGTERM at the end."""
    port = free_port()
    env = service_environment(
        CONTROLLED_VARIABLES,
        ENVIRONMENT="test",
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        **settings,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", PACKAGE_NAME, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
    )
    try:
        async with (
            asyncio.timeout(STARTUP_TIMEOUT),
            httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client,
        ):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the service exited with {process.returncode} at startup")
                with contextlib.suppress(httpx2.TransportError):
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def create_user(host: str, port: int) -> int:
    async with httpx2.AsyncClient(base_url=f"http://{host}:{port}", timeout=10.0) as client:
        email = f"bench-{uuid.uuid4().hex}@example.com"
        created = await client.post("/users", json={"email": email, "name": "Bench"})
        created.raise_for_status()
        user_id: int = created.json()["id"]
        return user_id


# --- the Python load generator: one raw keep-alive connection per client --------------------
# Much cheaper per request than a full HTTP client library, so that the generator takes less
# of the CPU it shares with the service.

_RETRY_AFTER = re.compile(rb"\r\nretry-after:\s*(\d+)", re.IGNORECASE)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, int]:
    """Send ``request`` and read the answer; return its status and Retry-After (or 0)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    retry_after = _RETRY_AFTER.search(head)
    return int(head[9:12]), int(retry_after.group(1)) if retry_after else 0


@dataclass(frozen=True)
class Target:
    """Where the crowd sends its requests."""

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def request(self) -> bytes:
        return f"GET {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n\r\n".encode()


async def _client(target: Target, until: float, window: Window, *, polite: bool) -> None:
    request = target.request
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.perf_counter() >= until:
                break
            started = time.perf_counter()
            try:
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    status, retry_after = await _exchange(reader, writer, request)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                window.failures += 1
                return  # the connection is unusable now: this client stops
            latency = time.perf_counter() - started
            if status == 200:
                window.ok.append(latency)
            elif status == 503:
                window.refused.append(latency)
                if polite and retry_after:
                    await asyncio.sleep(min(retry_after, until - time.perf_counter()))
            else:
                window.failures += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def drive(target: Target, window: Window, seconds: float, *, polite: bool) -> Window:
    """``window.clients`` clients send requests back to back for ``seconds``."""
    start = time.perf_counter()
    async with asyncio.timeout(seconds + OVERRUN_SECONDS), asyncio.TaskGroup() as group:
        for _ in range(window.clients):
            group.create_task(_client(target, start + seconds, window, polite=polite))
    window.elapsed = time.perf_counter() - start
    return window


async def measure(
    target: Target, clients: int, label: str, seconds: float, *, polite: bool
) -> Window:
    # Warm-up: connections opened, the pool filled, caches and code paths hot.
    await drive(target, Window(clients, label), WARMUP_SECONDS, polite=polite)
    return await drive(target, Window(clients, label), seconds, polite=polite)


# --- wrk -------------------------------------------------------------------------------------

_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


async def measure_with_wrk(target: Target, clients: int, label: str, seconds: float) -> Window:
    """``wrk -c clients``: it cannot tell a 503 from a 500, so ``failures`` counts neither and
    the 503s are the non-2xx answers (check the service's log for 5xx other than 503)."""
    url = target.url

    def wrk(duration: float) -> list[str]:
        return ["wrk", "--threads", str(min(2, clients)), "--connections", str(clients),
                "--duration", f"{max(1, round(duration))}s", "--timeout", f"{CLIENT_TIMEOUT:g}s",
                "--latency", url]  # fmt: skip

    warmup = await asyncio.create_subprocess_exec(
        *wrk(WARMUP_SECONDS), stdout=asyncio.subprocess.DEVNULL
    )
    await warmup.wait()
    finished = await asyncio.create_subprocess_exec(*wrk(seconds), stdout=asyncio.subprocess.PIPE)
    output = (await finished.communicate())[0].decode()
    return parse_wrk(output, clients, label)


def parse_wrk(output: str, clients: int, label: str) -> Window:
    window = Window(clients, label)
    requests = _WRK_REQUESTS.search(output)
    if requests is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    total = int(requests.group(1))
    window.elapsed = float(requests.group(2)) * _UNITS[requests.group(3)]
    non_2xx = _WRK_NON_2XX.search(output)
    refused = int(non_2xx.group(1)) if non_2xx else 0
    errors = _WRK_SOCKET_ERRORS.search(output)
    window.failures = sum(int(value) for value in errors.groups()) if errors else 0
    window.ok = [0.0] * (total - refused)  # only the count of 200s is known
    window.refused = [0.0] * refused
    window.wrk_requests = total + window.failures
    window.wrk_percentiles = {
        int(match.group(1)): float(match.group(2)) * _UNITS[match.group(3)]
        for match in _WRK_PERCENTILE.finditer(output)
    }
    return window


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seconds: float
    pool: int
    polite: bool
    use_wrk: bool


async def run_benchmark(
    server_url: str, *, shared_server: bool, plan: Plan, log: IO[bytes]
) -> list[Window]:
    async with contextlib.AsyncExitStack() as stack:
        database_url = server_url
        if shared_server:
            database_url = await stack.enter_async_context(throwaway_database(server_url))
        await migrate(database_url, log, CONTROLLED_VARIABLES)
        runs = [(REFERENCE_CLIENTS, "reference")]
        runs += [(plan.pool * multiple, f"{multiple}x pool") for multiple in POOL_MULTIPLES]
        windows = []
        for admission, crowds in ((True, runs), (False, runs[-2:])):
            settings = {} if admission else {"ADMISSION_LIMIT": str(NO_ADMISSION)}
            async with running_service(database_url, log, **settings) as (host, port):
                target = Target(host, port, f"/users/{await create_user(host, port)}")
                for clients, name in crowds:
                    label = name if admission else f"{name}, no admission"
                    if plan.use_wrk:
                        window = await measure_with_wrk(target, clients, label, plan.seconds)
                    else:
                        window = await measure(
                            target, clients, label, plan.seconds, polite=plan.polite
                        )
                    windows.append(window)
        return windows


def _quantile(values: Sequence[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


HEADER = ("run", "clients", "200/s", "ratio", "503/s", "failures", "p50 ms", "p99 ms",
          "max ms", "p99 200 ms")  # fmt: skip
WIDTHS = (22, 8, 8, 7, 8, 13, 8, 8, 8, 11)


def _row(cells: Sequence[str]) -> str:
    label, *values = cells
    padded = (value.rjust(width) for value, width in zip(values, WIDTHS[1:], strict=True))
    return label.ljust(WIDTHS[0]) + "".join(padded)


def _latencies(window: Window) -> tuple[float, float, float | None, float | None]:
    """p50 and p99 of all answers, the slowest answer, and p99 of the 200s."""
    if window.wrk_percentiles is not None:
        return window.wrk_percentiles.get(50, 0.0), window.wrk_percentiles.get(99, 0.0), None, None
    answers = window.ok + window.refused
    worst = max(answers) if answers else None
    return _quantile(answers, 50), _quantile(answers, 99), worst, _quantile(window.ok, 99)


def format_table(windows: Sequence[Window], plan: Plan) -> str:
    reference = windows[0].goodput
    tool = "wrk" if plan.use_wrk else "Python clients"
    retry = "wait Retry-After" if plan.polite else "503s retried at once"
    lines = [
        f"GET /users/<id>: {plan.seconds:g} s per run, pool {plan.pool}, {tool}, {retry}"
        f"{machine_load()}",
        _row(HEADER),
    ]
    for window in windows:
        p50, p99, worst, p99_ok = _latencies(window)
        ratio = window.goodput / reference if reference else 0.0
        lines.append(
            _row([
                window.label, str(window.clients), f"{window.goodput:.0f}", f"{ratio:.2f}",
                f"{len(window.refused) / window.elapsed:.0f}",
                f"{window.failures}/{window.requests}", _ms(p50), _ms(p99), _ms(worst),
                _ms(p99_ok),
            ])
        )  # fmt: skip
    lines.append(verdict(windows))
    return "\n".join(lines)


def verdict(windows: Sequence[Window]) -> str:
    """The target, checked on the 8x run with admission."""
    reference = windows[0]
    crowd = windows[1 + POOL_MULTIPLES.index(TARGET_MULTIPLE)]
    _, p99, _, _ = _latencies(crowd)
    ratio = crowd.goodput / reference.goodput if reference.goodput else 0.0
    checks = [
        ("no failure", crowd.failures == 0),
        (f"p99 of all answers {_ms(p99)} ms < {TARGET_P99 * 1000:.0f} ms", p99 < TARGET_P99),
        (f"goodput ratio {ratio:.2f} >= {TARGET_GOODPUT_RATIO}", ratio >= TARGET_GOODPUT_RATIO),
    ]
    marks = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks)
    return f"target at {crowd.label} ({crowd.clients} clients): {marks}"


def machine_load() -> str:
    if not hasattr(os, "getloadavg"):
        return ""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    return f" (load average {load:.1f} on {os.cpu_count()} cores)"


def _as_asyncpg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _print_log_tail(path: Path, lines: int = 30) -> None:
    with contextlib.suppress(OSError):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"last lines of the service's log ({path.name}):", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def run_in_temporary_folder(plan: Plan) -> list[Window]:
    """The whole run; the folder holds the service's log and the embedded PostgreSQL."""
    external = os.environ.get("TEST_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as folder:
        log_path = Path(folder) / "service.log"
        server = None
        if external:
            server_url = _as_asyncpg(external)
        else:
            # Blocking (initdb, then start): before the event loop runs, never inside it.
            server = start_embedded_postgres(Path(folder) / "postgres")
            server_url = asyncpg_url(server)
        try:
            with log_path.open("wb") as log, asyncio.Runner(loop_factory=_loop_factory()) as run:
                return run.run(
                    run_benchmark(server_url, shared_server=bool(external), plan=plan, log=log)
                )
        except Exception:
            _print_log_tail(log_path)
            raise
        finally:
            if server is not None:
                server.cleanup()


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    """uvloop for the generator too, when installed: less of the shared CPU per request."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return None
    loop_class: type[asyncio.AbstractEventLoop] = uvloop.Loop
    return loop_class


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GET /users/{id} past capacity, with admission")
    parser.add_argument("--seconds", type=float, default=8.0, help="per run (default 8)")
    parser.add_argument(
        "--retry",
        choices=("at-once", "after-header"),
        default="at-once",
        help="what a client does after a 503 (default: at once, as wrk does)",
    )
    parser.add_argument("--wrk", action="store_true", help="use wrk (must be installed)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.wrk and shutil.which("wrk") is None:
        parser.error("--wrk: wrk is not installed")
    # The pool the service will have: the defaults, or what the environment sets.
    settings = Settings(environment="test", database_url=None)
    plan = Plan(
        seconds=args.seconds,
        pool=settings.db_pool_size + settings.db_max_overflow,
        polite=args.retry == "after-header",
        use_wrk=args.wrk,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        windows = run_in_temporary_folder(plan)
    except KeyboardInterrupt:
        print("interrupted; the service and PostgreSQL have been stopped", file=sys.stderr)
        return 130
    print(format_table(windows, plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
