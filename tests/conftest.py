"""Shared helpers of the template's own tests: bake the template into a temporary folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
OPTIONS: dict[str, Any] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())

# The post-generation hook runs `uv lock` in every new project; the many bakes of these tests
# skip it (set before any bake, so cookiecutter's hook and cruft's subprocesses inherit it).
# tests/test_supply_chain.py unsets it where a test needs the real lock.
SKIP_LOCK_ENV = "ASYNC_SERVICE_TEMPLATE_SKIP_LOCK"
os.environ.setdefault(SKIP_LOCK_ENV, "1")

# Anything that looks like Jinja left in a baked file is a rendering bug.
UNRENDERED = re.compile(r"{{\s*cookiecutter|{%-?\s|cookiecutter\.")

Baker = Callable[..., Path]

# Projects are baked outside pytest's own temporary root. Every pytest session that starts (and
# the generated suites start many, nested, at the same time) resets /tmp/pytest-of-<user> to
# mode 0700, while the embedded PostgreSQL of a baked project runs as a user of its own (it
# refuses root) and must reach its data folder through that path: a session starting elsewhere
# would lock a running server's initdb out. Nested runs get a --basetemp in here for the same
# reason (``NESTED_PYTEST_BASETEMP``).
WORK_ROOT = Path(tempfile.gettempdir()) / "async-service-template-tests"
NESTED_PYTEST_BASETEMP = ".pytest-tmp"


def fresh_workdir() -> Path:
    """A new empty folder under ``WORK_ROOT`` (the caller removes it)."""
    WORK_ROOT.mkdir(exist_ok=True)
    WORK_ROOT.chmod(0o755)
    return Path(tempfile.mkdtemp(dir=WORK_ROOT))


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = fresh_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nested_pytest_options(project: Path) -> list[str]:
    """Options for a pytest run inside a baked project: its temporary files stay in it."""
    return ["-p", "no:cacheprovider", f"--basetemp={project / NESTED_PYTEST_BASETEMP}"]


def bake_into(output_dir: Path, **answers: str) -> Path:
    """Generate a project with the defaults overridden by ``answers``; return its folder."""
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        extra_context=answers,
        output_dir=str(output_dir),
    )
    return Path(project)


@pytest.fixture
def bake(workdir: Path) -> Baker:
    def _bake(**answers: str) -> Path:
        return bake_into(workdir, **answers)

    return _bake


def text_files(project: Path) -> list[Path]:
    """Every text file of a baked project (binary and cache files skipped)."""
    skipped = {
        ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".postgres",
        NESTED_PYTEST_BASETEMP,
    }  # fmt: skip
    files = []
    for path in sorted(project.rglob("*")):
        if path.is_file() and not skipped.intersection(path.parts):
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files
