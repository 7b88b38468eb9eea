"""The two upstream services, each call bounded by one total deadline.

``asyncio.timeout`` around the whole call, body included, is what bounds it: httpx's read
timeout restarts at every chunk, so an upstream that trickles a byte every 0.4 s passes a 0.5 s
read timeout forever. Failures become service errors the API maps to statuses: an upstream
that is down, resets, or answers 5xx or junk is a 502; one that runs out of time is a 504.

An answer is read as it streams and no further than ``max_body_bytes`` (decoded: a small
gzipped body that inflates past the cap is cut too), then validated against its schema
(``upstream/schemas.py``): an upstream that answers too much, or something else than agreed,
is a 502 and its answer goes no further.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from json import loads as parse_json
from typing import Any

import httpx2
from pydantic import ValidationError

from ..aio.deadlines import DeadlineExceeded, call_deadline
from ..errors import ServiceError
from ..logs import request_id_var
from .schemas import NOTIFICATIONS, Preferences

# The largest answer read from an upstream unless told otherwise (UPSTREAM_MAX_BODY_BYTES).
DEFAULT_MAX_BODY_BYTES = 1_048_576

# Every call carries the id of the request it is made for (or of the request that queued the
# notification being delivered), so one id finds the work in every service's logs.
REQUEST_ID_HEADER = "X-Request-ID"

# Told of every finished call: (upstream, outcome "ok" | "error" | "deadline", seconds).
CallObserver = Callable[[str, str, float], None]


class UpstreamError(ServiceError):
    status_code = 502
    code = "upstream_error"


class UpstreamTimeoutError(ServiceError, TimeoutError):
    status_code = 504
    code = "deadline_exceeded"


class Upstreams:
    """Calls to the preferences and notifier services over the one shared client."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        *,
        preferences_url: str,
        notifier_url: str,
        deadline: float,
        observe: CallObserver | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self._client = client
        self._preferences_url = preferences_url.rstrip("/")
        self._notifier_url = notifier_url.rstrip("/")
        self.deadline = deadline
        self._observe = observe

    async def preferences(self, user_id: int) -> dict[str, Any]:
        body = await self._call(
            "preferences", "GET", f"{self._preferences_url}/preferences/{user_id}"
        )
        try:
            preferences = Preferences.model_validate(body)
        except ValidationError as error:
            raise UpstreamError("preferences answered a body that breaks its schema") from error
        if preferences.user_id != user_id:
            raise UpstreamError("preferences answered about another user")
        return preferences.model_dump(exclude_unset=True)

    async def recent_notifications(self, user_id: int) -> list[Any]:
        body = await self._call(
            "notifier", "GET", f"{self._notifier_url}/notifications", params={"user_id": user_id}
        )
        try:
            notifications = NOTIFICATIONS.validate_python(body)
        except ValidationError as error:
            raise UpstreamError("notifier answered a body that breaks its schema") from error
        if any(notification.user_id != user_id for notification in notifications):
            raise UpstreamError("notifier answered notifications of another user")
        return [notification.model_dump(exclude_unset=True) for notification in notifications]

    async def notify(self, payload: dict[str, Any]) -> None:
        await self._call("notifier", "POST", f"{self._notifier_url}/notifications", json=payload)

    async def _call(
        self,
        service: str,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            body = await self._exchange(service, method, url, params=params, json=json)
        except UpstreamTimeoutError:
            outcome = "deadline"
            raise
        except asyncio.CancelledError:
            outcome = ""  # the caller gave up (a sibling failed): not the upstream's outcome
            raise
        else:
            outcome = "ok"
            return body
        finally:
            if self._observe is not None and outcome:
                self._observe(service, outcome, time.perf_counter() - started)

    async def _exchange(
        self,
        service: str,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None,
        json: Any,
    ) -> Any:
        request_id = request_id_var.get()
        headers = {REQUEST_ID_HEADER: request_id} if request_id is not None else None
        try:
            async with call_deadline(self.deadline, what=f"{service} {method}"):
                status, content = await self._read_capped(
                    service, method, url, params=params, json=json, headers=headers
                )
        except DeadlineExceeded as error:
            raise UpstreamTimeoutError(
                f"{service} did not answer within {self.deadline:g} s"
            ) from error
        except httpx2.TimeoutException as error:
            # One phase (connect, a read, the pool wait) stalled past its own limit.
            raise UpstreamTimeoutError(f"{service} timed out ({type(error).__name__})") from error
        except httpx2.HTTPError as error:
            raise UpstreamError(f"{service} is unreachable ({type(error).__name__})") from error
        if status >= 400:
            raise UpstreamError(f"{service} answered {status}")
        if not content:
            return None
        try:
            return parse_json(content)
        except ValueError as error:
            raise UpstreamError(f"{service} answered a body that is not JSON") from error

    async def _read_capped(
        self, service: str, method: str, url: str, **request: Any
    ) -> tuple[int, bytes]:
        """The status and the body, read chunk by chunk and refused past ``max_body_bytes``:
        ``response.content`` would read all of it, however large, before anyone could look."""
        too_large = f"{service} answered more than {self.max_body_bytes} bytes"
        async with self._client.stream(method, url, **request) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise UpstreamError(too_large)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise UpstreamError(too_large)  # leaving the block drops the connection
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
