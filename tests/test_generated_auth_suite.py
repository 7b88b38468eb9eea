"""Bake ``auth=bearer`` and run the generated service's WHOLE test suite there.

The default bake has ``auth=none``, so the full generated suite (test_generated_suite.py) never
meets the bearer code. In a bearer bake every route but the probes, metrics and debug routes
needs a token, so this proves that the generated project's own suite passes as its users will
run it: the tests authenticate like real clients (the session's identity provider, trusted by
every app and process the tests start, and its admin token on their clients; see the bearer
blocks of the generated tests/conftest.py and tests/service_process.py), while the auth tests
send exactly what they mean to.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Baker
from .test_generated_suite import catalog_proofs, outcomes, run_generated_suite

AUTH_MODULES = ("tests/test_auth.py", "tests/test_jwks_refresh.py")


@pytest.mark.generated_suite
def test_bearer_bake_passes_its_whole_suite(bake: Baker, tmp_path: Path) -> None:
    project = bake(auth="bearer")
    report = tmp_path / "report.xml"

    finished = run_generated_suite(project, None, report)

    output = finished.stdout[-6000:] + finished.stderr[-3000:]
    assert finished.returncode == 0, output
    seen = outcomes(report)
    assert [test for test, outcome in seen.items() if outcome == "failed"] == [], output
    ran = {test.split("::")[0] for test in seen}
    assert set(AUTH_MODULES) <= ran, output
    # The catalog's auth section exists in this bake only; each test the catalog names, auth
    # or not, ran and passed.
    named = catalog_proofs(project)
    assert any(test.startswith("tests/test_auth.py::") for test in named)
    assert sorted(test for test in named if seen.get(test) != "passed") == [], output
