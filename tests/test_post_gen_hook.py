"""Unit tests of hooks/post_gen_project.py, imported unrendered from its path.

The hook is a Jinja template too: only ``rendered_answers`` holds Jinja, and Python reads
it as set displays that are never evaluated, so the file imports as it is.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cookiecutter.environment import StrictEnvironment

from .conftest import OPTIONS, TEMPLATE_DIR, Baker

HOOK_PATH = TEMPLATE_DIR / "hooks" / "post_gen_project.py"
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook: Any = load_module(HOOK_PATH, "post_gen_project")

DOCKER_FILES = {"Dockerfile", ".dockerignore", "compose.yaml"}
GITHUB_FILES = {".github/workflows/ci.yml", ".github/dependabot.yml"}
GITLAB_FILES = {".gitlab-ci.yml", "renovate.json"}
LICENSE_FILES = {"LICENSE"}
KUBERNETES_FILES = {"deploy/kubernetes/kustomization.yaml", "deploy/kubernetes/deployment.yaml"}
# Files that no answer removes.
KEPT_FILES = {
    "pyproject.toml",
    "README.md",
    ".flake8",
    "src/pkg/__init__.py",
    "tests/test_x.py",
}
ALL_FILES = (
    DOCKER_FILES | GITHUB_FILES | GITLAB_FILES | LICENSE_FILES | KUBERNETES_FILES | KEPT_FILES
)


def expected_pruned(
    use_docker: str, ci_provider: str, license: str, kubernetes: str = "yes"
) -> set[str]:
    """What each answer turns off, written out independently of the hook."""
    pruned: set[str] = set()
    if use_docker == "no":
        pruned |= {"Dockerfile", ".dockerignore", "compose.yaml"}
    pruned |= {
        "github": {".gitlab-ci.yml", "renovate.json"},
        "gitlab": {".github"},
        "none": {".github", ".gitlab-ci.yml", "renovate.json"},
    }[ci_provider]
    if license == "Proprietary":
        pruned.add("LICENSE")
    if kubernetes == "no":
        pruned.add("deploy/kubernetes")
    return pruned


def expected_remaining(
    use_docker: str, ci_provider: str, license: str, kubernetes: str = "yes"
) -> set[str]:
    pruned = expected_pruned(use_docker, ci_provider, license, kubernetes)
    return {
        file for file in ALL_FILES if not any(file == p or file.startswith(f"{p}/") for p in pruned)
    }


def answers_of(
    use_docker: str,
    ci_provider: str,
    license: str,
    kubernetes: str = "yes",
    auth: str = "bearer",
    tracing: str = "opentelemetry",
) -> dict[str, str]:
    return {
        "use_docker": use_docker,
        "ci_provider": ci_provider,
        "license": license,
        "kubernetes": kubernetes,
        "auth": auth,
        "tracing": tracing,
        "package_name": "pkg",
    }


def make_project(root: Path) -> Path:
    """A stand-in for a generated project holding every file an option can remove."""
    for relative in ALL_FILES:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {relative}\n")
    return root


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


COMBINATIONS = [
    pytest.param(docker, ci, lic, k8s, id=f"docker-{docker}-ci-{ci}-{lic}-k8s-{k8s}")
    for docker, ci, lic, k8s in itertools.product(
        OPTIONS["use_docker"], OPTIONS["ci_provider"], OPTIONS["license"], OPTIONS["kubernetes"]
    )
]
ANSWERS = ("use_docker", "ci_provider", "license", "kubernetes")


@pytest.mark.parametrize(ANSWERS, COMBINATIONS)
def test_paths_to_prune_per_answer(
    use_docker: str, ci_provider: str, license: str, kubernetes: str
) -> None:
    paths = hook.paths_to_prune(answers_of(use_docker, ci_provider, license, kubernetes))
    assert paths == sorted(expected_pruned(use_docker, ci_provider, license, kubernetes))


@pytest.mark.parametrize(ANSWERS, COMBINATIONS)
def test_prune_removes_exactly_what_is_turned_off(
    tmp_path: Path, use_docker: str, ci_provider: str, license: str, kubernetes: str
) -> None:
    project = make_project(tmp_path / "project")
    answers = answers_of(use_docker, ci_provider, license, kubernetes)

    removed = hook.prune(project, answers)

    assert set(removed) == expected_pruned(use_docker, ci_provider, license, kubernetes)
    assert files_under(project) == expected_remaining(use_docker, ci_provider, license, kubernetes)
    # A pruned folder goes as a whole, not just its files, and so does a folder it leaves
    # empty (deploy/ once deploy/kubernetes is gone).
    if ".github" in removed:
        assert not (project / ".github").exists()
    assert (project / "deploy").exists() == (kubernetes == "yes")


@pytest.mark.parametrize(ANSWERS, COMBINATIONS)
def test_pruning_twice_is_safe(
    tmp_path: Path, use_docker: str, ci_provider: str, license: str, kubernetes: str
) -> None:
    project = make_project(tmp_path / "project")
    answers = answers_of(use_docker, ci_provider, license, kubernetes)

    hook.prune(project, answers)
    after_first = files_under(project)
    removed_again = hook.prune(project, answers)

    assert removed_again == []
    assert files_under(project) == after_first


def test_auth_none_removes_the_bearer_code_and_its_tests(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    auth_files = {
        "src/pkg/auth/__init__.py",
        "src/pkg/auth/jwks.py",
        "src/pkg/api/auth.py",
        "tests/identity_provider.py",
        "tests/test_auth.py",
        "tests/test_jwks_refresh.py",
    }
    for relative in auth_files:
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text("# auth\n")

    hook.prune(project, answers_of("yes", "github", "MIT", "yes", auth="none"))

    remaining = files_under(project)
    assert remaining & auth_files == set()
    assert remaining == expected_remaining("yes", "github", "MIT", "yes")


def test_tracing_none_removes_the_tracing_module_and_its_tests(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    tracing_files = {"src/pkg/observability/tracing.py", "tests/test_tracing.py"}
    kept = "src/pkg/observability/metrics.py"
    for relative in (*tracing_files, kept):
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text("# observability\n")

    hook.prune(project, answers_of("yes", "github", "MIT", "yes", tracing="none"))

    remaining = files_under(project)
    assert remaining & tracing_files == set()
    assert remaining == expected_remaining("yes", "github", "MIT", "yes") | {kept}


def test_tracing_opentelemetry_keeps_the_tracing_module(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    (project / "src/pkg/observability").mkdir(parents=True)
    (project / "src/pkg/observability/tracing.py").write_text("# tracing\n")

    hook.prune(project, answers_of("yes", "github", "MIT", "yes", tracing="opentelemetry"))

    assert "src/pkg/observability/tracing.py" in files_under(project)


def test_auth_bearer_keeps_the_bearer_code(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    (project / "src/pkg/auth").mkdir(parents=True)
    (project / "src/pkg/auth/jwks.py").write_text("# auth\n")

    hook.prune(project, answers_of("yes", "github", "MIT", "yes", auth="bearer"))

    assert "src/pkg/auth/jwks.py" in files_under(project)


def test_prune_of_an_empty_folder_removes_nothing(tmp_path: Path) -> None:
    assert hook.prune(tmp_path, answers_of("no", "none", "Proprietary", "no")) == []
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_still_holds_something_is_kept(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    (project / "deploy" / "pgbouncer.ini").write_text("[pgbouncer]\n")

    assert "deploy/kubernetes" in hook.prune(project, answers_of("yes", "github", "MIT", "no"))

    assert not (project / "deploy" / "kubernetes").exists()
    assert (project / "deploy" / "pgbouncer.ini").is_file()


def test_empty_parents_stop_at_the_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "deploy" / "kubernetes").mkdir(parents=True)

    assert hook.prune(project, answers_of("yes", "github", "MIT", "no")) == ["deploy/kubernetes"]

    assert project.is_dir()
    assert list(project.iterdir()) == []


def test_prune_removes_a_symlink_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    project = tmp_path / "project"
    project.mkdir()
    (project / ".github").symlink_to(outside, target_is_directory=True)

    assert hook.prune(project, answers_of("yes", "gitlab", "MIT")) == [".github"]
    assert not (project / ".github").exists()
    assert (outside / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param(answers_of("maybe", "github", "MIT"), id="bad-use_docker"),
        pytest.param(answers_of("yes", "bitbucket", "MIT"), id="bad-ci_provider"),
        pytest.param(answers_of("yes", "github", "GPL"), id="bad-license"),
        pytest.param(answers_of("yes", "github", "MIT", "maybe"), id="bad-kubernetes"),
        pytest.param(answers_of("yes", "github", "MIT", "no", auth="oauth"), id="bad-auth"),
        pytest.param(
            {"use_docker": "yes", "ci_provider": "github", "kubernetes": "no"},
            id="missing-license",
        ),
        pytest.param(
            {"use_docker": "yes", "ci_provider": "github", "license": "MIT"},
            id="missing-kubernetes",
        ),
    ],
)
def test_unknown_answers_are_refused(tmp_path: Path, answers: dict[str, str]) -> None:
    project = make_project(tmp_path / "project")
    with pytest.raises(hook.PruneError):
        hook.prune(project, answers)
    assert files_under(project) == ALL_FILES


@pytest.mark.parametrize("field", ["use_docker", "ci_provider", "license", "kubernetes", "auth"])
def test_hook_knows_every_choice_of_cookiecutter_json(field: str) -> None:
    assert set(hook.CHOICES[field]) == set(OPTIONS[field])


def test_every_prunable_path_exists_in_the_template() -> None:
    known = [*hook.DOCKER_PATHS, *hook.LICENSE_PATHS, *hook.KUBERNETES_PATHS]
    known += [path for paths in hook.CI_PATHS.values() for path in paths]
    known += [path.format(package="{{cookiecutter.package_name}}") for path in hook.AUTH_PATHS]
    missing = [path for path in known if not (PROJECT_TEMPLATE / path).exists()]
    assert missing == []


def test_main_is_quiet_and_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setattr(hook, "rendered_answers", lambda: answers_of("no", "gitlab", "MIT", "no"))

    assert hook.main() == 0
    assert hook.main() == 0

    assert capsys.readouterr() == ("", "")
    assert files_under(project) == expected_remaining("no", "gitlab", "MIT", "no")


def test_main_reports_a_bad_answer_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hook, "rendered_answers", lambda: answers_of("yes", "svn", "MIT"))

    assert hook.main() == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ERROR: ")
    assert "ci_provider" in err


def test_rendered_hook_returns_the_answers(tmp_path: Path) -> None:
    """Render the hook the way cookiecutter does and call the rendered function."""
    context = {
        "cookiecutter": {
            "use_docker": "no",
            "ci_provider": "gitlab",
            "license": "BSD-3-Clause",
            "kubernetes": "no",
            "auth": "none",
            "tracing": "none",
            "package_name": "orders_service",
        }
    }
    env = StrictEnvironment(context=context, keep_trailing_newline=True)
    rendered = env.from_string(HOOK_PATH.read_text(encoding="utf-8")).render(**context)
    rendered_path = tmp_path / "post_gen_project.py"
    rendered_path.write_text(rendered, encoding="utf-8")

    module = load_module(rendered_path, "post_gen_project_rendered")

    assert module.rendered_answers() == context["cookiecutter"]
    compile(rendered, str(rendered_path), "exec")


def test_baking_runs_the_hook_silently(bake: Baker, capfd: pytest.CaptureFixture[str]) -> None:
    project = bake(use_docker="no", ci_provider="none", license="Proprietary")

    out, err = capfd.readouterr()
    assert "ERROR" not in out + err
    assert out.strip() == ""
    # kubernetes is "no" by default: deploy/ goes as well.
    for name in (*DOCKER_FILES, ".github", ".gitlab-ci.yml", "renovate.json", "LICENSE", "deploy"):
        assert not (project / name).exists(), name
    assert (project / "pyproject.toml").is_file()


def test_hook_imports_only_the_standard_library() -> None:
    # Cookiecutter runs the hook with its own interpreter, offline: nothing else to rely on.
    tree = ast.parse(HOOK_PATH.read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    top_level = {name.partition(".")[0] for name in imported}
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}
