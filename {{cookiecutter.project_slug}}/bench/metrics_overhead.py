"""What the metrics middleware costs a request, measured without the network or the database.

What it measures
    One ASGI request through a minimal app that sets ``scope["route"]`` (as Starlette's router
    does) and answers 200, called directly in a loop: once bare, once wrapped in
    ``MetricsMiddleware`` with its own ``ServiceMetrics``. The rounds alternate; the best of
    several rounds of each is kept, which filters out the machine's other work.

How to read the output
    ``bare`` and ``with metrics`` are microseconds per request, ``cost`` their difference: the
    middleware's price (a closure for ``send``, one gauge up and down, one histogram observe).
    Set it against a real request of this service (about a millisecond and more: see
    ``bench/load.py``). The ratio moves little between machines; the microseconds do.

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/metrics_overhead.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.observability.metrics import MetricsMiddleware, ServiceMetrics

ROUNDS = 5


@dataclass(frozen=True)
class _Route:
    path_format: str = "/users/{user_id}"


_ROUTE = _Route()
_START: Message = {"type": "http.response.start", "status": 200, "headers": []}
_BODY: Message = {"type": "http.response.body", "body": b"{}"}


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = _ROUTE
    await send(_START)
    await send(_BODY)


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def _per_request(app: ASGIApp, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        scope: Scope = {"type": "http", "method": "GET", "path": "/users/1"}
        await app(scope, _receive, _send)
    return (time.perf_counter() - started) / requests


async def main(requests: int) -> None:
    measured = MetricsMiddleware(_app, ServiceMetrics())
    bare: list[float] = []
    wrapped: list[float] = []
    await _per_request(_app, requests // 10)  # warm-up
    await _per_request(measured, requests // 10)
    for _ in range(ROUNDS):
        bare.append(await _per_request(_app, requests))
        wrapped.append(await _per_request(measured, requests))
    best_bare, best_wrapped = min(bare), min(wrapped)
    print(f"{'bare':>14} {'with metrics':>14} {'cost':>10}  (microseconds per request)")
    print(
        f"{best_bare * 1e6:14.2f} {best_wrapped * 1e6:14.2f} "
        f"{(best_wrapped - best_bare) * 1e6:10.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per round")
    asyncio.run(main(parser.parse_args().requests))
