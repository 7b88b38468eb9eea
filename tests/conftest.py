"""Shared helpers of the template's own tests: bake the template into a temporary folder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
OPTIONS: dict[str, Any] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())

# Anything that looks like Jinja left in a baked file is a rendering bug.
UNRENDERED = re.compile(r"{{\s*cookiecutter|{%-?\s|cookiecutter\.")

Baker = Callable[..., Path]


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
def bake(tmp_path: Path) -> Baker:
    def _bake(**answers: str) -> Path:
        return bake_into(tmp_path, **answers)

    return _bake


def text_files(project: Path) -> list[Path]:
    """Every text file of a baked project (binary and cache files skipped)."""
    skipped = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".postgres"}
    files = []
    for path in sorted(project.rglob("*")):
        if path.is_file() and not skipped.intersection(path.parts):
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files
