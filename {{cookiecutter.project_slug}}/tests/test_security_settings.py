"""Weak settings are refused in production, and what is public is chosen, not inherited.

In production the service refuses at start, with one line naming the variable, a debug token
that is short or a known placeholder and a database URL without host or database. The docs
(``/docs``, ``/redoc``, ``/openapi.json``) are off there unless ``DOCS_ENABLED`` turns them on;
when on, their scripts come from the service itself, never a CDN; the debug routes are never
listed in the schema.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import httpx2
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.__main__ import describe_settings_error
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings, running_app
{%- if cookiecutter.auth == "bearer" %}
from .identity_provider import IdentityProvider
{%- endif %}
from .test_settings import refused_start

PRODUCTION = {
    "environment": "production",
    "database_url": "postgresql+asyncpg://app:pw@db.internal:5432/orders",
    "preferences_url": "http://preferences.internal",
    "notifier_url": "http://notifier.internal",
{%- if cookiecutter.auth == "bearer" %}
    "auth_issuer": "https://id.example.com/",
    "auth_audience": "orders",
    "auth_jwks_url": "https://id.example.com/.well-known/jwks.json",
{%- endif %}
}
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


@dataclass(frozen=True)
class Caller:
    """What a request needs to be let in: the app's settings and the request's headers."""

    settings: dict[str, object]
    headers: dict[str, str]
{% if cookiecutter.auth == "bearer" %}

@pytest.fixture
def caller(identity_provider: IdentityProvider) -> Caller:
    # auth=bearer: an admin token, so that these tests see the routes, not the 401.
    token = identity_provider.admin_token()
    return Caller(identity_provider.settings(), {"authorization": f"Bearer {token}"})
{% else %}

@pytest.fixture
def caller() -> Caller:
    return Caller({}, {})
{% endif %}

def production(**overrides: object) -> Settings:
    values: dict[str, object] = {**PRODUCTION, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def refusal(**overrides: object) -> str:
    with pytest.raises(ValidationError) as raised:
        production(**overrides)
    return describe_settings_error(raised.value)


@pytest.mark.parametrize(
    "token",
    [
        "changeme",
        "sesame-open-now",  # short
        "changeme-changeme-changeme-changeme",  # long, still the placeholder
        "my-debug-token-for-the-orders-service",  # long, names itself a token
        "ab" * 20,  # long, two characters
    ],
)
def test_production_refuses_a_weak_debug_token_naming_the_variable(token: str) -> None:
    assert refusal(debug_token=token).startswith("DEBUG_TOKEN: ")


def test_production_accepts_a_random_debug_token() -> None:
    token = secrets.token_urlsafe(32)

    settings = production(debug_token=token)

    assert settings.debug_token is not None
    assert settings.debug_token.get_secret_value() == token


def test_outside_production_any_debug_token_is_accepted() -> None:
    settings = Settings(environment="development", debug_token="changeme")

    assert settings.debug_token is not None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://",
        "postgresql+asyncpg://app:pw@db.internal",  # no database
        "postgresql+asyncpg:///orders",  # no host
        "postgresql+asyncpg://app@/orders",  # no host, no socket directory
    ],
)
def test_production_refuses_a_database_url_without_host_or_database(url: str) -> None:
    assert refusal(database_url=url).startswith("DATABASE_URL: ")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:pw@db.internal:5432/orders",
        "postgresql+asyncpg://app@/orders?host=/run/postgresql",  # the unix socket form
    ],
)
def test_production_accepts_tcp_and_unix_socket_database_urls(url: str) -> None:
    assert production(database_url=url).database_url is not None


def test_a_weak_debug_token_stops_the_process_with_one_line() -> None:
    given = {name.upper(): value for name, value in PRODUCTION.items()}

    line = refused_start({**given, "DEBUG_TOKEN": "changeme"})

    assert line.startswith("ERROR: configuration: DEBUG_TOKEN: ")
    assert "changeme" not in line  # the refused secret is not echoed either


def test_docs_are_on_outside_production_and_off_in_it_by_default() -> None:
    assert make_settings("postgresql+asyncpg://u@db/app").serves_docs
    assert not production().serves_docs
    assert production(docs_enabled=True).serves_docs
    assert not make_settings("postgresql+asyncpg://u@db/app", docs_enabled=False).serves_docs


async def test_docs_off_means_docs_and_schema_are_404(database_url: str, caller: Caller) -> None:
    settings = make_settings(database_url, docs_enabled=False, **caller.settings)
    async with running_app(settings) as (client, _):
        statuses = [
            (await client.get(path, headers=caller.headers)).status_code for path in DOCS_PATHS
        ]

    assert statuses == [404, 404, 404]


def _referenced_urls(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)


async def test_docs_pages_load_every_asset_from_the_service(
    database_url: str, caller: Caller
) -> None:
    settings = make_settings(database_url, docs_enabled=True, **caller.settings)
    async with running_app(settings) as (client, _):
        client.headers.update(caller.headers)
        pages = {path: await client.get(path) for path in ("/docs", "/redoc")}
        referenced = {url for page in pages.values() for url in _referenced_urls(page.text)}
        assets = {url: await client.get(url) for url in referenced}
        schema = await client.get("/openapi.json")

    assert all(page.status_code == 200 for page in pages.values())
    # Three files at least: Swagger's script and style sheet, ReDoc's script.
    assert {url.rsplit("/", 1)[-1] for url in referenced} >= {
        "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
    }  # fmt: skip
    assert all(url.startswith("/") and not url.startswith("//") for url in referenced), referenced
    assert not any("http://" in page.text or "https://" in page.text for page in pages.values())
    assert {url: answer.status_code for url, answer in assets.items()} == dict.fromkeys(
        referenced, 200
    )
    assert all(len(answer.content) > 1000 for answer in assets.values())
    assert schema.status_code == 200


async def test_only_the_listed_docs_assets_are_served(database_url: str, caller: Caller) -> None:
    settings = make_settings(database_url, docs_enabled=True, **caller.settings)
    async with running_app(settings) as (client, _):
        client.headers.update(caller.headers)
        answer = await client.get("/docs/assets/..%2F__init__.py")
        other = await client.get("/docs/assets/core.py")

    assert (answer.status_code, other.status_code) == (404, 404)


async def test_debug_routes_answer_but_are_not_in_the_schema(
    database_url: str, caller: Caller
) -> None:
    token = secrets.token_urlsafe(32)
    settings = make_settings(database_url, debug_token=token, docs_enabled=True, **caller.settings)
    async with running_app(settings) as (client, _):
        schema = (await client.get("/openapi.json", headers=caller.headers)).json()
        dump = await client.get("/debug/tasks", headers={"Authorization": f"Bearer {token}"})

    assert dump.status_code == 200
    assert not [path for path in schema["paths"] if path.startswith("/debug")]


@pytest.mark.pitfall
async def test_pitfall_fastapis_default_docs_load_their_scripts_from_a_cdn() -> None:
    transport = httpx2.ASGITransport(app=FastAPI())
    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
        docs = (await client.get("/docs")).text
        redoc = (await client.get("/redoc")).text

    external = [url for url in _referenced_urls(docs + redoc) if url.startswith("https://")]
    assert any("cdn.jsdelivr.net" in url for url in external), external
    assert any("fonts.googleapis.com" in url for url in external), external
