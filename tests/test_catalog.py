"""The pattern catalog: every link resolves, every test it names exists, every practice has a
proof and a pitfall, both in the template repository and in a generated project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import TEMPLATE_DIR, Baker

CATALOG_SOURCE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "docs" / "patterns.md"
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(markdown_file: Path) -> list[str]:
    text = markdown_file.read_text()
    broken = []
    for target in LINK.findall(text):
        if "://" in target or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].replace("\\_", "_")
        if not (markdown_file.parent / path).exists():
            broken.append(target)
    return broken


def missing_tests(catalog: Path, project: Path) -> list[str]:
    missing = []
    for module, name in TEST_REFERENCE.findall(catalog.read_text()):
        source = project / module
        if not source.is_file():
            missing.append(module)
        elif name and not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{module}::{name}")
    return missing


def test_links_resolve_in_the_template_repository() -> None:
    assert broken_links(CATALOG_SOURCE) == []
    assert broken_links(TEMPLATE_DIR / "docs" / "patterns.md") == []


def test_links_and_named_tests_resolve_in_a_generated_project(bake: Baker) -> None:
    project = bake(project_name="Ñandú Ledger")
    catalog = project / "docs" / "patterns.md"

    assert "{{" not in catalog.read_text()
    assert broken_links(catalog) == []
    assert missing_tests(catalog, project) == []


def practice_sections(text: str) -> dict[str, str]:
    """The numbered sections (``## N. Title``), one per practice, by their heading."""
    found = re.findall(r"^(## \d+\. .*?)(?=^## |\Z)", text, re.M | re.S)
    return {section.splitlines()[0]: section for section in found}


PRACTICES = practice_sections(CATALOG_SOURCE.read_text())


def test_the_practices_are_numbered_in_order() -> None:
    numbers = [int(heading.split()[1].rstrip(".")) for heading in PRACTICES]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 12


@pytest.mark.parametrize("heading", list(PRACTICES))
def test_every_practice_names_its_file_proof_pitfall_and_the_advice_it_corrects(
    heading: str,
) -> None:
    section = PRACTICES[heading]
    order = ["**Problem.**", "**Solution.**", "```python", "**Proof", "**Pitfall",
             "**What common advice gets wrong.**"]  # fmt: skip
    positions = [section.find(marker) for marker in order]

    assert -1 not in positions, [m for m, at in zip(order, positions, strict=True) if at < 0]
    assert positions == sorted(positions), "the parts are not in the catalog's order"
    assert "# bad" in section
    assert "# good" in section
    assert "](../" in section  # links the file that holds the practice
    proof = section[positions[3] : positions[4]]
    pitfalls = section[positions[4] : positions[5]]
    assert TEST_REFERENCE.search(proof), "no named proof test"
    assert re.search(r"::test_pitfall_\w+`", pitfalls), "no named pitfall test"


def test_every_pitfall_test_is_in_the_catalog(bake: Baker) -> None:
    project = bake()
    catalog = (project / "docs" / "patterns.md").read_text()
    pitfall_modules = {
        str(path.relative_to(project))
        for path in (project / "tests").rglob("test_*.py")
        if "@pytest.mark.pitfall" in path.read_text()
    }

    assert pitfall_modules
    assert [module for module in sorted(pitfall_modules) if module not in catalog] == []


def test_every_pitfall_test_carries_the_pitfall_marker(bake: Baker) -> None:
    """``pytest -m pitfall`` is how a reader runs them all: a missing marker hides one."""
    project = bake()
    unmarked = []
    for path in sorted((project / "tests").rglob("test_*.py")):
        source = path.read_text()
        for match in re.finditer(r"^(?:async )?def (test_pitfall_\w+)\(", source, re.M):
            decorators = source[: match.start()].rsplit("\n\n", 1)[-1]
            if "@pytest.mark.pitfall" not in decorators:
                unmarked.append(f"{path.relative_to(project)}::{match.group(1)}")
    assert unmarked == []
