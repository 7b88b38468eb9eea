"""Build the token verifier in the lifespan: keys loaded before the first request, refresher
owned by the lifespan's exit stack."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import httpx2

from ..settings import Settings
from .jwks import JwksCache
from .tokens import TokenVerifier

logger = logging.getLogger(__name__)


async def start_token_verifier(
    settings: Settings, http: httpx2.AsyncClient, stack: AsyncExitStack
) -> TokenVerifier | None:
    """The verifier, with its keys loaded and its refresher running until the stack closes.

    None when the AUTH_* settings are unset (never in production, which refuses to start so):
    the middleware then refuses every token, so an unconfigured service fails closed.
    """
    if (
        settings.auth_jwks_url is None
        or settings.auth_issuer is None
        or settings.auth_audience is None
    ):
        logger.warning(
            "AUTH_ISSUER, AUTH_AUDIENCE or AUTH_JWKS_URL is unset: every protected route "
            "answers 401"
        )
        return None
    keys = JwksCache(
        http,
        str(settings.auth_jwks_url),
        algorithms=settings.auth_algorithms,
        fetch_timeout=settings.auth_jwks_timeout,
        refresh_interval=settings.auth_jwks_refresh_interval,
        min_refresh_gap=settings.auth_jwks_min_refresh_gap,
        logger=logging.getLogger(f"{__package__}.jwks"),
    )
    await keys.load()
    keys.start()
    stack.push_async_callback(keys.stop)
    return TokenVerifier(
        keys=keys,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithms=settings.auth_algorithms,
        leeway=settings.auth_leeway,
    )
