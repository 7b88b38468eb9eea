"""Remove the files of the options that were turned off.

Cookiecutter renders every file of the template; this hook then deletes what the answers
did not ask for (the Docker files, the CI of the providers not chosen, the Kubernetes
manifests, the LICENSE of a proprietary project) and the folders this leaves empty. It runs
with the generated project as its working directory, needs no network, prints nothing when it
succeeds, and can run again on the same folder (cruft does that on update): a path that is
already gone is simply skipped.

The functions are plain and typed so that the template's tests can import this file
unrendered and call them on a folder of their own.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

# Relative to the generated project; each entry belongs to exactly one option.
DOCKER_PATHS = ("Dockerfile", ".dockerignore", "compose.yaml")
CI_PATHS = {
    "github": (".github",),
    "gitlab": (".gitlab-ci.yml",),
    "none": (),
}
KUBERNETES_PATHS = ("deploy/kubernetes",)
LICENSE_PATHS = ("LICENSE",)

CHOICES = {
    "use_docker": ("yes", "no"),
    "ci_provider": tuple(CI_PATHS),
    "kubernetes": ("no", "yes"),
    "license": ("MIT", "BSD-3-Clause", "Proprietary"),
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
    }  # fmt: skip


def main() -> int:
    try:
        prune(Path.cwd(), rendered_answers())
    except (PruneError, OSError) as error:
        print(f"ERROR: post-generation cleanup: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
