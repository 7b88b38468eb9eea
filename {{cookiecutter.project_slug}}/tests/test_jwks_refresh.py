"""The JWKS is fetched at startup and refreshed in the background, never on a request's path.

Each test runs its own identity provider (a real JWKS server on 127.0.0.1) so that it can
rotate keys, slow the server down or take it down without disturbing other tests; the provider
counts every fetch, which is how the tests see when the service went to the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import jwt
import pytest

from .conftest import make_settings, running_app
from .identity_provider import IdentityProvider, new_key


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@asynccontextmanager
async def service_trusting(
    database_url: str, **auth: object
) -> AsyncIterator[tuple[httpx2.AsyncClient, IdentityProvider, int]]:
    """A running app that trusts a fresh provider; also the id of a user created as admin."""
    auth = {"auth_jwks_min_refresh_gap": 0.0, **auth}
    async with IdentityProvider() as provider:
        settings = make_settings(database_url, **provider.settings(**auth))
        async with running_app(settings) as (http, _):
            created = await http.post(
                "/users",
                json={"email": f"u{time.monotonic_ns()}@example.com", "name": "U"},
                headers=bearer(provider.admin_token()),
            )
            assert created.status_code == 201, created.text
            yield http, provider, created.json()["id"]


async def test_requests_are_verified_from_memory_after_startup(
    database_url: str, empty_tables: None
) -> None:
    async with service_trusting(database_url, auth_jwks_refresh_interval=3600.0) as (
        http,
        provider,
        user_id,
    ):
        fetched_at_startup = provider.fetches
        provider.mode = "down"  # a fetch now would fail the request
        answers = [
            (await http.get(f"/users/{user_id}", headers=bearer(provider.token(str(user_id)))))
            for _ in range(20)
        ]

    assert fetched_at_startup == 1
    assert [answer.status_code for answer in answers] == [200] * 20
    assert provider.fetches == 1


async def test_a_rotated_key_is_picked_up_by_the_background_refresh(
    database_url: str, empty_tables: None
) -> None:
    async with service_trusting(database_url, auth_jwks_refresh_interval=0.1) as (
        http,
        provider,
        user_id,
    ):
        rotated = new_key("ES256")
        provider.published = [rotated, *provider.published]
        before = provider.fetches
        # The refresher is sequential: once the second fetch after the rotation has begun, the
        # first one (which saw the new key) has been applied. No request waited for it.
        await provider.wait_for_fetches(before + 2)
        response = await http.get(
            f"/users/{user_id}", headers=bearer(provider.token(str(user_id), key=rotated))
        )

    assert response.status_code == 200


async def test_an_unknown_kid_is_refused_at_once_and_refreshed_off_the_request_path(
    database_url: str, empty_tables: None
) -> None:
    async with service_trusting(
        database_url,
        auth_jwks_refresh_interval=3600.0,
        auth_jwks_min_refresh_gap=0.0,
        auth_jwks_timeout=5.0,
    ) as (http, provider, user_id):
        rotated = new_key("RS256")
        provider.published.append(rotated)
        provider.mode, provider.delay = "slow", 1.0
        token = provider.token(str(user_id), key=rotated)

        started = time.monotonic()
        first = await http.get(f"/users/{user_id}", headers=bearer(token))
        first_took = time.monotonic() - started
        await provider.wait_for_fetches(2)  # the refresh it asked for, in the background
        provider.mode = "up"
        # Bounded polling: the client retries, as a client of a 401 with a fresh key would.
        retried = first
        deadline = time.monotonic() + 5.0
        while retried.status_code == 401 and time.monotonic() < deadline:
            # A 401 from memory never suspends: without this pause the loop would starve the
            # very refresh it waits for.
            await asyncio.sleep(0.05)
            retried = await http.get(f"/users/{user_id}", headers=bearer(token))

    assert first.status_code == 401
    assert first_took < provider.delay / 2  # answered without waiting for the provider
    assert retried.status_code == 200


async def test_unknown_kids_are_coalesced_into_one_rate_limited_refresh(
    database_url: str, empty_tables: None
) -> None:
    gap = 1.0
    async with service_trusting(
        database_url, auth_jwks_refresh_interval=3600.0, auth_jwks_min_refresh_gap=gap
    ) as (http, provider, user_id):
        statuses = [
            (
                await http.get(
                    f"/users/{user_id}",
                    headers=bearer(provider.token(str(user_id), kid=f"made-up-{n}")),
                )
            ).status_code
            for n in range(20)
        ]
        await provider.wait_for_fetches(2)
        fetches = provider.fetches

    assert statuses == [401] * 20
    assert fetches == 2  # twenty unknown kids, one refresh
    assert provider.fetch_times[1] - provider.fetch_times[0] >= gap * 0.9


async def test_a_failed_refresh_keeps_the_old_keys_and_logs(
    database_url: str, empty_tables: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with service_trusting(database_url, auth_jwks_refresh_interval=0.1) as (
        http,
        provider,
        user_id,
    ):
        provider.mode = "down"
        before = provider.fetches
        await provider.wait_for_fetches(before + 2)  # at least one refresh failed and returned
        response = await http.get(f"/users/{user_id}", headers=bearer(provider.token(str(user_id))))

    assert response.status_code == 200
    assert any("JWKS refresh failed" in record.getMessage() for record in caplog.records)


async def test_the_service_does_not_start_when_the_jwks_cannot_be_loaded(
    database_url: str,
) -> None:
    async with IdentityProvider() as provider:
        provider.mode = "down"
        settings = make_settings(database_url, **provider.settings())
        with pytest.raises(httpx2.HTTPStatusError):
            async with running_app(settings):
                pass


async def naive_verify(http: httpx2.AsyncClient, jwks_url: str, token: str) -> dict[str, Any]:
    """What the practice replaces: fetch the JWKS for every token, then check it."""
    document = (await http.get(jwks_url)).raise_for_status().json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(jwk) for jwk in document["keys"] if jwk["kid"] == kid)
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256", "ES256"], audience="orders-api"
    )
    return claims


@pytest.mark.pitfall
async def test_pitfall_fetching_the_jwks_on_the_request_path_waits_for_and_fails_with_the_provider(
    database_url: str, empty_tables: None
) -> None:
    """Every request pays the identity provider's latency, and when the provider is down every
    request fails, valid tokens included. The service, with the keys in memory, is unaffected."""
    async with (
        service_trusting(database_url, auth_jwks_refresh_interval=3600.0) as (
            http,
            provider,
            user_id,
        ),
        httpx2.AsyncClient() as outbound,
    ):
        token = provider.token(str(user_id))
        provider.mode, provider.delay = "slow", 0.5
        started = time.monotonic()
        await naive_verify(outbound, provider.jwks_url, token)
        naive_took = time.monotonic() - started
        started = time.monotonic()
        ours = await http.get(f"/users/{user_id}", headers=bearer(token))
        ours_took = time.monotonic() - started

        provider.mode = "down"
        with pytest.raises(httpx2.HTTPStatusError):
            await naive_verify(outbound, provider.jwks_url, token)
        ours_while_down = await http.get(f"/users/{user_id}", headers=bearer(token))

    assert naive_took >= provider.delay
    assert ours.status_code == 200
    assert ours_took < provider.delay
    assert ours_while_down.status_code == 200
