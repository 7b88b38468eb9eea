"""Keeping a generated service up to date: cruft can create a project from this template and
finds it up to date with the commit it came from."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE_DIR


def cruft(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cruft", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.skipif(
    not (TEMPLATE_DIR / ".git").exists() or shutil.which("git") is None,
    reason="cruft records the template's git commit: needs a git checkout",
)
def test_cruft_creates_a_project_that_is_up_to_date(tmp_path: Path) -> None:
    created = cruft("create", "--no-input", str(TEMPLATE_DIR), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    project = tmp_path / "orders-service"

    record = json.loads((project / ".cruft.json").read_text())
    checked = cruft("check", cwd=project)

    assert record["template"] == str(TEMPLATE_DIR)
    assert record["context"]["cookiecutter"]["package_name"] == "orders_service"
    assert (project / "src" / "orders_service" / "app.py").is_file()
    assert checked.returncode == 0, checked.stdout + checked.stderr
