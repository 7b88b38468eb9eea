"""The README's promises: its test command is what CI runs, its requirements cover the
generated service, and the documents it links exist."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from .conftest import TEMPLATE_DIR, Baker

README = (TEMPLATE_DIR / "README.md").read_text()


def shell_commands(markdown: str) -> list[str]:
    return [
        block.strip() for block in re.findall(r"```sh\n(.*?)\n\s*```", markdown, flags=re.DOTALL)
    ]


def test_readme_has_the_two_one_line_commands() -> None:
    commands = shell_commands(README.split("## Two commands", 1)[1].split("\n## ", 1)[0])

    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    generate, test = commands
    assert "cookiecutter --no-input" in generate
    assert generate.endswith("python -m orders_service")
    assert "pytest" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = shell_commands(README)[1]
    ci_lines = (TEMPLATE_DIR / ".ci" / "run").read_text().splitlines()

    assert test_command in ci_lines


def test_requirements_cover_the_generated_service(bake: Baker) -> None:
    pyproject = tomllib.loads((bake() / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    needed = [
        item
        for item in pyproject["project"]["dependencies"] + extras["embedded"] + extras["dev"]
        if Requirement(item).name != pyproject["project"]["name"]
    ]
    listed = {
        Requirement(line).name.lower()
        for line in (TEMPLATE_DIR / "requirements-test.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert {Requirement(item).name.lower() for item in needed} <= listed


def test_relative_links_in_the_readmes_resolve(bake: Baker) -> None:
    project = bake()
    for readme, root in (
        (TEMPLATE_DIR / "README.md", TEMPLATE_DIR),
        (project / "README.md", project),
    ):
        text = readme.read_text()
        links = re.findall(r"\]\(([^)#]+)\)", text)
        local = [link for link in links if "://" not in link]
        assert local, readme
        missing = [link for link in local if not (root / link).exists()]
        assert missing == [], readme
