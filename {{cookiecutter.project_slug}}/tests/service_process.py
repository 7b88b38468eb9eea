"""Run the service as a real process (``python -m {{ cookiecutter.package_name }}``) for tests
whose behaviour depends on the server: signals, shutdown, startup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
{%- if cookiecutter.auth == "bearer" %}

from .identity_provider import IdentityProvider
{%- endif %}

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTRACT_VARIABLES = (
    "DATABASE_URL", "ENVIRONMENT", "HOST", "PORT", "PREFERENCES_URL", "NOTIFIER_URL",
    "UPSTREAM_TIMEOUT", "REQUEST_TIMEOUT", "DB_STATEMENT_TIMEOUT", "SHUTDOWN_GRACE", "DEBUG_TOKEN",
)  # fmt: skip


{%- if cookiecutter.auth == "bearer" %}
# auth=bearer: the identity provider of the test session (set by conftest's session fixture).
# The apps and processes the tests start trust it; their clients send its admin token.
_session_provider: list[IdentityProvider] = []


def set_session_provider(provider: IdentityProvider | None) -> None:
    _session_provider[:] = [] if provider is None else [provider]


def session_provider() -> IdentityProvider:
    assert _session_provider, "the session's identity provider is not running"
    return _session_provider[0]


def admin_headers() -> dict[str, str]:
    """The Authorization header of an admin caller (who may act on every user)."""
    return {"authorization": f"Bearer {session_provider().admin_token()}"}


def auth_environment() -> dict[str, str]:
    """The AUTH_* variables of a process that trusts the session's identity provider."""
    provider = session_provider()
    return {"AUTH_ISSUER": provider.issuer, "AUTH_AUDIENCE": provider.audience,
            "AUTH_JWKS_URL": provider.jwks_url}  # fmt: skip
{%- else %}


def admin_headers() -> dict[str, str]:
    """The headers that authenticate a test's client: none, this service has no auth."""
    return {}


def auth_environment() -> dict[str, str]:
    """The variables that make a process trust the tests' tokens: none, it has no auth."""
    return {}
{%- endif %}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class ServiceProcess:
    process: asyncio.subprocess.Process
    base_url: str
    stderr_lines: list[str] = field(default_factory=list)

    def log_records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stderr_lines if line.strip()]

    def client(self, timeout: float = 5.0) -> httpx2.AsyncClient:
        """A client of the process that authenticates as every client of the tests does."""
        return httpx2.AsyncClient(base_url=self.base_url, timeout=timeout, headers=admin_headers())

    async def wait_for_exit(self, seconds: float) -> int:
        async with asyncio.timeout(seconds):
            return await self.process.wait()


async def _collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace"))


@contextlib.asynccontextmanager
async def running_service(
    environment: Mapping[str, str],
    *,
    ready_path: str = "/health/live",
    startup_timeout: float = 60,
    app_factory: str | None = None,
) -> AsyncIterator[ServiceProcess]:
    """The service as a process of its own; with ``app_factory`` (``tests.module:function``),
    uvicorn serving that app instead, for tests that need test-only routes in a real process."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in CONTRACT_VARIABLES}
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "GC_FREEZE": "false"})
{%- if cookiecutter.auth == "bearer" %}
    # auth=bearer: the process trusts the session's identity provider unless told otherwise.
    env.update(auth_environment())
{%- endif %}
    paths = [str(PROJECT_ROOT / "src"), env.get("PYTHONPATH")]
    command = ["-m", "{{ cookiecutter.package_name }}"]
    if app_factory is not None:
        paths.insert(1, str(PROJECT_ROOT))  # where `tests.<module>` is found
        command = ["-m", "uvicorn", "--factory", app_factory, "--host", "127.0.0.1",
                   "--port", str(port), "--no-access-log"]  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.update(environment)
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    service = ServiceProcess(process, f"http://127.0.0.1:{port}")
    collector = asyncio.create_task(_collect(process.stderr, service.stderr_lines))
    try:
        deadline = time.monotonic() + startup_timeout
        async with httpx2.AsyncClient(base_url=service.base_url, timeout=2) as client:
            while True:
                if process.returncode is not None:
                    raise RuntimeError("service exited:\n" + "".join(service.stderr_lines))
                with contextlib.suppress(httpx2.TransportError):
                    if (await client.get(ready_path)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("service did not start:\n" + "".join(service.stderr_lines))
                await asyncio.sleep(0.1)
        yield service
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await collector
