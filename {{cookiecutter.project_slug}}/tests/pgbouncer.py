"""A real PgBouncer in transaction pooling mode, in front of the test PostgreSQL.

PgBouncer comes from the system's packages: ``apt-get install pgbouncer`` (Debian, Ubuntu),
``dnf install pgbouncer`` (Fedora, RHEL with PGDG), ``brew install pgbouncer`` (macOS). Tests that
need it are skipped, saying so, when the binary cannot be found.

The process runs with PgBouncer's default settings except what a test run needs: transaction
pooling, trust authentication (the user must still be listed in the auth file), a free port on
127.0.0.1, no unix socket. Every database name is forwarded to the test server (the ``*`` entry);
``SINGLE`` is one more name for ``database``, served by a single server connection, so that every
client of it lands on that one connection, which makes what one client leaves on a server
connection visible to the next client.

PgBouncer refuses to run as root; as root it is started with ``-u`` as the owner of the server's
unix socket directory (it must be able to connect there), or as ``nobody`` for a TCP server or a
root-owned socket directory. It reads its configuration before it drops root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

SINGLE = "single_server_connection"
INSTALL_HINT = (
    "the pgbouncer binary was not found (on PATH, /usr/sbin, /usr/local/bin, /opt/homebrew/bin): "
    "install it with `apt-get install pgbouncer` (Debian, Ubuntu), `dnf install pgbouncer` or "
    "`brew install pgbouncer` to run the PgBouncer proofs"
)
_SEARCHED = ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer", "/opt/homebrew/bin/pgbouncer")
START_WITHIN = 10.0  # seconds for the process to listen
STARTS = 3  # another free port after "address already in use" (a parallel worker took it)


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in _SEARCHED if os.access(path, os.X_OK)), None)


@dataclass(frozen=True)
class Server:
    """Where PgBouncer connects: a host name or a unix socket directory, and the login."""

    host: str
    port: int
    user: str
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> Server:
        parsed = make_url(url)
        socket_dir = parsed.query.get("host")
        host = socket_dir if isinstance(socket_dir, str) else parsed.host or "localhost"
        return cls(host, parsed.port or 5432, parsed.username or "postgres", parsed.password)

    @property
    def is_unix_socket(self) -> bool:
        return self.host.startswith("/")

    def connection_string(self, **extra: str) -> str:
        options = {"host": self.host, "port": str(self.port), "user": self.user}
        if self.password:
            options["password"] = self.password
        options.update(extra)
        return " ".join(f"{key}={value}" for key, value in options.items())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as(server: Server) -> list[str]:
    if os.geteuid() != 0:
        return []
    if server.is_unix_socket:
        owner = pwd.getpwuid(Path(server.host).stat().st_uid).pw_name
        # PgBouncer refuses to run as root; a root-owned socket directory is world-writable
        # (the embedded server makes it so), and nobody can connect there.
        if owner != "root":
            return ["-u", owner]
    return ["-u", "nobody"]


@dataclass
class PgBouncer:
    binary: str
    server: Server
    database: str  # the test database, also reachable as SINGLE
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "pgbouncer.log"

    def url(self, database: str | None = None) -> str:
        """An asyncpg URL through PgBouncer (the client needs no password: trust)."""
        name = database or self.database
        return f"postgresql+asyncpg://{self.server.user}@127.0.0.1:{self.port}/{name}"

    def _write_config(self) -> Path:
        auth_file = self.workdir / "users.txt"
        auth_file.write_text(f'"{self.server.user}" ""\n')
        single = self.server.connection_string(dbname=self.database, pool_size="1")
        config = self.workdir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{SINGLE} = {single}\n"
            f"* = {self.server.connection_string()}\n"
            "\n[pgbouncer]\n"
            "pool_mode = transaction\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth_file}\n"
        )
        return config

    def start(self) -> None:
        for _ in range(STARTS):
            self.port = _free_port()
            config = self._write_config()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(  # noqa: S603 - our own arguments
                    [self.binary, *_run_as(self.server), str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._listening():
                return
            self.stop()
            if "Address already in use" not in self.log.read_text():
                break
        raise RuntimeError(f"pgbouncer did not start:\n{self.log.read_text()[-2000:]}")

    def _listening(self) -> bool:
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running_pgbouncer(
    binary: str, server_url: str, database: str, workdir: Path
) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(binary, Server.from_url(server_url), database, workdir)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
