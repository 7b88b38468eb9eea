"""``GET /debug/tasks``: every asyncio task with its await chain, and the loop lag.

Included only when ``DEBUG_TOKEN`` is set; then every call needs ``Authorization: Bearer
<token>``, compared in constant time so the token cannot be guessed byte by byte.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from ..aio.debug import dump_tasks
from ..errors import ServiceError
from .deps import ResourcesDep

AUTH_SCHEME = "bearer "


class UnauthorizedError(ServiceError):
    status_code = 401
    code = "unauthorized"
    headers: Mapping[str, str] | None = MappingProxyType({"WWW-Authenticate": "Bearer"})


async def require_debug_token(
    resources: ResourcesDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    expected = resources.settings.debug_token
    given = authorization or ""
    if expected is None or not given.lower().startswith(AUTH_SCHEME):
        raise UnauthorizedError("a debug token is required: Authorization: Bearer <token>")
    token = given[len(AUTH_SCHEME) :].strip().encode()
    if not hmac.compare_digest(token, expected.get_secret_value().encode()):
        raise UnauthorizedError("the debug token is not valid")


# Not in /openapi.json: the schema is public wherever the docs are on, and a listed debug route
# tells a scanner where to try tokens.
router = APIRouter(
    prefix="/debug",
    tags=["debug"],
    dependencies=[Depends(require_debug_token)],
    include_in_schema=False,
)


@router.get("/tasks")
async def tasks(resources: ResourcesDep) -> dict[str, Any]:
    return {
        "tasks": dump_tasks(),
        "loop_lag": {
            "current_seconds": resources.loop_lag.current_lag,
            "peak_seconds": resources.loop_lag.peak_lag,
        },
        "background_tasks_pending": resources.supervisor.pending,
    }
