"""Run the generated service's own test suite, as its users will.

On the embedded PostgreSQL always, and against the server in ``TEST_DATABASE_URL`` too when
that is set (``.ci/run`` sets it when a PostgreSQL answers on 127.0.0.1:5432).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Baker

TARGETS = [pytest.param(None, id="embedded-postgres")]
if os.environ.get("TEST_DATABASE_URL"):
    TARGETS.append(pytest.param(os.environ["TEST_DATABASE_URL"], id="test-database-url"))

BAKES = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {"project_name": "Ñandú Café", "python_version": "3.11", "ci_provider": "gitlab",
         "use_docker": "no", "license": "Proprietary"},
        id="accents-py311-gitlab-nodocker",
    ),
]  # fmt: skip


def run_generated_suite(
    project: Path, database_url: str | None
) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.pop("TEST_DATABASE_URL", None)
    if database_url:
        environment["TEST_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


@pytest.mark.generated_suite
@pytest.mark.parametrize("database_url", TARGETS)
@pytest.mark.parametrize("answers", BAKES)
def test_generated_suite_passes(
    bake: Baker, answers: dict[str, str], database_url: str | None
) -> None:
    project = bake(**answers)

    finished = run_generated_suite(project, database_url)

    summary = finished.stdout.strip().splitlines()[-1] if finished.stdout.strip() else ""
    assert finished.returncode == 0, finished.stdout[-6000:] + finished.stderr[-3000:]
    assert " passed" in summary
    assert "failed" not in summary
    assert "error" not in summary
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 30, summary
