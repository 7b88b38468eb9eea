"""Run the generated service's own test suite, as its users will.

On the embedded PostgreSQL always, and against the server in ``TEST_DATABASE_URL`` too when
that is set (``.ci/run`` sets it when a PostgreSQL answers on 127.0.0.1:5432).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import Baker, nested_pytest_options
from .test_catalog import TEST_REFERENCE

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


# The reason a generated test gives when it can only run on the embedded PostgreSQL.
EMBEDDED_ONLY = "needs the embedded PostgreSQL"


# The benchmark's smoke run starts three apps and a database of its own (10 to 25 s): it proves
# the benchmark works, not the bake or the database, so one of the runs below is enough.
BENCH_SMOKE = "tests/test_bench_hotpath.py"


def run_generated_suite(
    project: Path, database_url: str | None, report: Path, *, bench_smoke: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.pop("TEST_DATABASE_URL", None)
    if database_url:
        environment["TEST_DATABASE_URL"] = database_url
    skipped = [] if bench_smoke else ["--deselect", BENCH_SMOKE]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", *nested_pytest_options(project),
         *skipped, f"--junitxml={report}"],
        cwd=project, env=environment, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip


def outcomes(report: Path) -> dict[str, str]:
    """``tests/x.py::name`` -> passed, failed or skipped (a parametrized test counts as failed
    or skipped when any of its cases is)."""
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    seen: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        module = case.get("classname", "").replace(".", "/") + ".py"
        test = f"{module}::{case.get('name', '').split('[')[0]}"
        if rank[outcome] >= rank[seen.get(test, "passed")]:
            seen[test] = outcome
    return seen


def catalog_proofs(project: Path) -> set[str]:
    """Every test that the shipped pattern catalog names, proofs and pitfalls alike."""
    text = (project / "docs" / "patterns.md").read_text()
    return {f"{module}::{name}" for module, name in TEST_REFERENCE.findall(text) if name}


@pytest.mark.generated_suite
@pytest.mark.parametrize("database_url", TARGETS)
@pytest.mark.parametrize("answers", BAKES)
def test_generated_suite_passes(
    bake: Baker, answers: dict[str, str], database_url: str | None, tmp_path: Path
) -> None:
    project = bake(**answers)
    report = tmp_path / "report.xml"

    # The benchmark's smoke run on the default bake and the embedded database only.
    finished = run_generated_suite(
        project, database_url, report, bench_smoke=not answers and database_url is None
    )

    output = finished.stdout[-6000:] + finished.stderr[-3000:]
    assert finished.returncode == 0, output
    seen = outcomes(report)
    assert [test for test, outcome in seen.items() if outcome == "failed"] == [], output
    # Every test the catalog names ran and passed: none skipped, deselected or gone missing.
    # Against an external server, the proofs that must signal the server's own processes
    # (they stop a backend to play a database that hangs) are skipped by design; they run,
    # and must pass, on the embedded target.
    named = catalog_proofs(project)
    assert named
    allowed = embedded_only(report) if database_url else set()
    assert (
        sorted(test for test in named if seen.get(test) != "passed" and test not in allowed) == []
    ), output


def embedded_only(report: Path) -> set[str]:
    """Tests the report shows skipped because they need the embedded PostgreSQL."""
    skipped = set()
    for case in ET.parse(report).iter("testcase"):
        reason = case.find("skipped")
        if reason is not None and EMBEDDED_ONLY in (reason.get("message") or ""):
            module = case.get("classname", "").replace(".", "/") + ".py"
            skipped.add(f"{module}::{case.get('name', '').split('[')[0]}")
    return skipped
