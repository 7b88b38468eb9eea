"""A demo of the two upstream services, so every endpoint works out of the box.

In development, when ``PREFERENCES_URL`` or ``NOTIFIER_URL`` is unset, the service mounts this
app under ``/_demo`` and calls itself. ``python -m {{ cookiecutter.package_name }} demo-upstream``
serves it alone (compose uses that). It keeps notifications in memory.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from fastapi import FastAPI, Query, status
from pydantic import BaseModel, ConfigDict, Field

MAX_ID = 2**63 - 1
RECENT = 20


class NotificationIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: int = Field(ge=1, le=MAX_ID)
    order_id: int | None = Field(default=None, ge=1, le=MAX_ID)


def create_demo_upstream() -> FastAPI:
    app = FastAPI(title="Demo upstream", docs_url=None, redoc_url=None, openapi_url=None)
    notifications: defaultdict[int, deque[dict[str, Any]]] = defaultdict(
        lambda: deque(maxlen=RECENT)
    )

    @app.get("/preferences/{user_id}")
    async def preferences(user_id: int) -> dict[str, Any]:
        return {"user_id": user_id, "language": "en", "channels": ["email"], "digest": "daily"}

    @app.get("/notifications")
    async def recent_notifications(
        user_id: int = Query(ge=1, le=MAX_ID),
    ) -> list[dict[str, Any]]:
        return list(reversed(notifications[user_id]))

    @app.post("/notifications", status_code=status.HTTP_202_ACCEPTED)
    async def notify(body: NotificationIn) -> dict[str, str]:
        notifications[body.user_id].append(body.model_dump())
        return {"status": "accepted"}

    return app
