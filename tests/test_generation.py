"""Bake every supported combination of options and check each result like CI would.

Each combination has a readable id. Together they cover every value of every option, every
pair of the options that interact (CI provider x Docker: the CI builds the image; Kubernetes x
Docker: the manifests run the image and the README explains where it comes from), and the
unusual project names the derivation must turn into valid names.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import UNRENDERED, Baker, text_files

COMBINATIONS = [
    pytest.param({}, id="defaults-py312-github-docker-mit"),
    pytest.param(
        {"python_version": "3.11", "ci_provider": "gitlab", "use_docker": "no",
         "license": "BSD-3-Clause"},
        id="py311-gitlab-nodocker-bsd",
    ),
    pytest.param(
        {"python_version": "3.12", "ci_provider": "gitlab", "use_docker": "yes"},
        id="py312-gitlab-docker-mit",
    ),
    pytest.param(
        {"python_version": "3.13", "ci_provider": "none", "use_docker": "yes",
         "license": "Proprietary"},
        id="py313-noci-docker-proprietary",
    ),
    pytest.param(
        {"python_version": "3.14", "ci_provider": "github", "use_docker": "no"},
        id="py314-github-nodocker-mit",
    ),
    pytest.param(
        {"python_version": "3.11", "ci_provider": "none", "use_docker": "no"},
        id="py311-noci-nodocker-mit",
    ),
    pytest.param(
        {"ci_provider": "github", "use_docker": "yes", "kubernetes": "yes"},
        id="py312-github-docker-k8s",
    ),
    pytest.param(
        {"python_version": "3.13", "ci_provider": "gitlab", "use_docker": "no",
         "kubernetes": "yes", "license": "Proprietary"},
        id="py313-gitlab-nodocker-k8s-proprietary",
    ),
    pytest.param({"project_name": "Ñandú Café Órdenes", "kubernetes": "yes"},
                 id="name-with-accents-k8s"),
    pytest.param({"tracing": "opentelemetry"}, id="py312-github-docker-tracing"),
    pytest.param({"auth": "bearer", "kubernetes": "yes"}, id="py312-github-docker-k8s-auth-bearer"),
    pytest.param(
        {"auth": "bearer", "python_version": "3.11", "ci_provider": "none", "use_docker": "no",
         "project_name": "2048 Orders"},
        id="py311-noci-nodocker-auth-bearer-digit-name",
    ),
    pytest.param(
        {"python_version": "3.11", "ci_provider": "none", "use_docker": "no",
         "tracing": "opentelemetry", "project_name": "2048 Orders"},
        id="py311-noci-nodocker-tracing-digit-name",
    ),
    pytest.param({"project_name": "X"}, id="name-single-letter"),
    pytest.param({"project_name": "2048 Orders"}, id="name-starting-with-digits"),
    pytest.param({"project_name": "Class"}, id="name-is-a-keyword"),
    # The longest package name the hook accepts (32 characters) in every import and docstring.
    pytest.param(
        {"project_name": "Customer Notification Preference"}, id="name-longest-package"
    ),
]  # fmt: skip


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def assert_succeeds(command: list[str], cwd: Path) -> None:
    finished = run(command, cwd)
    assert finished.returncode == 0, f"{' '.join(command)}:\n{finished.stdout}{finished.stderr}"


@pytest.mark.parametrize("answers", COMBINATIONS)
def test_bakes_clean(bake: Baker, answers: dict[str, str], tmp_path: Path) -> None:
    project = bake(**answers)

    leftovers = [
        f"{path.relative_to(project)}: {match.group(0)!r}"
        for path in text_files(project)
        for match in [UNRENDERED.search(path.read_text(encoding="utf-8"))]
        if match
    ]
    assert leftovers == []
    names = [path.name for path in project.rglob("*")]
    assert not [name for name in names if "{{" in name or "cookiecutter" in name]

    python = sys.executable
    assert_succeeds([python, "-m", "ruff", "check", "--no-cache", "."], project)
    assert_succeeds([python, "-m", "ruff", "format", "--check", "--no-cache", "."], project)
    assert_succeeds([python, "-m", "flake8", "src", "tests"], project)
    cache = tmp_path.parent / "mypy-cache"  # shared by the bakes of one worker
    assert_succeeds([python, "-m", "mypy", "--cache-dir", str(cache)], project)


@pytest.mark.parametrize(
    ("project_name", "slug", "package"),
    [
        ("Orders Service", "orders-service", "orders_service"),
        ("Ñandú Café", "nandu-cafe", "nandu_cafe"),
        ("X", "x", "x"),
        ("2048", "2048", "service_2048"),
        ("Class", "class", "class_service"),
        ("  Billing -- API!  ", "billing-api", "billing_api"),
    ],
)
def test_slug_and_package_are_derived_from_the_name(
    bake: Baker, project_name: str, slug: str, package: str
) -> None:
    project = bake(project_name=project_name)

    assert project.name == slug
    assert (project / "src" / package / "__init__.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == slug


@pytest.mark.parametrize("python_version", ["3.11", "3.12", "3.13", "3.14"])
def test_python_version_sets_the_tool_targets(bake: Baker, python_version: str) -> None:
    project = bake(python_version=python_version)

    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    # ruff targets the oldest supported Python, so its formatter never writes newer syntax.
    assert pyproject["tool"]["ruff"]["target-version"] == "py311"
    assert pyproject["tool"]["mypy"]["python_version"] == python_version


def test_generated_readme_links_the_pattern_catalog(bake: Baker) -> None:
    readme = (bake() / "README.md").read_text()

    assert "python -m orders_service" in readme
    assert "docs/patterns.md" in readme
