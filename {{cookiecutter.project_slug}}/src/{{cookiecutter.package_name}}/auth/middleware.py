"""Require a verified bearer token on every request outside the public paths.

Default deny: a route added later is protected without anyone remembering to protect it; only
the paths listed as public are open (probes and metrics, which orchestrators and scrapers call
without credentials; the debug routes, which check their own ``DEBUG_TOKEN``; the demo upstream
of development, which the service calls itself). The verified ``Caller`` is put in the request's
state for the routes' own authorization (``api/auth.py``).

The 401 is the service's JSON error shape plus ``WWW-Authenticate`` as RFC 6750 section 3 asks:
no error code when the request had no credentials, ``error="invalid_token"`` when it had bad ones.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import error_response
from .tokens import Caller, InvalidTokenError, TokenVerifier

STATE_VERIFIER = "token_verifier"  # set by the lifespan
STATE_CALLER = "caller"  # set here, read by api/auth.py
_SCHEME = b"bearer "

logger = logging.getLogger(__name__)


def is_public(path: str, public_paths: Collection[str]) -> bool:
    return any(path == prefix or path.startswith(f"{prefix}/") for prefix in public_paths)


def challenge(realm: str, error: str | None = None, description: str | None = None) -> str:
    """A ``WWW-Authenticate`` value; the description never holds a quote (ours are fixed text)."""
    parts = [f'realm="{realm}"']
    if error is not None:
        parts.append(f'error="{error}"')
    if description is not None:
        parts.append(f'error_description="{description}"')
    return "Bearer " + ", ".join(parts)


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, *, realm: str, public_paths: Collection[str]) -> None:
        self.app = app
        self.realm = realm
        self.public_paths = tuple(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"], self.public_paths):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        authorization = dict(scope["headers"]).get(b"authorization", b"")
        if authorization[: len(_SCHEME)].lower() != _SCHEME:
            response = error_response(
                401,
                "unauthorized",
                "a bearer token is required: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": challenge(self.realm)},
            )
            await response(scope, receive, send)
            return
        try:
            state[STATE_CALLER] = _verify(state.get(STATE_VERIFIER), authorization)
        except InvalidTokenError as error:
            logger.info("bearer token refused", extra={"reason": repr(error.__cause__ or error)})
            response = error_response(
                401,
                error.error,
                error.description,
                headers={"WWW-Authenticate": challenge(self.realm, error.error, error.description)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _verify(verifier: TokenVerifier | None, authorization: bytes) -> Caller:
    if verifier is None:
        # Fail closed: without the AUTH_* settings no token can be checked (development only;
        # production refuses to start without them).
        raise InvalidTokenError("token verification is not configured")
    try:
        token = authorization[len(_SCHEME) :].strip().decode("ascii")
    except UnicodeDecodeError as error:
        raise InvalidTokenError("the token is malformed") from error
    return verifier.verify(token)
