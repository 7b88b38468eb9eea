"""What the benchmarks that run the real service share: the PostgreSQL of a run (a throwaway
database on a shared server, or an embedded one), the service's environment, its migrations and
its process, the processes of other apps, and the load generators (lean Python clients on raw
keep-alive connections, and ``wrk``) with what they saw.

Run each benchmark as a script (``python bench/<name>.py``): this folder is then first on the
import path and ``from harness import ...`` finds this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx2
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.db.embedded import asyncpg_url, start_embedded_postgres
from {{ cookiecutter.package_name }}.settings import PACKAGE_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MIGRATE_TIMEOUT = 120.0
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
WARMUP_SECONDS = 1.0
CLIENT_TIMEOUT = 10.0
# Bounds on the traffic whatever the options say: per client, and past the planned duration.
MAX_REQUESTS_PER_CLIENT = 200_000
OVERRUN_SECONDS = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def machine_load() -> str:
    """The 1-minute load average against the core count: how much else ran meanwhile."""
    if not hasattr(os, "getloadavg"):  # Unix only
        return ""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    return f" (load average {load:.1f} on {os.cpu_count()} cores)"


def as_asyncpg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def print_log_tail(path: Path, lines: int = 30) -> None:
    with contextlib.suppress(OSError):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"last lines of {path.name}:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    """uvloop for the generator too, when installed: less of the shared CPU per request."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return None
    loop_class: type[asyncio.AbstractEventLoop] = uvloop.Loop
    return loop_class


# --- PostgreSQL and the service ------------------------------------------------------------


@contextlib.contextmanager
def database_server(folder: Path) -> Iterator[tuple[str, bool]]:
    """The PostgreSQL of a run: yields its URL and whether it is shared. Shared: the server in
    ``TEST_DATABASE_URL`` (give the run a throwaway database on it); else an embedded one in
    ``folder``, stopped at the end. Blocking (initdb, then start): call it before the event
    loop runs, never inside it."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield as_asyncpg(external), True
        return
    server = start_embedded_postgres(folder / "postgres")
    try:
        yield asyncpg_url(server), False
    finally:
        server.cleanup()


@dataclass(frozen=True)
class Run:
    """Where one benchmark run happens: its PostgreSQL server and its open log files."""

    server_url: str
    shared_server: bool  # TEST_DATABASE_URL's server: the run works in a throwaway database
    logs: Mapping[str, IO[bytes]]


def run_in_temporary_folder(
    prefix: str,
    log_names: Sequence[str],
    benchmark: Callable[[Run], Coroutine[Any, Any, T]],
    *,
    uvloop: bool = True,
) -> T:
    """The whole run in a temporary folder: ``<name>.log`` for each of ``log_names`` and the
    embedded PostgreSQL live there, and all is removed at the end, Ctrl-C included. The event
    loop is uvloop's when installed (unless ``uvloop`` is false). On a failure the last lines
    of every log are printed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        folder = Path(name)
        paths = [folder / f"{log}.log" for log in log_names]
        try:
            with database_server(folder) as (server_url, shared), contextlib.ExitStack() as files:
                logs = {path.stem: files.enter_context(path.open("wb")) for path in paths}
                run = Run(server_url, shared, logs)
                with asyncio.Runner(loop_factory=loop_factory() if uvloop else None) as runner:
                    return runner.run(benchmark(run))
        except Exception:
            for path in paths:
                print_log_tail(path)
            raise


def service_environment(controlled: Iterable[str], **values: str) -> dict[str, str]:
    """This process's environment without the ``controlled`` variables (they must come from the
    benchmark, not the caller's shell), with the service's sources importable and ``values``."""
    dropped = set(controlled)
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT / "src"), env.get("PYTHONPATH")])
    )
    env.update(values)
    return env


async def migrate(database_url: str, log: IO[bytes], controlled: Iterable[str]) -> None:
    """``python -m <package> migrate`` on ``database_url``, bounded by ``MIGRATE_TIMEOUT``."""
    env = service_environment(controlled, ENVIRONMENT="test", DATABASE_URL=database_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", PACKAGE_NAME, "migrate", env=env, stdout=log, stderr=log
    )
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0:
        raise RuntimeError(f"python -m {PACKAGE_NAME} migrate exited with {code}")


@contextlib.asynccontextmanager
async def migrated_database(
    run: Run, log: IO[bytes], controlled: Iterable[str]
) -> AsyncIterator[str]:
    """The run's database, migrated: a throwaway one on a shared server, else the server's."""
    async with contextlib.AsyncExitStack() as stack:
        database_url = run.server_url
        if run.shared_server:
            database_url = await stack.enter_async_context(throwaway_database(run.server_url))
        await migrate(database_url, log, controlled)
        yield database_url


@contextlib.asynccontextmanager
async def throwaway_database(server_url: str) -> AsyncIterator[str]:
    """A database of this run alone on a shared server, dropped at the end."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``STOP_TIMEOUT``."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


async def _wait_until_ready(name: str, process: asyncio.subprocess.Process, url: str) -> None:
    """Until ``url`` answers 200; an error if the process exits or ``STARTUP_TIMEOUT`` passes."""
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT), httpx2.AsyncClient(timeout=2.0) as client:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} at startup")
                with contextlib.suppress(httpx2.TransportError):
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise RuntimeError(f"{name}: no 200 from {url} within {STARTUP_TIMEOUT:g} s") from None


@contextlib.asynccontextmanager
async def running_process(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log: IO[bytes],
    ready_url: str,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``command`` in a process of its own (stdout discarded, stderr to ``log``), once
    ``ready_url`` answers 200 (within ``STARTUP_TIMEOUT``); stopped with ``stop_process``."""
    process = await asyncio.create_subprocess_exec(
        *command, env=dict(env), stdout=asyncio.subprocess.DEVNULL, stderr=log
    )
    try:
        await _wait_until_ready(name, process, ready_url)
        yield process
    finally:
        await stop_process(process)


@contextlib.asynccontextmanager
async def running_service(
    database_url: str, log: IO[bytes], controlled: Iterable[str], **settings: str
) -> AsyncIterator[tuple[str, int]]:
    """The service as deployed (``python -m <package>``: uvicorn, the real lifespan, JSON logs
    on stderr to ``log``) on a free port of 127.0.0.1, once ready; yields (host, port)."""
    port = free_port()
    env = service_environment(
        controlled,
        ENVIRONMENT="test",
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        **settings,
    )
    command = (sys.executable, "-m", PACKAGE_NAME)
    ready_url = f"http://127.0.0.1:{port}/health/ready"
    async with running_process("the service", command, env=env, log=log, ready_url=ready_url):
        yield "127.0.0.1", port


async def create_user(host: str, port: int) -> int:
    """A user created through the service's API; its id."""
    async with httpx2.AsyncClient(base_url=f"http://{host}:{port}", timeout=10.0) as client:
        email = f"bench-{uuid.uuid4().hex}@example.com"
        created = await client.post("/users", json={"email": email, "name": "Bench"})
        if created.status_code == 401:
            raise RuntimeError("POST /users answered 401: the benchmarks need auth=none")
        created.raise_for_status()
        user_id: int = created.json()["id"]
        return user_id


# --- what a load generator saw --------------------------------------------------------------


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

    @property
    def not_ok(self) -> int:
        """Every request that did not end in a 200."""
        return self.requests - len(self.ok)


def quantile(values: Sequence[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def latencies(window: Window) -> tuple[float, float, float | None, float | None]:
    """p50 and p99 of all answers, the slowest answer, and p99 of the 200s (wrk: no such)."""
    if window.wrk_percentiles is not None:
        return window.wrk_percentiles.get(50, 0.0), window.wrk_percentiles.get(99, 0.0), None, None
    answers = window.ok + window.refused
    worst = max(answers) if answers else None
    return quantile(answers, 50), quantile(answers, 99), worst, quantile(window.ok, 99)


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


async def generate_load(
    target: Target, clients: int, label: str, seconds: float, *, use_wrk: bool, polite: bool
) -> Window:
    """One window of load, no warm-up: ``wrk -c clients``, or the Python clients."""
    if use_wrk:
        return parse_wrk(await run_wrk(target, clients, seconds), clients, label)
    return await drive(target, Window(clients, label), seconds, polite=polite)


async def measure(
    target: Target, clients: int, label: str, seconds: float, *, use_wrk: bool, polite: bool
) -> Window:
    """A warm-up (connections opened, pools filled, code paths hot), then the measured window.
    wrk cannot tell a 503 from a 500: the 503s are then its non-2xx answers (check the log for
    other 5xx); it retries a 503 at once, and reports percentiles instead of every latency."""
    await generate_load(target, clients, label, WARMUP_SECONDS, use_wrk=use_wrk, polite=polite)
    return await generate_load(target, clients, label, seconds, use_wrk=use_wrk, polite=polite)


# --- wrk -------------------------------------------------------------------------------------

_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


async def run_wrk(target: Target, clients: int, seconds: float) -> str:
    """``wrk -c clients`` for ``seconds`` (whole seconds, at least 1); its report. Bounded:
    killed if it overruns by ``OVERRUN_SECONDS``, and on cancellation."""
    duration = max(1, round(seconds))
    command = ["wrk", "--threads", str(min(2, clients)), "--connections", str(clients),
               "--duration", f"{duration}s", "--timeout", f"{CLIENT_TIMEOUT:g}s", "--latency",
               target.url]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(duration + OVERRUN_SECONDS):
            output = (await process.communicate())[0].decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{output}")
    return output


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
