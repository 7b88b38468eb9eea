"""Remove the files of the options that were turned off, then lock the dependencies.

Cookiecutter renders every file of the template; this hook then deletes what the answers
did not ask for (the Docker files, the CI of the providers not chosen, the Kubernetes
manifests, the LICENSE of a proprietary project) and the folders this leaves empty. It runs
with the generated project as its working directory and can run again on the same folder
(cruft does that on update): a path that is already gone is simply skipped.

Then, when uv can be found, it runs `uv lock` so that the new project starts with a uv.lock
(the exact versions Docker and CI install). That step needs the package index and is bounded
by a timeout; when it cannot be done (no uv, no network, an index that refuses) generation
still succeeds and one line on stderr says how to make the lock later. Setting
ASYNC_SERVICE_TEMPLATE_SKIP_LOCK=1 skips it (the template's own tests do, for their many
bakes). Apart from that note the hook prints nothing when it succeeds.

The functions are plain and typed so that the template's tests can import this file
unrendered and call them on a folder of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Relative to the generated project; each entry belongs to exactly one option.
DOCKER_PATHS = ("Dockerfile", ".dockerignore", "compose.yaml")
CI_PATHS = {
    "github": (".github",),
    # GitLab has no Dependabot: Renovate keeps the pins up to date there.
    "gitlab": (".gitlab-ci.yml", "renovate.json"),
    "none": (),
}
KUBERNETES_PATHS = ("deploy/kubernetes",)
LICENSE_PATHS = ("LICENSE",)
# The bearer-token code and its tests; `{package}` is the package name.
AUTH_PATHS = (
    "src/{package}/auth",
    "src/{package}/api/auth.py",
    "tests/identity_provider.py",
    "tests/test_auth.py",
    "tests/test_jwks_refresh.py",
)
# The OpenTelemetry wiring and its tests (tracing=none leaves no trace of OpenTelemetry at all).
TRACING_PATHS = (
    "src/{package}/observability/tracing.py",
    "tests/test_tracing.py",
)

CHOICES = {
    "use_docker": ("yes", "no"),
    "ci_provider": tuple(CI_PATHS),
    "kubernetes": ("no", "yes"),
    "license": ("MIT", "BSD-3-Clause", "Proprietary"),
    "auth": ("none", "bearer"),
    "tracing": ("none", "opentelemetry"),
}


class PruneError(ValueError):
    """An answer this hook does not know how to act on."""


def _choice(answers: Mapping[str, str], field: str) -> str:
    value = answers.get(field)
    if value is None or value not in CHOICES[field]:
        raise PruneError(f"{field}: {value!r} is not one of {', '.join(CHOICES[field])}")
    return value


def paths_to_prune(answers: Mapping[str, str]) -> list[str]:
    """The paths, relative to the project, that the answers turn off (sorted, no repeats)."""
    paths: set[str] = set()
    if _choice(answers, "use_docker") == "no":
        paths.update(DOCKER_PATHS)
    chosen_ci = _choice(answers, "ci_provider")
    for provider, provider_paths in CI_PATHS.items():
        if provider != chosen_ci:
            paths.update(provider_paths)
    if _choice(answers, "kubernetes") == "no":
        paths.update(KUBERNETES_PATHS)
    if _choice(answers, "license") == "Proprietary":
        paths.update(LICENSE_PATHS)
    if _choice(answers, "auth") == "none":
        package = answers.get("package_name", "")
        if not package.isidentifier():
            raise PruneError(f"package_name: {package!r} is not a package name")
        paths.update(path.format(package=package) for path in AUTH_PATHS)
    if _choice(answers, "tracing") == "none":
        package = answers.get("package_name", "")
        if not package.isidentifier():
            raise PruneError(f"package_name: {package!r} is not a package name")
        paths.update(path.format(package=package) for path in TRACING_PATHS)
    return sorted(paths)


def remove_path(path: Path) -> bool:
    """Delete a file, a symlink or a whole folder; return whether anything was there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def remove_empty_parents(path: Path, root: Path) -> None:
    """Remove the folders above ``path``, up to but not including ``root``, while they are empty
    (``deploy/`` once ``deploy/kubernetes`` is gone and nothing else lives there)."""
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return
        if not parent.is_dir() or parent.is_symlink() or any(parent.iterdir()):
            return
        parent.rmdir()


def prune(project_dir: Path, answers: Mapping[str, str]) -> list[str]:
    """Remove the turned-off paths under ``project_dir``, and the folders left empty by it;
    return the turned-off paths that were there."""
    root = project_dir.resolve()
    removed: list[str] = []
    for relative in paths_to_prune(answers):
        if remove_path(root / relative):
            removed.append(relative)
        remove_empty_parents(root / relative, root)
    return removed


def rendered_answers() -> dict[str, str]:
    # Cookiecutter renders this file before running it, and `tojson` turns each answer into
    # a valid string literal. Unrendered, Python reads each double-brace expression as a set
    # inside a set, evaluated only if this function is called, so tests can import the file.
    return {
        "use_docker": {{ cookiecutter.use_docker | tojson }},
        "ci_provider": {{ cookiecutter.ci_provider | tojson }},
        "kubernetes": {{ cookiecutter.kubernetes | tojson }},
        "license": {{ cookiecutter.license | tojson }},
        "auth": {{ cookiecutter.auth | tojson }},
        "tracing": {{ cookiecutter.tracing | tojson }},
        "package_name": {{ cookiecutter.package_name | tojson }},
    }  # fmt: skip


# ---------------------------------------------------------------------------- uv.lock

SKIP_LOCK_ENV = "ASYNC_SERVICE_TEMPLATE_SKIP_LOCK"
# Seconds for the whole `uv lock`. A cold resolution of this project takes a few seconds; the
# bound is for a network that hangs instead of refusing.
LOCK_TIMEOUT = 120.0
LOCK_LATER = "run `uv lock` in the project folder to make it, then commit uv.lock"
MAX_REASON_LENGTH = 160


def skip_lock(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for no lock (ASYNC_SERVICE_TEMPLATE_SKIP_LOCK=1)."""
    return environ.get(SKIP_LOCK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def interpreter_bin_dirs() -> list[Path]:
    """Where the interpreter running cookiecutter keeps its scripts: the folder of
    ``sys.executable`` as invoked (not resolved: a virtual environment's python links to the
    base interpreter elsewhere) and its scripts path."""
    folders = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    return list(dict.fromkeys(folders))


def find_uv(path: str | None = None, bin_dirs: Sequence[Path] | None = None) -> str | None:
    """The uv executable: on ``path`` (PATH by default), else beside the interpreter that runs
    cookiecutter (a virtual environment or pipx environment holding both, not activated)."""
    found = shutil.which("uv", path=path)
    if found:
        return found
    for folder in interpreter_bin_dirs() if bin_dirs is None else bin_dirs:
        for name in ("uv", "uv.exe"):
            candidate = folder / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def lock_note(reason: str) -> str:
    """The one line printed when the project is left without a lock."""
    return f"note: no uv.lock was made ({reason}); {LOCK_LATER}"


def first_error(stderr: str) -> str:
    """The line of uv's output that says what went wrong, shortened to one short line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    reason = (errors or lines or ["no output"])[0]
    if len(reason) > MAX_REASON_LENGTH:
        reason = reason[: MAX_REASON_LENGTH - 3] + "..."
    return reason


def lock_project(
    project_dir: Path,
    environ: Mapping[str, str],
    find: Callable[[], str | None] | None = None,
    timeout: float = LOCK_TIMEOUT,
) -> str | None:
    """Run `uv lock` in ``project_dir``; return None when there is a uv.lock afterwards (or
    none was wanted), else the note that says why not and how to make it later. Never raises:
    a missing lock must not fail generation. ``find`` locates uv (``find_uv`` by default)."""
    if skip_lock(environ) or (project_dir / "uv.lock").exists():
        return None
    uv = (find or find_uv)()
    if uv is None:
        return lock_note("uv was not found on PATH or beside this Python")
    env = dict(environ)
    # Generation uses a Python that is already installed; a download is the user's decision.
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    try:
        result = subprocess.run(
            [uv, "lock", "--quiet"],
            cwd=project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return lock_note(f"`uv lock` did not finish within {timeout:g} s")
    except OSError as error:
        return lock_note(f"uv could not be run: {error.strerror or error}")
    if result.returncode != 0 or not (project_dir / "uv.lock").is_file():
        return lock_note(f"`uv lock` failed: {first_error(result.stderr)}")
    return None


def main() -> int:
    project = Path.cwd()
    try:
        prune(project, rendered_answers())
    except (PruneError, OSError) as error:
        print(f"ERROR: post-generation cleanup: {error}", file=sys.stderr)
        return 1
    note = lock_project(project, os.environ)
    if note is not None:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
