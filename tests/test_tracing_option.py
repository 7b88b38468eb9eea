"""The ``tracing`` option: none leaves no OpenTelemetry in the project; opentelemetry passes its
tracing tests, every one the catalog names among them.

The generated suite of the default bake (test_generated_suite.py) does not hold the tracing tests;
this module runs them in a tracing bake, and only them, to keep the template's suite short.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from .conftest import Baker, nested_pytest_options, text_files
from .test_generated_suite import catalog_proofs, outcomes

TRACING_MODULE = "tests/test_tracing.py"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_tracing_none_leaves_no_opentelemetry_in_the_project(bake: Baker) -> None:
    project = bake(tracing="none")

    python_files = sorted(project.rglob("*.py"))
    assert python_files
    importing = [
        str(path.relative_to(project))
        for path in python_files
        if any(name.split(".")[0] == "opentelemetry" for name in imported_modules(path))
    ]
    assert importing == []
    assert not list(project.rglob("tracing.py"))
    assert not (project / TRACING_MODULE).exists()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    declared = [
        *pyproject["project"]["dependencies"],
        *(d for extra in pyproject["project"]["optional-dependencies"].values() for d in extra),
    ]
    assert [d for d in declared if "opentelemetry" in d] == []
    # No stored trace context in the outbox, no tracing section in the docs.
    assert [
        str(path.relative_to(project))
        for path in text_files(project)
        if "trace_context" in path.read_text(encoding="utf-8")
    ] == []
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in readme


def test_tracing_opentelemetry_passes_its_tracing_tests(bake: Baker, tmp_path: Path) -> None:
    project = bake(tracing="opentelemetry")
    pyproject = (project / "pyproject.toml").read_text(encoding="utf-8")
    assert "opentelemetry-instrumentation-httpx" in pyproject
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in (project / "README.md").read_text(encoding="utf-8")
    report = tmp_path / "report.xml"

    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *nested_pytest_options(project),
         f"--junitxml={report}", TRACING_MODULE],
        cwd=project, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip

    output = finished.stdout[-6000:] + finished.stderr[-3000:]
    assert finished.returncode == 0, output
    seen = outcomes(report)
    named = {test for test in catalog_proofs(project) if test.startswith(f"{TRACING_MODULE}::")}
    assert named, "the catalog of a tracing bake names its tracing tests"
    assert sorted(test for test in named if seen.get(test) != "passed") == [], output
