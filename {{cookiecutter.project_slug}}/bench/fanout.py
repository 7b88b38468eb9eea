"""Fan-out against sequential awaits: what a TaskGroup buys a handler that needs three sources.

What it measures
    The dashboard's fan-out (``run_all`` from ``aio/fanout.py``, an ``asyncio.TaskGroup``
    underneath) against awaiting the same three sources one after another. Every source takes
    100 ms. Two rows:

    * ``asyncio.sleep``: three ``asyncio.sleep(0.1)``. Only the event loop's own scheduling is
      measured: this is the floor.
    * ``HTTP (loopback)``: the three calls of the service's ``Upstreams`` (preferences, recent
      notifications, notify), through the service's own shared httpx2 client, to a small
      HTTP/1.1 server started in this process on 127.0.0.1 that answers every request after
      100 ms. This adds sockets, HTTP parsing and the connection pool.

    Each round runs the three sources once in a row and once fanned out, alternating, after a
    warm-up round that opens the connections; the rounds share the ``--seconds`` budget.

How to read the output
    ``sequential`` and ``fan-out`` are the median wall time of one round of three sources, in
    milliseconds; ``ratio`` is fan-out / sequential. Three 100 ms waits take about 300 ms in a
    row and about 100 ms at once, so a ratio near 0.34 says the fan-out really overlaps them.
    A ratio well above that says something serialises the calls (a pool of one connection, a
    blocking call on the loop, a lock shared by the sources). Compare the ratios, not the
    milliseconds: noise on a shared machine moves both columns of a row together.

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/fanout.py [--seconds N]

Only 127.0.0.1 is contacted, and the run stops by itself after about ``N`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from harness import machine_load

from {{ cookiecutter.package_name }}.aio.fanout import run_all
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.upstream.calls import Upstreams
from {{ cookiecutter.package_name }}.upstream.client import create_http_client

DELAY = 0.1  # seconds each source takes
SOURCE_COUNT = 3
MIN_ROUNDS = 3
MAX_ROUNDS = 200  # a bound on the traffic, whatever --seconds says

Sources = Mapping[str, Callable[[], Awaitable[object]]]


class DelayedUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request after ``delay`` seconds.

    Connections are kept alive, as the service's client expects. It speaks just enough HTTP for
    the upstream contract: ``/notifications`` answers a JSON list, ``/preferences/<id>`` the
    preferences of that user, every other path an empty object.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[object]] = {}

    async def __aenter__(self) -> DelayedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is None:
            return
        self._server.close()
        # Idle keep-alive connections would wait for a next request forever (and
        # Server.wait_closed waits for every connection since Python 3.12). Closing their
        # sockets ends each handler through end-of-file, the way a client leaving does: a
        # cancelled handler would make Python 3.11's streams log a spurious traceback.
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[writer] = task
        # The client closing the connection ends the loop: nothing is left to answer.
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    await self._answer_one(reader, writer)
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        target = request_line.split(" ")[1]
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                await reader.readexactly(int(value))
        await asyncio.sleep(self.delay)
        body = b"{}"
        if target.startswith("/notifications?"):
            body = b"[]"
        elif target.startswith("/preferences/"):  # what the service's schema requires
            user_id = int(target.removeprefix("/preferences/").partition("?")[0])
            body = b'{"user_id": %d, "language": "en"}' % user_id
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()


@dataclass(frozen=True)
class Row:
    name: str
    rounds: int
    sequential: float  # median seconds of one round
    fanout: float

    @property
    def ratio(self) -> float:
        return self.fanout / self.sequential


async def run_sequentially(sources: Sources) -> None:
    for source in sources.values():
        await source()


async def run_fanned_out(sources: Sources) -> None:
    await run_all(sources)


async def _timed(run: Callable[[Sources], Awaitable[None]], sources: Sources) -> float:
    start = time.perf_counter()
    await run(sources)
    return time.perf_counter() - start


async def measure(name: str, sources: Sources, rounds: int) -> Row:
    # Warm-up: the fan-out opens one connection per source, and nothing of that is measured.
    await run_fanned_out(sources)
    await run_sequentially(sources)
    sequential: list[float] = []
    fanout: list[float] = []
    for _ in range(rounds):
        # Alternating the two spreads any drift of the machine over both columns alike.
        sequential.append(await _timed(run_sequentially, sources))
        fanout.append(await _timed(run_fanned_out, sources))
    return Row(name, rounds, statistics.median(sequential), statistics.median(fanout))


def sleep_sources() -> Sources:
    return {f"sleep-{index}": lambda: asyncio.sleep(DELAY) for index in range(SOURCE_COUNT)}


def upstream_sources(upstreams: Upstreams) -> Sources:
    return {
        "preferences": lambda: upstreams.preferences(1),
        "notifications": lambda: upstreams.recent_notifications(1),
        "notify": lambda: upstreams.notify({"user_id": 1, "order_id": 1}),
    }


async def run_benchmark(seconds: float) -> list[Row]:
    # One round costs a sequential run and a fan-out: (SOURCE_COUNT + 1) delays.
    per_row = seconds / 2
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(per_row / ((SOURCE_COUNT + 1) * DELAY))))
    rows = [await measure("asyncio.sleep", sleep_sources(), rounds)]
    async with DelayedUpstream(DELAY) as server:
        settings = Settings(environment="test", upstream_timeout=5.0)
        # Building a client reads the CA bundle from disk: not on the loop.
        client = await asyncio.to_thread(create_http_client, settings)
        async with client:
            upstreams = Upstreams(
                client,
                preferences_url=server.base_url,
                notifier_url=server.base_url,
                deadline=settings.upstream_timeout,
            )
            rows.append(await measure("HTTP (loopback)", upstream_sources(upstreams), rounds))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        f"{SOURCE_COUNT} sources of {DELAY * 1000:.0f} ms each, median of {rows[0].rounds} rounds"
        + machine_load(),
        f"{'sources':<17}{'sequential':>12}{'fan-out':>11}{'ratio':>8}",
    ]
    lines.extend(
        f"{row.name:<17}{row.sequential * 1000:>9.1f} ms{row.fanout * 1000:>8.1f} ms"
        f"{row.ratio:>8.2f}"
        for row in rows
    )
    ideal = 1 / SOURCE_COUNT
    lines.append(f"ratio = fan-out / sequential; {ideal:.2f} is perfect overlap, 1.00 none")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="time budget shared by both rows (default 6)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    rows = asyncio.run(run_benchmark(args.seconds))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
