"""Authorization of the user routes: which caller may act on which user.

The rule: a token's ``sub`` is the id of the user it belongs to (decimal), and a caller acts on
that user only (``/users/{id}`` and everything under it); a token with the ``admin`` scope acts on
every user. ``POST /users`` needs the admin scope: an account is created by whoever provisions
accounts (a sign-up service, the identity provider's hook), not by a caller that has no user id
yet. Anything else is 403, with ``WWW-Authenticate: Bearer error="insufficient_scope"`` (RFC
6750). Authentication itself (401) happened before routing, in ``auth/middleware.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated

from fastapi import Depends, Request

from ..auth.middleware import STATE_CALLER
from ..auth.tokens import ADMIN_SCOPE, Caller
from ..errors import ServiceError


class ForbiddenError(ServiceError):
    status_code = 403
    code = "forbidden"
    headers: Mapping[str, str] | None = MappingProxyType(
        {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{ADMIN_SCOPE}"'}
    )


class MissingCallerError(ServiceError):
    # Only reachable if the middleware were not wired: fail closed rather than serve anonymously.
    status_code = 401
    code = "unauthorized"
    headers: Mapping[str, str] | None = MappingProxyType({"WWW-Authenticate": "Bearer"})


async def current_caller(request: Request) -> Caller:
    caller = getattr(request.state, STATE_CALLER, None)
    if not isinstance(caller, Caller):
        raise MissingCallerError("a bearer token is required")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


async def authorize_user_access(request: Request, caller: CallerDep) -> Caller:
    """Router-wide check of the user routes, run before the endpoint and its database work."""
    if caller.is_admin:
        return caller  # every user; a malformed id is then the route's 422, as without auth
    raw_id = request.path_params.get("user_id")
    if raw_id is None:
        raise ForbiddenError(f"creating users needs the {ADMIN_SCOPE!r} scope")
    user_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None
    if user_id is None or not caller.may_act_on(user_id):
        raise ForbiddenError("this token may not act on that user")
    return caller
