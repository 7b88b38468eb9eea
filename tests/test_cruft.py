"""Keeping a generated service up to date: cruft can create a project from this template and
finds it up to date with the commit it came from."""

from __future__ import annotations

import json
import os
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


def git(*arguments: str, cwd: Path) -> None:
    environment = {
        **os.environ,
        "GIT_AUTHOR_NAME": "template test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "template test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    subprocess.run(["git", *arguments], cwd=cwd, env=environment, check=True, capture_output=True)


@pytest.mark.skipif(
    not (TEMPLATE_DIR / ".git").exists() or shutil.which("git") is None,
    reason="cruft follows the template's git history: needs a git checkout",
)
def test_cruft_update_brings_a_template_change_into_the_service(tmp_path: Path) -> None:
    # A clone of this template, so the test can add a commit to it.
    template = tmp_path / "template"
    git("clone", "--quiet", str(TEMPLATE_DIR), str(template), cwd=tmp_path)
    (tmp_path / "services").mkdir()
    created = cruft("create", "--no-input", str(template), cwd=tmp_path / "services")
    assert created.returncode == 0, created.stderr
    project = tmp_path / "services" / "orders-service"
    git("init", "--quiet", cwd=project)
    git("add", "--all", cwd=project)
    git("commit", "--quiet", "-m", "generated", cwd=project)

    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nA line the template added later.\n")
    git("commit", "--quiet", "--all", "-m", "template change", cwd=template)

    behind = cruft("check", cwd=project)
    updated = cruft("update", "--skip-apply-ask", "--allow-untracked-files", cwd=project)
    after = cruft("check", cwd=project)

    assert behind.returncode != 0
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "A line the template added later." in (project / "README.md").read_text()
    assert after.returncode == 0
