"""What ``DB_PGBOUNCER=true`` costs a transaction: the PgBouncer hop, no statement cache, SET LOCAL.

What it measures
    One short ORM transaction, as a read of the service runs it (``session.get`` of one user,
    then commit), back to back on one connection, with the service's own engine
    (``db/engine.py``) in four set-ups:

    * ``direct``: PostgreSQL itself, ``DB_PGBOUNCER=false`` (the timeouts are connection
      parameters, both statement caches on). The baseline.
    * ``pgbouncer``: through a real PgBouncer in transaction pooling mode, ``DB_PGBOUNCER=true``:
      the service as it runs there.
    * ``pgbouncer, no SET LOCAL``: the same without the statement that sets the timeouts at the
      start of each transaction; the difference with the row above is what SET LOCAL costs.
    * ``pgbouncer, SQLAlchemy cache on``: the switch with SQLAlchemy's statement cache left on
      (asyncpg's stays off, so statements stay unnamed): SQLAlchemy then skips the extra round
      trip that describes each statement before it runs.

    PostgreSQL is the server in ``TEST_DATABASE_URL`` when set (in a throwaway database), else an
    embedded one in a temporary folder. PgBouncer is started as the tests start it
    (``tests/pgbouncer.py``), from the ``pgbouncer`` binary of the system.

How to read the output
    The median time of one transaction, in microseconds, over rounds that alternate the set-ups;
    ``ratio`` divides it by the ``direct`` row. Compare ratios of one run, never figures of
    different runs or machines.

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/pgbouncer_cost.py [--seconds N]

Only 127.0.0.1 and PostgreSQL's unix socket are contacted; the run stops by itself after about
``N`` seconds (8 by default) plus the start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }}.db.embedded import asyncpg_url, start_embedded_postgres
from {{ cookiecutter.package_name }}.db.engine import (
    connect_args,
    create_engine,
    create_sessionmaker,
    set_timeouts_in_every_transaction,
)
from {{ cookiecutter.package_name }}.db.migrate import upgrade_database
from {{ cookiecutter.package_name }}.db.models import User
from {{ cookiecutter.package_name }}.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/pgbouncer.py
from tests.pgbouncer import INSTALL_HINT, find_pgbouncer, running_pgbouncer

TRANSACTIONS_PER_ROUND = 200


def _engines(direct_url: str, bounced_url: str) -> dict[str, AsyncEngine]:
    off = Settings(environment="test", db_pgbouncer=False)
    on = Settings(environment="test", db_pgbouncer=True)
    no_set_local = create_async_engine(bounced_url, connect_args=connect_args(on))
    sqlalchemy_cache = create_async_engine(
        bounced_url,
        connect_args={
            k: v for k, v in connect_args(on).items() if k != "prepared_statement_cache_size"
        },
    )
    set_timeouts_in_every_transaction(sqlalchemy_cache, on)
    return {
        "direct": create_engine(off, direct_url),
        "pgbouncer": create_engine(on, bounced_url),
        "pgbouncer, no SET LOCAL": no_set_local,
        "pgbouncer, SQLAlchemy cache on": sqlalchemy_cache,
    }


async def _round(engine: AsyncEngine, user_id: int) -> float:
    """Microseconds per transaction, over one round."""
    sessionmaker = create_sessionmaker(engine)
    started = time.perf_counter()
    for _ in range(TRANSACTIONS_PER_ROUND):
        async with sessionmaker() as session:
            await session.get(User, user_id)
            await session.commit()
    return (time.perf_counter() - started) / TRANSACTIONS_PER_ROUND * 1e6


async def _prepare(server_url: str) -> tuple[str, int]:
    """A throwaway database, migrated, with one user."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_async_engine(url)
    await upgrade_database(engine)
    async with engine.begin() as connection:
        inserted = await connection.execute(
            text("INSERT INTO users (email, name) VALUES ('bench@example.com', 'B') RETURNING id")
        )
        user_id = int(inserted.scalar_one())
    await engine.dispose()
    return name, user_id


async def _drop(server_url: str, name: str) -> None:
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def measure(
    engines: dict[str, AsyncEngine], user_id: int, seconds: float
) -> dict[str, float]:
    samples: dict[str, list[float]] = {label: [] for label in engines}
    for engine in engines.values():  # warm-up: connections open, caches filled
        await _round(engine, user_id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(samples["direct"]) < 3:
        for label, engine in engines.items():
            samples[label].append(await _round(engine, user_id))
    return {label: statistics.median(values) for label, values in samples.items()}


async def run(server_url: str, binary: str, folder: Path, seconds: float) -> dict[str, float]:
    name, user_id = await _prepare(server_url)
    try:
        with running_pgbouncer(binary, server_url, name, folder) as bouncer:
            direct = make_url(server_url).set(database=name).render_as_string(hide_password=False)
            engines = _engines(direct, bouncer.url())
            try:
                return await measure(engines, user_id, seconds)
            finally:
                for engine in engines.values():
                    await engine.dispose()
    finally:
        await _drop(server_url, name)


def format_table(medians: dict[str, float]) -> str:
    base = medians["direct"]
    lines = [f"{'set-up':32}{'us per transaction':>20}{'ratio':>8}"]
    for label, value in medians.items():
        lines.append(f"{label:32}{value:>20.0f}{value / base:>8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the cost of DB_PGBOUNCER=true per transaction")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time (default 8)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    binary = find_pgbouncer()
    if binary is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    external = os.environ.get("TEST_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="bench-pgbouncer-") as folder:
        server = None
        if external:
            server_url = make_url(external).set(drivername="postgresql+asyncpg")
            url = server_url.render_as_string(hide_password=False)
        else:
            # Blocking (initdb, then start): before the event loop runs, never inside it.
            server = start_embedded_postgres(Path(folder) / "postgres")
            url = asyncpg_url(server)
        try:
            medians = asyncio.run(run(url, binary, Path(folder), args.seconds))
        finally:
            if server is not None:
                server.cleanup()
    print(format_table(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
