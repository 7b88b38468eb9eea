"""Bearer JWT authentication (auth=bearer): who gets in (401) and who may act on whom (403).

Tokens are made by tests/identity_provider.py with real keys; the service fetches the public
keys from its JWKS over real HTTP at startup. Key refresh and rotation: test_jwks_refresh.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings, running_app
from .identity_provider import IdentityProvider, new_key

TokenMaker = Callable[[IdentityProvider, str], str]


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    """A client of the running app that sends no token unless a test gives one."""
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://service.test") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def create_user(
    http: httpx2.AsyncClient, provider: IdentityProvider, email: str = "ada@example.com"
) -> int:
    response = await http.post(
        "/users", json={"email": email, "name": "Ada"}, headers=bearer(provider.admin_token())
    )
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_signed_with_public_key(provider: IdentityProvider, subject: str) -> str:
    """The algorithm-confusion forgery: HS256 keyed with the provider's PUBLIC key, which anyone
    can download. A verifier that lets the token pick the algorithm checks it with that same
    public key as the HMAC secret, and it verifies."""
    public_pem = provider.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": provider.key.kid}
    claims = {"iss": provider.issuer, "aud": provider.audience, "sub": subject, "iat": now,
              "exp": now + 300}  # fmt: skip
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


BAD_TOKENS: dict[str, TokenMaker] = {
    # 120 s past expiry: beyond AUTH_LEEWAY (30 s by default).
    "expired": lambda idp, sub: idp.token(sub, expires_in=-120),
    "wrong-audience": lambda idp, sub: idp.token(sub, audience="billing-api"),
    "wrong-issuer": lambda idp, sub: idp.token(sub, issuer="https://evil.example.test/"),
    # Signed by a key the provider never published, under the published key's kid.
    "bad-signature": lambda idp, sub: idp.token(sub, key=new_key("RS256"), kid=idp.key.kid),
    "alg-none": lambda idp, sub: idp.unsigned_token(sub),
    "hs256-with-the-public-key": hmac_signed_with_public_key,
    "unknown-kid": lambda idp, sub: idp.token(sub, kid="never-published"),
    "not-a-jwt": lambda idp, sub: "not.a.jwt",
}


async def test_a_valid_token_acts_on_its_own_user(
    anonymous: httpx2.AsyncClient, identity_provider: IdentityProvider
) -> None:
    user_id = await create_user(anonymous, identity_provider)
    own = bearer(identity_provider.token(str(user_id)))

    read = await anonymous.get(f"/users/{user_id}", headers=own)
    order = await anonymous.post(
        f"/users/{user_id}/orders", json={"item": "book", "quantity": 1}, headers=own
    )
    orders = await anonymous.get(f"/users/{user_id}/orders", headers=own)

    assert read.status_code == 200
    assert read.json()["id"] == user_id
    assert order.status_code == 201
    assert [o["id"] for o in orders.json()] == [order.json()["id"]]


async def test_an_es256_token_is_accepted(database_url: str, empty_tables: None) -> None:
    async with (
        IdentityProvider(published=[new_key("ES256")]) as provider,
        running_app(make_settings(database_url, **provider.settings())) as (http, _),
    ):
        user_id = await create_user(http, provider)
        response = await http.get(f"/users/{user_id}", headers=bearer(provider.token(str(user_id))))

    assert response.status_code == 200


async def test_no_token_is_401_with_a_bearer_challenge(anonymous: httpx2.AsyncClient) -> None:
    response = await anonymous.get("/users/1", headers={"x-request-id": "no-token-1"})

    assert response.status_code == 401
    # RFC 6750 section 3: a request without credentials gets the scheme and no error code.
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert "error=" not in response.headers["www-authenticate"]
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.json()["error"]["request_id"] == "no-token-1"


async def test_another_scheme_is_401(anonymous: httpx2.AsyncClient) -> None:
    response = await anonymous.get("/users/1", headers={"authorization": "Basic YTpi"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_a_bad_token_is_401_invalid_token(
    anonymous: httpx2.AsyncClient, identity_provider: IdentityProvider, make_token: TokenMaker
) -> None:
    user_id = await create_user(anonymous, identity_provider)
    # The subject would be allowed: only the token's flaw can be the reason for the 401.
    token = make_token(identity_provider, str(user_id))

    response = await anonymous.get(f"/users/{user_id}", headers=bearer(token))

    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert response.json()["error"]["code"] == "invalid_token"
    assert "request_id" in response.json()["error"]


async def test_a_token_of_another_user_is_403(
    anonymous: httpx2.AsyncClient, identity_provider: IdentityProvider
) -> None:
    ada = await create_user(anonymous, identity_provider, "ada@example.com")
    bob = await create_user(anonymous, identity_provider, "bob@example.com")
    as_bob = bearer(identity_provider.token(str(bob)))

    read = await anonymous.get(f"/users/{ada}", headers=as_bob)
    order = await anonymous.post(
        f"/users/{ada}/orders", json={"item": "book", "quantity": 1}, headers=as_bob
    )
    dashboard = await anonymous.get(f"/users/{ada}/dashboard", headers=as_bob)

    assert [read.status_code, order.status_code, dashboard.status_code] == [403, 403, 403]
    assert read.json()["error"]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in read.headers["www-authenticate"]


async def test_creating_a_user_needs_the_admin_scope(
    anonymous: httpx2.AsyncClient, identity_provider: IdentityProvider
) -> None:
    body = {"email": "eve@example.com", "name": "Eve"}

    as_user = await anonymous.post("/users", json=body, headers=bearer(identity_provider.token()))
    as_admin = await anonymous.post(
        "/users", json=body, headers=bearer(identity_provider.admin_token())
    )

    assert as_user.status_code == 403
    assert as_admin.status_code == 201


async def test_probes_and_metrics_need_no_token(anonymous: httpx2.AsyncClient) -> None:
    live = await anonymous.get("/health/live")
    ready = await anonymous.get("/health/ready")
    metrics = await anonymous.get("/metrics")

    assert (live.status_code, ready.status_code) == (200, 200)
    assert metrics.status_code != 401


async def test_an_unknown_route_is_401_not_404(anonymous: httpx2.AsyncClient) -> None:
    """Default deny: a route nobody listed as public is protected, existing or not."""
    response = await anonymous.get("/admin/export")

    assert response.status_code == 401


def production(**overrides: object) -> dict[str, object]:
    return {
        "environment": "production",
        "database_url": "postgresql+asyncpg://app@db.example.test:5432/orders",
        "preferences_url": "http://preferences.example.test",
        "notifier_url": "http://notifier.example.test",
        **overrides,
    }


@pytest.mark.parametrize("unset", [None, ""], ids=["absent", "empty"])
def test_production_refuses_to_start_without_the_auth_settings(unset: str | None) -> None:
    empty = {"auth_issuer": unset, "auth_audience": unset, "auth_jwks_url": unset}
    with pytest.raises(ValidationError, match="AUTH_ISSUER, AUTH_AUDIENCE, AUTH_JWKS_URL"):
        Settings(**production(**empty))  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithms", [["HS256"], ["RS256", "none"], []])
def test_only_asymmetric_algorithms_are_allowed(algorithms: list[str]) -> None:
    with pytest.raises(ValidationError, match="AUTH_ALGORITHMS"):
        Settings(auth_algorithms=frozenset(algorithms))


@pytest.mark.pitfall
async def test_pitfall_without_an_audience_check_a_token_for_another_service_is_accepted(
    anonymous: httpx2.AsyncClient, identity_provider: IdentityProvider
) -> None:
    """One identity provider issues tokens for many services. A verifier that checks the
    signature and the expiry but not ``aud`` accepts a token minted for the billing service:
    whoever holds any token of the provider's can replay it here."""
    user_id = await create_user(anonymous, identity_provider)
    for_billing = identity_provider.token(str(user_id), audience="billing-api")
    public_key = identity_provider.key.private.public_key()

    naive_claims = jwt.decode(
        for_billing, public_key, algorithms=["RS256"], options={"verify_aud": False}
    )
    ours = await anonymous.get(f"/users/{user_id}", headers=bearer(for_billing))

    assert naive_claims["sub"] == str(user_id)  # the naive check lets the replay in
    assert ours.status_code == 401
