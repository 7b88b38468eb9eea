"""The identity provider's signing keys, fetched at startup and kept fresh in the background.

Why the request path never fetches keys: a verifier that downloads the JWKS when it meets an
unknown ``kid`` makes that request wait for the identity provider, and lets anyone who can send a
token with a made-up ``kid`` make the service call out once per request (an amplifier aimed at
the provider, and every request slow or failing while the provider is). Here the keys are loaded
once before the service takes traffic, under a deadline; after that only a lifespan-owned task
fetches them: every ``refresh_interval`` seconds, and sooner when a token names a ``kid`` we do
not hold, but never more often than once per ``min_refresh_gap``. That request itself is answered
401 at once; its client retries (a token signed with a brand-new key is rare, and it is served as
soon as the refresh lands). A failed refresh keeps the keys we had and logs: a provider outage
must not log everybody out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Collection, Mapping
from types import MappingProxyType

import httpx2
from jwt import PyJWK, PyJWTError

from ..aio.deadlines import call_deadline

# A JWKS holds a handful of keys; anything far larger is not one.
MAX_JWKS_BYTES = 256 * 1024

_default_logger = logging.getLogger(__name__)


class JwksError(Exception):
    """The JWKS could not be fetched or held no usable signing key."""


def parse_jwks(document: object, algorithms: Collection[str]) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by ``kid``.

    A key is skipped when it has no ``kid`` (a token could not name it), is meant for encryption
    (``use`` other than ``sig``), or is for an algorithm outside ``algorithms``: the algorithm a
    token is checked with comes from its key, never from the token's own header.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError("the JWKS document has no 'keys' list")
    keys: dict[str, PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(dict(entry))
        except PyJWTError:
            continue
        if key.algorithm_name in algorithms:
            keys[kid] = key
    if not keys:
        raise JwksError("the JWKS document holds no usable signing key")
    return keys


class JwksCache:
    """Signing keys by ``kid``, read on the request path, written only by ``refresh``."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        url: str,
        *,
        algorithms: Collection[str],
        fetch_timeout: float,
        refresh_interval: float,
        min_refresh_gap: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self._http = http
        self._url = url
        self._algorithms = frozenset(algorithms)
        self._fetch_timeout = fetch_timeout
        self._refresh_interval = refresh_interval
        self._min_refresh_gap = min_refresh_gap
        self._logger = logger or _default_logger
        self._keys: Mapping[str, PyJWK] = MappingProxyType({})
        self._last_attempt = float("-inf")
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0  # successful fetches, startup included: tests and metrics read it

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def key_for(self, kid: str) -> PyJWK | None:
        """The key named ``kid``, from memory only. An unknown ``kid`` asks the background task
        for an early refresh (rate-limited there) and returns None at once."""
        key = self._keys.get(kid)
        if key is None:
            self._wanted.set()
        return key

    async def _fetch(self) -> dict[str, PyJWK]:
        async with call_deadline(self._fetch_timeout, "JWKS fetch"):
            response = await self._http.get(self._url, headers={"accept": "application/json"})
            response.raise_for_status()
            body = response.content
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError(f"the JWKS document is larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(json.loads(body), self._algorithms)

    async def load(self) -> None:
        """The first fetch, at startup: a failure stops the service from starting, since it
        could not accept a single token."""
        self._last_attempt = time.monotonic()
        self._keys = MappingProxyType(await self._fetch())
        self.refreshes += 1
        self._logger.info("JWKS loaded", extra={"kids": sorted(self._keys)})

    async def refresh(self) -> bool:
        """Fetch again; on any failure keep the keys we have, log, and return False."""
        self._last_attempt = time.monotonic()
        try:
            keys = await self._fetch()
        except Exception:
            # Whatever went wrong (refused, timed out, not JSON, no usable key), the keys we
            # hold are still the best we have; the next round tries again.
            self._logger.warning(
                "JWKS refresh failed; keeping the keys we have",
                extra={"kids": sorted(self._keys)},
                exc_info=True,
            )
            return False
        self._keys = MappingProxyType(keys)
        self.refreshes += 1
        self._logger.info("JWKS refreshed", extra={"kids": sorted(keys)})
        return True

    async def _run(self) -> None:
        while True:
            # Sleep until the next scheduled refresh, or until a request meets an unknown kid.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_interval):
                    await self._wanted.wait()
            # Rate limit: at most one fetch per min_refresh_gap, however many unknown kids come.
            gap = self._last_attempt + self._min_refresh_gap - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self._wanted.clear()
            await self.refresh()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jwks-refresh")

    async def stop(self) -> None:
        """Cancel the refresher and wait for it: it holds no state worth finishing."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait does not raise the task's CancelledError, so a cancellation of stop()
        # itself still propagates instead of being swallowed with the task's.
        await asyncio.wait([task])
