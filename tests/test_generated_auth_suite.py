"""Bake ``auth=bearer`` and run the generated service's authentication tests there.

The default bake has ``auth=none``, so the full generated suite (test_generated_suite.py) never
meets the bearer code. This bake runs only what the option changes: the auth modules, the users
API (which must keep working behind tokens) and every test the shipped catalog names that lives
in those modules. The whole generated suite on this bake would double the template's test time
for code that is identical in both bakes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Baker, nested_pytest_options
from .test_generated_suite import catalog_proofs, outcomes

AUTH_MODULES = ("tests/test_auth.py", "tests/test_jwks_refresh.py", "tests/test_users_api.py")


@pytest.mark.generated_suite
def test_bearer_bake_passes_its_auth_tests(bake: Baker, tmp_path: Path) -> None:
    project = bake(auth="bearer")
    report = tmp_path / "report.xml"
    environment = dict(os.environ)
    environment.pop("TEST_DATABASE_URL", None)

    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", *nested_pytest_options(project),
         f"--junitxml={report}", *AUTH_MODULES],
        cwd=project, env=environment, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip

    output = finished.stdout[-6000:] + finished.stderr[-3000:]
    assert finished.returncode == 0, output
    seen = outcomes(report)
    assert [test for test, outcome in seen.items() if outcome == "failed"] == [], output
    assert {module for module in (test.split("::")[0] for test in seen)} == set(AUTH_MODULES)
    # The catalog's auth section exists in this bake only; each test it names ran and passed.
    named = {test for test in catalog_proofs(project) if test.split("::")[0] in AUTH_MODULES}
    assert any(test.startswith("tests/test_auth.py::") for test in named)
    assert sorted(test for test in named if seen.get(test) != "passed") == [], output
