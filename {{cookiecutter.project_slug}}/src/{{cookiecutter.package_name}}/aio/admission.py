"""Bounded admission: past capacity, refuse the excess at once instead of queueing it.

Why: a service that takes every request shares what it has (the database pool, one CPU per
process) among all of them. Past capacity, each new request makes every other one slower: the
latency of all of them grows with the number of clients, and requests end up waiting so long for
a database connection that they fail anyway (after ``pool_timeout``), having used CPU meanwhile.
The clients, seeing slow failures, retry, which adds more. Nothing in asyncio, the server or the
framework limits this: an ASGI server accepts as many requests as there are connections.

``AdmissionGate`` caps the requests in flight at ``limit``. A request that finds every slot taken
waits at most ``max_wait`` seconds for one (long enough to absorb a short burst), then it is
refused with ``Overloaded``. The waiters are served first come, first served, and a slot passes
straight from the request that leaves to the one that waited longest, so nobody can overtake a
waiter. The requests inside keep the latency of a service at capacity, not one that grows with
the crowd, and the refused ones learn in ``max_wait`` seconds that they should come back later.

``AdmissionMiddleware`` puts one gate in front of an ASGI app and answers a refused request with
503, a ``Retry-After`` header and a JSON body, for a few microseconds of CPU: no routing, no body
parsing, no database. Paths that must answer under overload (health checks, metrics, debug dumps)
are given as ``exempt_paths`` and are never counted nor refused. The refusals are counted on the
gate and logged as one summary line at most every ``log_interval`` seconds: under overload a line
for each refusal would cost CPU the service does not have.

The toolkit module imports nothing of the project and no framework: copy it as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias

logger = logging.getLogger(__name__)

# The ASGI types, spelled as ASGI frameworks spell them (no framework import).
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


class Overloaded(Exception):  # noqa: N818 - named for the state, like TimeoutError
    """Every slot stayed taken for the whole wait: the caller must be refused."""


class AdmissionGate:
    """At most ``limit`` holders at once; a newcomer waits at most ``max_wait`` seconds.

    ``acquire`` returns once the caller holds a slot and raises ``Overloaded`` when none came
    free in time; every successful ``acquire`` must be paired with one ``release``. A cancelled
    waiter leaves the queue, and a slot handed to it at that very moment goes to the next one.
    """

    def __init__(self, limit: int, max_wait: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self.limit = limit
        self.max_wait = max_wait
        self.admitted_total = 0
        self.refused_total = 0
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            self.admitted_total += 1
            return
        if self.max_wait == 0:
            self.refused_total += 1
            raise Overloaded(f"all {self.limit} slots are taken")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter
        except TimeoutError:
            if not _handed_a_slot(waiter):
                self.refused_total += 1
                raise Overloaded(
                    f"no slot of {self.limit} came free within {self.max_wait:g} s"
                ) from None
            # The slot arrived in the same instant as the deadline: keep it, it is ours.
        except asyncio.CancelledError:
            if _handed_a_slot(waiter):
                self.release()  # ours already; pass it on, or it is lost for good
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        self.admitted_total += 1

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one (it never goes free)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1


def _handed_a_slot(waiter: asyncio.Future[None]) -> bool:
    return waiter.done() and not waiter.cancelled()


class AdmissionMiddleware:
    """Run each HTTP request inside ``gate``; answer a refused one with 503 and ``Retry-After``.

    The body is ``{"error": {"code": "overloaded", "message": ..., "request_id": ...}}``
    (``request_id`` when ``request_id`` returns one). A path equal to one of ``exempt_paths``, or
    below one (``/health`` covers ``/health/live``), bypasses the gate. Lifespan and websocket
    scopes pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        gate: AdmissionGate,
        *,
        retry_after: int = 1,
        exempt_paths: Iterable[str] = (),
        request_id: Callable[[], str | None] | None = None,
        log_interval: float = 10.0,
    ) -> None:
        self.app = app
        self.gate = gate
        self.retry_after = retry_after
        self.request_id = request_id
        self.log_interval = log_interval
        roots = [path.rstrip("/") for path in exempt_paths]
        self._exempt_exact = frozenset(roots)
        self._exempt_below = tuple(f"{root}/" for root in roots)
        self._refused_since_log = 0
        self._last_log = float("-inf")

    def _exempt(self, path: str) -> bool:
        return path in self._exempt_exact or path.startswith(self._exempt_below)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            await self.gate.acquire()
        except Overloaded:
            self._note_refusal()
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release()

    def _note_refusal(self) -> None:
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_log < self.log_interval:
            return
        logger.warning(
            "overloaded: refused %d requests since the last report",
            self._refused_since_log,
            extra={
                "limit": self.gate.limit,
                "in_flight": self.gate.in_flight,
                "waiting": self.gate.waiting,
                "refused_total": self.gate.refused_total,
            },
        )
        self._refused_since_log = 0
        self._last_log = now

    async def _refuse(self, send: Send) -> None:
        error: dict[str, str] = {
            "code": "overloaded",
            "message": f"the service is at capacity; retry after {self.retry_after} s",
        }
        request_id = self.request_id() if self.request_id is not None else None
        if request_id is not None:
            error["request_id"] = request_id
        body = json.dumps({"error": error}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"retry-after", b"%d" % self.retry_after),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
