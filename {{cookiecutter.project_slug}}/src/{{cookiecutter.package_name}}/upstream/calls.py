"""The two upstream services, each call bounded by one total deadline.

``asyncio.timeout`` around the whole call, body included, is what bounds it: httpx's read
timeout restarts at every chunk, so an upstream that trickles a byte every 0.4 s passes a 0.5 s
read timeout forever. Failures become service errors the API maps to statuses: an upstream
that is down, resets, or answers 5xx or junk is a 502; one that runs out of time is a 504.
"""

from __future__ import annotations

from typing import Any

import httpx2

from ..aio.deadlines import DeadlineExceeded, call_deadline
from ..errors import ServiceError


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
    ) -> None:
        self._client = client
        self._preferences_url = preferences_url.rstrip("/")
        self._notifier_url = notifier_url.rstrip("/")
        self.deadline = deadline

    async def preferences(self, user_id: int) -> dict[str, Any]:
        body = await self._call(
            "preferences", "GET", f"{self._preferences_url}/preferences/{user_id}"
        )
        if not isinstance(body, dict):
            raise UpstreamError("preferences answered something other than a JSON object")
        return body

    async def recent_notifications(self, user_id: int) -> list[Any]:
        body = await self._call(
            "notifier", "GET", f"{self._notifier_url}/notifications", params={"user_id": user_id}
        )
        if not isinstance(body, list):
            raise UpstreamError("notifier answered something other than a JSON list")
        return body

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
        try:
            async with call_deadline(self.deadline, what=f"{service} {method}"):
                response = await self._client.request(method, url, params=params, json=json)
        except DeadlineExceeded as error:
            raise UpstreamTimeoutError(
                f"{service} did not answer within {self.deadline:g} s"
            ) from error
        except httpx2.TimeoutException as error:
            # One phase (connect, a read, the pool wait) stalled past its own limit.
            raise UpstreamTimeoutError(f"{service} timed out ({type(error).__name__})") from error
        except httpx2.HTTPError as error:
            raise UpstreamError(f"{service} is unreachable ({type(error).__name__})") from error
        if response.status_code >= 400:
            raise UpstreamError(f"{service} answered {response.status_code}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:
            raise UpstreamError(f"{service} answered a body that is not JSON") from error
