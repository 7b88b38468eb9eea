"""The ceiling of this stack for ``GET /users/{id}``: bare Starlette and a raw asyncpg pool.

What it stands for
    The least work this stack can do for the service's hot path: the same server (uvicorn with
    the event loop and HTTP parser it picks for the service: uvloop and httptools when they are
    installed), one Starlette route, one ``pool.fetchrow`` of a plain SQL string on an asyncpg
    pool as large as the service's ``DB_POOL_SIZE`` (10 by default), the row as JSON. No
    middleware, no dependency injection, no ORM, no validation, no transaction around the read,
    no access log. No real service is this bare; it is what ``bench/hotpath.py`` divides by, so
    that the service's throughput reads as a share of what uvicorn, Python and PostgreSQL allow
    on the machine of the run. (asyncpg's pool still resets each connection it takes back, one
    more statement a request: that is its default, kept.)

    The answer is the service's: ``{"id", "email", "name", "created_at"}`` (ISO 8601), or a 404
    with a JSON ``detail`` when the user does not exist.

Run it (``bench/hotpath.py`` does, on the service's database)::

    python bench/reference_ceiling.py --port 8001 --database-url postgresql+asyncpg://u@h/db

The URL is SQLAlchemy's form, as ``DATABASE_URL``; ``+asyncpg`` is dropped for asyncpg. SIGTERM
or Ctrl-C stops it cleanly: uvicorn closes the connections, then the pool is closed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

POOL_SIZE = 10  # the service's DB_POOL_SIZE default (settings.py)
USER_QUERY = "SELECT id, email, name, created_at FROM users WHERE id = $1"


def asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy's form) as asyncpg takes it."""
    scheme, separator, rest = url.partition("://")
    return scheme.split("+", 1)[0] + separator + rest


class Users:
    """The route and the pool it reads from, opened and closed by the app's lifespan."""

    def __init__(self, database_url: str, pool_size: int) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.pool_size = pool_size
        self.pool: Any = None  # an asyncpg.Pool once started

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_size, max_size=self.pool_size
        )
        try:
            yield
        finally:
            await self.pool.close()

    async def get(self, request: Request) -> JSONResponse:
        row = await self.pool.fetchrow(USER_QUERY, request.path_params["user_id"])
        if row is None:
            return JSONResponse({"detail": "user not found"}, status_code=404)
        return JSONResponse(
            {
                "id": row["id"],
                "email": row["email"],
                "name": row["name"],
                "created_at": row["created_at"].isoformat(),
            }
        )


def create_app(database_url: str, pool_size: int = POOL_SIZE) -> Starlette:
    users = Users(database_url, pool_size)
    return Starlette(routes=[Route("/users/{user_id:int}", users.get)], lifespan=users.lifespan)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GET /users/{id}: bare Starlette + asyncpg")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True, help="postgresql+asyncpg://...")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE)
    args = parser.parse_args(argv)
    app = create_app(args.database_url, args.pool_size)
    # uvicorn raises the stopping signal again once it has shut down: a no-op handler makes
    # SIGTERM a clean exit (0), and Ctrl-C's KeyboardInterrupt is caught.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            app, host="127.0.0.1", port=args.port, access_log=False, timeout_graceful_shutdown=5
        )


if __name__ == "__main__":
    main()
