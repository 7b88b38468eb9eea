"""What the benchmarks that run the real service share: a free port, the service's environment,
its migrations, and a throwaway database on a shared server.

Run each benchmark as a script (``python bench/<name>.py``): this folder is then first on the
import path and ``from harness import ...`` finds this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }}.settings import PACKAGE_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MIGRATE_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def service_environment(controlled: Iterable[str], **values: str) -> dict[str, str]:
    """This process's environment without the ``controlled`` variables (they must come from the
    benchmark, not the caller's shell), with the service's sources importable and ``values``."""
    dropped = set(controlled)
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT / "src"), env.get("PYTHONPATH")])
    )
    env.update(values)
    return env


async def migrate(database_url: str, log: IO[bytes], controlled: Iterable[str]) -> None:
    """``python -m <package> migrate`` on ``database_url``, bounded by ``MIGRATE_TIMEOUT``."""
    env = service_environment(controlled, ENVIRONMENT="test", DATABASE_URL=database_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", PACKAGE_NAME, "migrate", env=env, stdout=log, stderr=log
    )
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0:
        raise RuntimeError(f"python -m {PACKAGE_NAME} migrate exited with {code}")


@contextlib.asynccontextmanager
async def throwaway_database(server_url: str) -> AsyncIterator[str]:
    """A database of this run alone on a shared server, dropped at the end."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
