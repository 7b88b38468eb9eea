"""The one HTTP client of the service, created and closed by the lifespan.

One client means one connection pool: connections are reused across requests instead of a TLS
handshake per call, and the number of sockets to each upstream is bounded. httpx's timeouts
apply per phase (connect, each read, each write, pool wait), so they bound how long one step
may stall; the total deadline of a call is set around it with ``asyncio.timeout`` (see
``upstream/calls.py``).

The per-phase timeouts are a backstop, set above the total deadline: every call made through
``Upstreams`` is cut by its total deadline first, so an error always says which limit fired, and
a test can prove that the total deadline works on its own. Were they equal, a hanging upstream
would be cut by the read timeout just as well, and nothing would show the total deadline missing.
"""

from __future__ import annotations

import httpx2

from ..settings import PACKAGE_NAME, Settings

# How far above the total deadline each phase's own timeout is set.
PHASE_TIMEOUT_FACTOR = 2.0


def create_http_client(settings: Settings) -> httpx2.AsyncClient:
    step = settings.upstream_timeout * PHASE_TIMEOUT_FACTOR
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(connect=step, read=step, write=step, pool=step),
        limits=httpx2.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
            keepalive_expiry=15.0,
        ),
        headers={"user-agent": PACKAGE_NAME},
        follow_redirects=False,
    )
