"""Every answer the pre-gen hook refuses: exit code 1, one ``ERROR: <field>:`` line, no folder.

The hook's functions are also unit-tested directly, imported from the hook file itself.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import TEMPLATE_DIR

COOKIECUTTER = [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE_DIR)]


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pre_gen_project", TEMPLATE_DIR / "hooks" / "pre_gen_project.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = load_hook()


def generate(output_dir: Path, answers: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the cookiecutter command line, as a user would, with ``answers`` on it."""
    arguments = [f"{key}={value}" for key, value in answers.items()]
    return subprocess.run(
        [*COOKIECUTTER, "--output-dir", str(output_dir), *arguments],
        capture_output=True,
        text=True,
        check=False,
    )


BAD_ANSWERS = [
    pytest.param({"project_name": ""}, "project_name", id="empty-name"),
    pytest.param({"project_name": "   "}, "project_name", id="blank-name"),
    pytest.param({"project_name": "!!!"}, "project_slug", id="name-without-letters"),
    pytest.param({"project_name": 'Say "hi"'}, "project_name", id="name-with-quote"),
    pytest.param({"project_name": "x" * 81}, "project_name", id="name-too-long"),
    pytest.param({"project_slug": "Bad Slug"}, "project_slug", id="slug-with-space"),
    pytest.param({"project_slug": "-svc"}, "project_slug", id="slug-leading-hyphen"),
    pytest.param({"project_slug": "a--b"}, "project_slug", id="slug-double-hyphen"),
    pytest.param({"package_name": "1svc"}, "package_name", id="package-leading-digit"),
    pytest.param({"package_name": "my-svc"}, "package_name", id="package-with-hyphen"),
    pytest.param({"package_name": "Svc"}, "package_name", id="package-uppercase"),
    pytest.param({"package_name": "class"}, "package_name", id="package-keyword"),
    pytest.param({"package_name": "none"}, "package_name", id="package-keyword-case"),
    pytest.param({"package_name": "asyncio"}, "package_name", id="package-stdlib"),
    pytest.param({"project_name": "Logging"}, "package_name", id="derived-stdlib"),
    pytest.param({"package_name": "fastapi"}, "package_name", id="package-dependency"),
    pytest.param({"package_name": "café"}, "package_name", id="package-non-ascii"),
    pytest.param({"package_name": "p" * 33}, "package_name", id="package-too-long"),
    pytest.param(
        {"project_name": "Customer Notification Preferences Service"},
        "package_name",
        id="derived-package-too-long",
    ),
    pytest.param({"project_slug": "s" * 65}, "project_slug", id="slug-too-long"),
    # Kubernetes names the Service after the slug (it must start with a letter) and the
    # migration Job '<slug>-migrate' (at most 63 characters).
    pytest.param(
        {"project_name": "2048 Orders", "kubernetes": "yes"},
        "project_slug",
        id="k8s-slug-starting-with-a-digit",
    ),
    pytest.param(
        {"project_slug": "s" * 56, "package_name": "svc", "kubernetes": "yes"},
        "project_slug",
        id="k8s-slug-too-long-for-the-job-name",
    ),
    pytest.param({"author_email": "not-an-email"}, "author_email", id="email-no-at"),
    pytest.param({"author_email": "a@b"}, "author_email", id="email-no-domain-dot"),
    pytest.param({"author_email": "a b@example.com"}, "author_email", id="email-space"),
    pytest.param({"author_name": ""}, "author_name", id="empty-author"),
    pytest.param({"description": "line\nbreak"}, "description", id="multiline-description"),
    pytest.param({"description": "back\\slash"}, "description", id="description-backslash"),
]


@pytest.mark.parametrize(("answers", "field"), BAD_ANSWERS)
def test_bad_answer_stops_with_one_line_and_leaves_nothing(
    tmp_path: Path, answers: dict[str, str], field: str
) -> None:
    finished = generate(tmp_path, answers)

    assert finished.returncode == 1
    output = finished.stdout + finished.stderr
    hook_lines = [line for line in output.splitlines() if line.startswith(f"ERROR: {field}: ")]
    assert len(hook_lines) == 1, output
    # Whatever cookiecutter itself logs afterwards, the hook's own words are one line and
    # there is no traceback from the hook.
    assert "pre_gen_project.py" not in output
    assert "AssertionError" not in output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param({"project_name": "Ñandú Café"}, id="accents"),
        pytest.param({"project_name": "Q"}, id="single-letter"),
        pytest.param({"project_name": "3D Printer Queue"}, id="leading-digit"),
        pytest.param({"author_email": "ops+svc@sub.example.co.uk"}, id="plus-email"),
        pytest.param({"author_name": "Zoë O'Brien"}, id="apostrophe-author"),
        pytest.param({"project_slug": "svc", "package_name": "svc_core"}, id="explicit-names"),
        pytest.param({"project_name": "2048 Orders", "kubernetes": "no"}, id="digit-slug-no-k8s"),
        pytest.param(
            {"project_slug": "s" * 55, "package_name": "svc", "kubernetes": "yes"},
            id="k8s-longest-slug",
        ),
    ],
)
def test_unusual_but_valid_answers_generate(tmp_path: Path, answers: dict[str, str]) -> None:
    finished = generate(tmp_path, answers)

    assert finished.returncode == 0, finished.stderr
    assert len(list(tmp_path.iterdir())) == 1


def test_every_check_passes_the_defaults() -> None:
    hook.validate(
        {
            "project_name": "Orders Service",
            "project_slug": "orders-service",
            "package_name": "orders_service",
            "description": "A service.",
            "author_name": "Team",
            "author_email": "team@example.com",
            "python_version": "3.12",
            "ci_provider": "github",
            "use_docker": "yes",
            "kubernetes": "no",
            "auth": "none",
            "tracing": "none",
            "license": "MIT",
        }
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("python_version", "3.10"),
        ("ci_provider", "jenkins"),
        ("use_docker", "maybe"),
        ("kubernetes", "true"),
        ("auth", "oauth2"),
        ("tracing", "jaeger"),
        ("license", "GPL"),
    ],
)
def test_choices_outside_the_list_are_refused(field: str, value: str) -> None:
    with pytest.raises(hook.AnswerError, match=f"^{field}: "):
        hook.check_choice(field, value)


@pytest.mark.parametrize(
    ("version", "ok"), [("2.7.1", True), ("2.10.0", True), ("3.0", True), ("2.6.0", False)]
)
def test_cookiecutter_version_gate(version: str, ok: bool) -> None:
    if ok:
        hook.check_cookiecutter_version(version)
    else:
        with pytest.raises(hook.AnswerError, match=r"cookiecutter>=2\.7"):
            hook.check_cookiecutter_version(version)


@pytest.mark.parametrize(
    ("slug", "kubernetes", "problem"),
    [
        pytest.param("orders-service", "yes", None, id="usual"),
        pytest.param("a", "yes", None, id="one-letter"),
        pytest.param("s" * 55, "yes", None, id="longest"),
        pytest.param("s" * 56, "yes", "at most 55", id="one-too-long"),
        pytest.param("2048-orders", "yes", "'svc-2048-orders'", id="leading-digit"),
        pytest.param("2048-orders", "no", None, id="leading-digit-without-k8s"),
        pytest.param("s" * 64, "no", None, id="long-without-k8s"),
    ],
)
def test_kubernetes_names(slug: str, kubernetes: str, problem: str | None) -> None:
    if problem is None:
        hook.check_kubernetes_names(slug, kubernetes)
    else:
        with pytest.raises(hook.AnswerError, match=r"^project_slug: ") as raised:
            hook.check_kubernetes_names(slug, kubernetes)
        assert problem in str(raised.value)
        assert "kubernetes=yes" in str(raised.value)


def test_error_message_names_the_field_and_a_valid_example() -> None:
    with pytest.raises(hook.AnswerError) as raised:
        hook.check_package_name("json")

    assert str(raised.value).startswith("package_name: ")
    assert "json_service" in str(raised.value)
    assert raised.value.field == "package_name"
