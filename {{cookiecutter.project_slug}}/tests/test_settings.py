"""Settings: defaults, production refusals, secrets that never show."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.__main__ import describe_settings_error
from {{ cookiecutter.package_name }}.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTRACT_VARIABLES = (
    "DATABASE_URL", "ENVIRONMENT", "HOST", "PORT", "PREFERENCES_URL", "NOTIFIER_URL",
    "UPSTREAM_TIMEOUT", "REQUEST_TIMEOUT", "DB_STATEMENT_TIMEOUT", "SHUTDOWN_GRACE", "DEBUG_TOKEN",
)  # fmt: skip


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in CONTRACT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_development_defaults_need_nothing(clean_environment: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert settings.environment == "development"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.uses_embedded_postgres
    assert settings.uses_demo_upstream
    assert settings.preferences_base_url == "http://127.0.0.1:8000/_demo"


def test_environment_variables_are_read(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("PORT", "9123")
    clean_environment.setenv("UPSTREAM_TIMEOUT", "0.75")
    clean_environment.setenv("DATABASE_URL", "postgresql+asyncpg://u:p@db:5432/app")
    clean_environment.setenv("PREFERENCES_URL", "http://prefs.internal:8080/")

    settings = Settings()

    assert settings.port == 9123
    assert settings.upstream_timeout == 0.75
    assert not settings.uses_embedded_postgres
    assert settings.preferences_base_url == "http://prefs.internal:8080"


def test_production_refuses_missing_dependencies(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("ENVIRONMENT", "production")

    with pytest.raises(ValidationError) as raised:
        Settings()

    message = describe_settings_error(raised.value)
    assert "DATABASE_URL" in message
    assert "PREFERENCES_URL" in message
    assert "NOTIFIER_URL" in message


def test_production_runs_with_the_three_urls(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("ENVIRONMENT", "production")
    clean_environment.setenv("DATABASE_URL", "postgresql+asyncpg://u:p@db/app")
    clean_environment.setenv("PREFERENCES_URL", "http://prefs")
    clean_environment.setenv("NOTIFIER_URL", "http://notifier")
{%- if cookiecutter.auth == "bearer" %}
    # auth=bearer: production also needs its identity provider (tests/test_auth.py).
    clean_environment.setenv("AUTH_ISSUER", "https://idp.example.test/")
    clean_environment.setenv("AUTH_AUDIENCE", "orders-api")
    clean_environment.setenv("AUTH_JWKS_URL", "https://idp.example.test/.well-known/jwks.json")
{%- endif %}

    settings = Settings()

    assert not settings.uses_demo_upstream
    assert settings.debug_token is None


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@db/app", "mysql+aiomysql://u:p@db/app", "postgresql+psycopg://u@db/app"],
)
def test_database_url_must_use_asyncpg(clean_environment: pytest.MonkeyPatch, url: str) -> None:
    clean_environment.setenv("DATABASE_URL", url)

    with pytest.raises(ValidationError, match="postgresql\\+asyncpg"):
        Settings()


def test_unix_socket_database_url_is_accepted(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("DATABASE_URL", "postgresql+asyncpg://app@/app?host=/run/postgresql")

    assert Settings().database_url is not None


def test_secrets_never_show_in_repr(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("DATABASE_URL", "postgresql+asyncpg://u:hunter2@db/app")
    clean_environment.setenv("DEBUG_TOKEN", "token-sesame")

    shown = repr(Settings()) + str(Settings().model_dump())

    assert "hunter2" not in shown
    assert "token-sesame" not in shown


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "0"), ("PORT", "http"), ("UPSTREAM_TIMEOUT", "-1"), ("ENVIRONMENT", "staging")],
)
def test_bad_values_are_refused(
    clean_environment: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_environment.setenv(name, value)

    with pytest.raises(ValidationError) as raised:
        Settings()

    assert name in describe_settings_error(raised.value)


def test_readme_documents_every_setting() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = {
        name.strip("` ")
        for line in table.splitlines()
        if line.startswith("| `")
        for name in line.split("|")[1].split(",")
    }

    assert {name.upper() for name in Settings.model_fields} == documented


def refused_start(settings: Mapping[str, str]) -> str:
    """``python -m <package>`` with ``settings`` and no other of the contract's variables: it
    must stop with exit code 2 and one line on stderr, no traceback. Returns that line."""
    environment = {key: value for key, value in os.environ.items() if key not in CONTRACT_VARIABLES}
    environment.update(settings)
    environment["PYTHONPATH"] = str(PROJECT_ROOT / "src")

    finished = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 2, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert "Traceback" not in finished.stderr
    return lines[0]


def test_production_start_without_database_url_is_one_clear_line() -> None:
    line = refused_start({"ENVIRONMENT": "production"})

    assert line.startswith("ERROR: configuration: DATABASE_URL")
