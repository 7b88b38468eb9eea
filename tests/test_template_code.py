"""The template's own code (hooks and these tests) is held to the standard of what it generates."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import TEMPLATE_DIR


@pytest.mark.parametrize(
    "command",
    [["check", "--no-cache"], ["format", "--check", "--no-cache"]],
    ids=["ruff-check", "ruff-format"],
)
def test_hooks_and_tests_pass_ruff(command: list[str]) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "hooks", "tests"],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
