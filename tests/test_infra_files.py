"""The baked Dockerfile, compose.yaml, CI files and LICENSE: linted, parsed and checked.

Each test bakes one option combination. The linters are the ones installed beside the
interpreter running the tests (hadolint, actionlint, check-jsonschema); they work offline.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from .conftest import OPTIONS, UNRENDERED, Baker, bake_into

TOOLS_DIR = Path(sys.executable).parent
PYTHON_VERSIONS: list[str] = OPTIONS["python_version"]
INFRA_FILES = (
    "Dockerfile",
    ".dockerignore",
    "compose.yaml",
    ".github/workflows/ci.yml",
    ".gitlab-ci.yml",
    "LICENSE",
)
DEFAULT_SHUTDOWN_GRACE = 10.0  # seconds, the service's default for SHUTDOWN_GRACE


# ---------------------------------------------------------------------------- helpers


def run_tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = TOOLS_DIR / name
    if not executable.is_file():
        pytest.fail(f"{name} is not installed beside {sys.executable}")
    return subprocess.run(
        [str(executable), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def assert_tool_passes(name: str, *args: str, cwd: Path) -> None:
    result = run_tool(name, *args, cwd=cwd)
    report = f"{name} {' '.join(args)}:\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, report


def assert_schema_valid(schema: str, path: Path) -> None:
    assert_tool_passes("check-jsonschema", "--builtin-schema", schema, str(path), cwd=path.parent)


def assert_rendered(path: Path) -> None:
    leftover = UNRENDERED.search(path.read_text(encoding="utf-8"))
    assert leftover is None, f"{path.name}: unrendered Jinja near {leftover.group()!r}"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def package_of(project: Path) -> str:
    (package,) = [p.name for p in (project / "src").iterdir() if (p / "__init__.py").is_file()]
    return package


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def arguments_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in arguments_of(instructions, "ENV"):
        for match in re.finditer(r'(\w+)=("[^"]*"|\S+)', arguments):
            env[match.group(1)] = match.group(2).strip('"')
    return env


def stage_instructions(path: Path, stage: str) -> list[tuple[str, str]]:
    """The instructions of one named build stage, its FROM included."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for name, arguments in dockerfile_instructions(path):
        if name == "FROM":
            current = []
            stages[arguments.split()[-1]] = current
        current.append((name, arguments))
    return stages[stage]


def seconds(duration: str | int | float) -> float:
    """A compose duration ('30s', '1m30s', '500ms') in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def resolve_env(value: Any, env: Mapping[str, str]) -> str:
    """Substitute ``${{ env.NAME }}`` expressions of a GitHub workflow."""
    return re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda m: env[m.group(1)], str(value))


def workflow_runs(job: Mapping[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def uses_of(job: Mapping[str, Any], action: str) -> list[Mapping[str, Any]]:
    return [step for step in job["steps"] if step.get("uses", "").startswith(f"{action}@")]


def uv_image_version(project: Path) -> str:
    match = re.search(r"ghcr\.io/astral-sh/uv:(\S+)", (project / "Dockerfile").read_text())
    assert match is not None
    return match.group(1)


def service_names(job: Mapping[str, Any]) -> list[str]:
    """GitLab services are either image names or mappings with a ``name``."""
    return [s if isinstance(s, str) else s["name"] for s in job.get("services", [])]


# ---------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def docker_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One baked project with Docker, shared by the tests that only read it."""
    return bake_into(
        tmp_path_factory.mktemp("docker"), use_docker="yes", project_name="Billing API"
    )


DOCKER_CASES = [pytest.param(version, id=f"py{version}") for version in PYTHON_VERSIONS]


@pytest.mark.parametrize("python_version", DOCKER_CASES)
def test_dockerfile_lints_clean_and_follows_python_version(
    bake: Baker, python_version: str
) -> None:
    project = bake(use_docker="yes", python_version=python_version)
    dockerfile = project / "Dockerfile"
    assert_rendered(dockerfile)

    result = run_tool("hadolint", "--no-color", str(dockerfile), cwd=project)

    # No finding at any level (error, warning, info or style).
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr
    instructions = dockerfile_instructions(dockerfile)
    assert arguments_of(instructions, "FROM") == [
        f"python:{python_version}-slim AS builder",
        f"python:{python_version}-slim AS runtime",
    ]
    assert env_of(instructions)["UV_PYTHON"] == f"/usr/local/bin/python{python_version}"


def test_dockerfile_builder_installs_the_project_without_dev_tools(docker_project: Path) -> None:
    project = docker_project
    builder = stage_instructions(project / "Dockerfile", "builder")

    copies = arguments_of(builder, "COPY")
    # uv comes from its official image, pinned to an exact release.
    assert any(
        re.fullmatch(r"--from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ /uv /uvx /bin/", c)
        for c in copies
    )
    syncs = [run for run in arguments_of(builder, "RUN") if "uv sync" in run]
    assert syncs, "the builder installs the project with uv sync"
    for sync in syncs:
        assert "--no-editable" in sync
        assert "--extra" not in sync
        assert "--all-extras" not in sync
    assert env_of(builder)["UV_PROJECT_ENVIRONMENT"] == "/opt/venv"


def test_dockerfile_runtime_stage(docker_project: Path) -> None:
    project = docker_project
    assert package_of(project) == "billing_api"
    runtime = stage_instructions(project / "Dockerfile", "runtime")

    # Only the virtual environment is carried over; no build tools in the final image.
    assert arguments_of(runtime, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert not any("/uv" in run for run in arguments_of(runtime, "RUN"))

    env = env_of(runtime)
    assert env["HOST"] == "0.0.0.0"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")

    # The last USER is an unprivileged, fixed numeric uid (and gid).
    user = arguments_of(runtime, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) >= 1000
    assert gid.isdigit()
    assert f"--uid {uid}" in " ".join(arguments_of(runtime, "RUN"))

    assert arguments_of(runtime, "EXPOSE") == ["8000"]
    assert arguments_of(runtime, "STOPSIGNAL") == ["SIGTERM"]

    # Exec form, so Python itself gets SIGTERM rather than a shell in front of it.
    (cmd,) = arguments_of(runtime, "CMD")
    assert json.loads(cmd) == ["python", "-m", "billing_api"]
    assert not any(name == "ENTRYPOINT" for name, _ in runtime)

    (healthcheck,) = arguments_of(runtime, "HEALTHCHECK")
    options, _, probe = healthcheck.partition(" CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    probe_argv = json.loads(probe)
    assert probe_argv[:2] == ["python", "-c"]
    assert "urllib.request" in probe_argv[2]
    assert "/health/live" in probe_argv[2]
    # The probe must compile: a syntax error would only show as an unhealthy container.
    compile(probe_argv[2], "<healthcheck>", "exec")
    assert "curl" not in healthcheck
    assert "wget" not in healthcheck


def test_dockerignore_lets_in_only_what_the_build_copies(docker_project: Path) -> None:
    project = docker_project
    lines = [
        line.strip()
        for line in (project / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the context is an allowlist"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "src"} <= allowed
    assert not allowed & {".git", ".venv", ".postgres", "tests", ".env"}
    assert "**/__pycache__" in lines


# ---------------------------------------------------------------------------- compose.yaml


def test_compose_file_wiring(docker_project: Path) -> None:
    project = docker_project
    package = "billing_api"
    compose_file = project / "compose.yaml"
    assert_rendered(compose_file)
    assert_schema_valid("vendor.compose-spec", compose_file)
    compose = load_yaml(compose_file)
    services = compose["services"]
    assert set(services) == {"db", "migrate", "upstream", "app"}

    # db: PostgreSQL 18 with a pg_isready healthcheck and a named volume for its data.
    db = services["db"]
    assert db["image"] == "postgres:18"
    assert "pg_isready" in db["healthcheck"]["test"]
    volume, _, mount = db["volumes"][0].partition(":")
    assert volume in compose["volumes"]
    # From 18 on, the image keeps its data under /var/lib/postgresql/<major>/; a volume on the
    # old .../data path would make the entrypoint refuse to start.
    assert mount == "/var/lib/postgresql"
    db_env = db["environment"]

    # migrate, upstream and app run the one image built from this folder.
    built = {name: services[name] for name in ("migrate", "upstream", "app")}
    assert len({service["image"] for service in built.values()}) == 1
    for service in built.values():
        assert service["build"]["context"] == "."
        assert service["build"].get("target", "runtime") == "runtime"

    migrate = services["migrate"]
    assert migrate["command"] == ["python", "-m", package, "migrate"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"

    upstream = services["upstream"]
    command = upstream["command"]
    assert command[:4] == ["python", "-m", package, "demo-upstream"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "9000"
    assert "healthcheck" in upstream

    app = services["app"]
    env = app["environment"]
    assert env["ENVIRONMENT"] == "production"
    assert env["PREFERENCES_URL"] == env["NOTIFIER_URL"] == "http://upstream:9000"
    # DATABASE_URL reaches the db service with the credentials db was created with.
    for url in (env["DATABASE_URL"], migrate["environment"]["DATABASE_URL"]):
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+asyncpg"
        assert (parts.hostname, parts.port) == ("db", 5432)
        assert (parts.username, parts.password) == (
            db_env["POSTGRES_USER"],
            db_env["POSTGRES_PASSWORD"],
        )
        assert parts.path == f"/{db_env['POSTGRES_DB']}"

    depends = {name: spec["condition"] for name, spec in app["depends_on"].items()}
    assert depends["migrate"] == "service_completed_successfully"
    assert depends["upstream"] == "service_healthy"
    assert "127.0.0.1:8000:8000" in app["ports"]
    assert "/health/live" in " ".join(app["healthcheck"]["test"])

    # Docker sends SIGKILL after stop_grace_period: it must outlast the drain.
    grace = float(env.get("SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE))
    assert seconds(app["stop_grace_period"]) > grace


def test_compose_healthchecks_use_what_the_images_have(docker_project: Path) -> None:
    project = docker_project
    services = load_yaml(project / "compose.yaml")["services"]
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if check.get("disable"):
            continue
        test = check["test"]
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        # Neither the slim Python image nor postgres ships curl or wget.
        assert not {"curl", "wget"} & set(" ".join(test).split()), name
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"<{name} healthcheck>", "exec")


# ---------------------------------------------------------------------------- GitHub Actions

GITHUB_CASES = [
    pytest.param(version, docker, id=f"py{version}-docker-{docker}")
    for index, version in enumerate(PYTHON_VERSIONS)
    for docker in ["yes" if index % 2 == 0 else "no"]
]


@pytest.mark.parametrize(("python_version", "use_docker"), GITHUB_CASES)
def test_github_workflow(bake: Baker, python_version: str, use_docker: str) -> None:
    project = bake(ci_provider="github", python_version=python_version, use_docker=use_docker)
    workflow_file = project / ".github" / "workflows" / "ci.yml"
    assert_rendered(workflow_file)
    assert_tool_passes("actionlint", "-no-color", str(workflow_file), cwd=project)
    assert_schema_valid("vendor.github-workflows", workflow_file)

    workflow = load_yaml(workflow_file)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    assert workflow["permissions"] == {"contents": "read"}
    assert "${{ github.ref }}" in workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is True

    env = workflow.get("env", {})
    jobs = workflow["jobs"]
    expected_jobs = {"lint", "audit", "test"} | ({"docker"} if use_docker == "yes" else set())
    assert set(jobs) == expected_jobs

    for name in ("lint", "test"):
        (setup_uv,) = uses_of(jobs[name], "astral-sh/setup-uv")
        assert resolve_env(setup_uv["with"]["python-version"], env) == python_version
        assert any("uv sync --locked --extra dev" in run for run in workflow_runs(jobs[name]))
        assert "timeout-minutes" in jobs[name]

    lint_runs = " && ".join(workflow_runs(jobs["lint"]))
    for command in ("ruff check .", "ruff format --check .", "flake8 src tests", "mypy"):
        assert command in lint_runs

    test_job = jobs["test"]
    postgres = test_job["services"]["postgres"]
    assert postgres["image"] == "postgres:18"
    assert "--health-cmd" in postgres["options"]
    assert "pg_isready" in postgres["options"]
    assert "5432:5432" in postgres["ports"]
    url = urlsplit(test_job["env"]["TEST_DATABASE_URL"])
    assert url.scheme == "postgresql+asyncpg"
    assert (url.hostname, url.port) == ("localhost", 5432)
    assert (url.username, url.password) == (
        postgres["env"]["POSTGRES_USER"],
        postgres["env"]["POSTGRES_PASSWORD"],
    )
    assert any("pytest -n auto" in run for run in workflow_runs(test_job))

    if use_docker == "yes":
        (build,) = uses_of(jobs["docker"], "docker/build-push-action")
        assert build["with"]["push"] is False
        # CI and the image use the same uv release.
        assert resolve_env(setup_uv["with"]["version"], env) == uv_image_version(project)


# ---------------------------------------------------------------------------- GitLab CI

GITLAB_CASES = [
    pytest.param(version, docker, id=f"py{version}-docker-{docker}")
    for index, version in enumerate(PYTHON_VERSIONS)
    for docker in ["no" if index % 2 == 0 else "yes"]
]


@pytest.mark.parametrize(("python_version", "use_docker"), GITLAB_CASES)
def test_gitlab_ci(bake: Baker, python_version: str, use_docker: str) -> None:
    project = bake(ci_provider="gitlab", python_version=python_version, use_docker=use_docker)
    ci_file = project / ".gitlab-ci.yml"
    assert_rendered(ci_file)
    assert_schema_valid("vendor.gitlab-ci", ci_file)

    ci = load_yaml(ci_file)
    expected_stages = ["lint", "test"] + (["build"] if use_docker == "yes" else [])
    assert ci["stages"] == expected_stages
    assert ci["variables"]["PYTHON_VERSION"] == python_version

    template = ci[".python"]
    assert template["image"] == f"python:{python_version}-slim"
    assert "uv sync --locked --extra dev" in template["before_script"][-1]

    lint, test = ci["lint"], ci["test"]
    for job, stage in ((lint, "lint"), (test, "test")):
        assert job["extends"] == ".python"
        assert job["stage"] == stage
    lint_script = " && ".join(lint["script"])
    for command in ("ruff check .", "ruff format --check .", "flake8 src tests", "mypy"):
        assert command in lint_script

    assert "postgres:18" in service_names(test)
    (postgres,) = [s for s in test["services"] if not isinstance(s, str)]
    host = postgres.get("alias", "postgres")
    url = urlsplit(test["variables"]["TEST_DATABASE_URL"])
    assert url.scheme == "postgresql+asyncpg"
    assert (url.hostname, url.port) == (host, 5432)
    assert (url.username, url.password) == (
        test["variables"]["POSTGRES_USER"],
        test["variables"]["POSTGRES_PASSWORD"],
    )
    assert "uv run pytest -n auto" in test["script"]

    docker_jobs = [
        name for name, job in ci.items() if isinstance(job, dict) and job.get("stage") == "build"
    ]
    if use_docker == "yes":
        assert docker_jobs == ["docker-build"]
        job = ci["docker-build"]
        assert any(name.endswith("-dind") for name in service_names(job))
        assert any("docker build" in line for line in job["script"])
        assert not any("docker push" in line for line in job["script"])
        assert ci["variables"]["UV_VERSION"] == uv_image_version(project)
    else:
        assert docker_jobs == []
        assert "dind" not in ci_file.read_text()


# ---------------------------------------------------------------------------- LICENSE

LICENSE_CASES = [pytest.param(value, id=value) for value in OPTIONS["license"]]
# SHA-256 of each license below its copyright line: the standard wording must not drift.
LICENSE_BODY_SHA256 = {
    "MIT": "cf54d4786aa4ec0f4ce331f85ee4c96635148d107f866d865fc2f450c292e4bc",
    "BSD-3-Clause": "e5eef06575583024b3259a2be1c13065c7a4fe39909d4865e4787471f6db11bc",
}


def expected_license_lines(license: str, year: int) -> list[str]:
    """The first, the copyright, a few distinctive and the last line of each license."""
    if license == "MIT":
        return [
            "MIT License",
            f"Copyright (c) {year} Ada Lovelace",
            "Permission is hereby granted, free of charge, to any person obtaining a copy",
            'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR',
            "SOFTWARE.",
        ]
    return [
        "BSD 3-Clause License",
        f"Copyright (c) {year}, Ada Lovelace",
        "1. Redistributions of source code must retain the above copyright notice, this",
        "2. Redistributions in binary form must reproduce the above copyright notice,",
        "3. Neither the name of the copyright holder nor the names of its",
        "OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.",
    ]


@pytest.mark.parametrize("license", LICENSE_CASES)
def test_license(bake: Baker, license: str) -> None:
    years = {datetime.now(UTC).year}
    project = bake(license=license, author_name="Ada Lovelace", use_docker="yes")
    years.add(datetime.now(UTC).year)  # a bake across New Year may take either
    metadata = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    license_file = project / "LICENSE"

    if license == "Proprietary":
        assert not license_file.exists()
        assert "license-files" not in metadata
    else:
        assert_rendered(license_file)
        text = license_file.read_text(encoding="utf-8")
        lines = text.splitlines()
        (year,) = [y for y in years if str(y) in lines[2]] or [max(years)]
        first, copyright_line, *middle, last = expected_license_lines(license, year)
        assert lines[:3] == [first, "", copyright_line]
        for line in middle:
            assert line in lines
        assert lines[-1] == last
        assert text.endswith(f"{last}\n")
        body = "\n".join(lines[3:]).encode()
        assert hashlib.sha256(body).hexdigest() == LICENSE_BODY_SHA256[license]
        assert metadata["license"] == license
        assert metadata["license-files"] == ["LICENSE"]

    # The image build copies LICENSE exactly when the project has one, and every file it
    # copies exists in the project and gets through .dockerignore.
    copies = arguments_of(dockerfile_instructions(project / "Dockerfile"), "COPY")
    sources = [
        source.rstrip("/")
        for copy in copies
        if not copy.startswith("--from=")
        for source in copy.split()[:-1]
        if "*" not in source  # optional files such as uv.lock*
    ]
    allowed = (project / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for source in sources:
        assert (project / source).exists(), f"COPY {source}: not in the baked project"
        assert {f"!{source}", f"!{source}/"} & set(allowed), f"{source} is dockerignored"
    assert ("LICENSE" in sources) == (license != "Proprietary")


# ---------------------------------------------------------------------------- pruning


PRESENCE_CASES = [
    pytest.param(docker, ci, id=f"docker-{docker}-ci-{ci}")
    for docker in OPTIONS["use_docker"]
    for ci in OPTIONS["ci_provider"]
]


@pytest.mark.parametrize(("use_docker", "ci_provider"), PRESENCE_CASES)
def test_files_follow_the_options(bake: Baker, use_docker: str, ci_provider: str) -> None:
    project = bake(use_docker=use_docker, ci_provider=ci_provider, license="MIT")

    present = {name for name in INFRA_FILES if (project / name).exists()}

    expected = {"LICENSE"}
    if use_docker == "yes":
        expected |= {"Dockerfile", ".dockerignore", "compose.yaml"}
    if ci_provider == "github":
        expected.add(".github/workflows/ci.yml")
    if ci_provider == "gitlab":
        expected.add(".gitlab-ci.yml")
    assert present == expected
    if ci_provider != "github":
        assert not (project / ".github").exists()
    for name in present:
        assert_rendered(project / name)
