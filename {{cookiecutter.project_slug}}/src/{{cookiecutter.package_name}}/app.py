"""The app factory and the lifespan that owns every long-lived resource.

Run it with ``python -m {{ cookiecutter.package_name }}`` (see ``__main__.py``) or
``uvicorn --factory {{ cookiecutter.package_name }}.app:create_app``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from . import __doc__ as package_doc
from .api import health, users
from .db.embedded import asyncpg_url, start_embedded_postgres
from .db.engine import create_engine, create_sessionmaker
from .db.migrate import upgrade_database
from .errors import install_error_handlers
from .request_id import RequestIdMiddleware
from .resources import Resources
from .settings import DEMO_UPSTREAM_PATH, Settings
from .upstream.client import create_http_client
from .upstream.demo import create_demo_upstream

logger = logging.getLogger(__name__)


async def _database_url(settings: Settings, stack: AsyncExitStack) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    # Starting the embedded server blocks for about a second: keep it off the event loop.
    server = await asyncio.to_thread(start_embedded_postgres, settings.embedded_postgres_dir)
    stack.push_async_callback(asyncio.to_thread, server.cleanup)
    logger.info(
        "embedded PostgreSQL started", extra={"data_dir": str(settings.embedded_postgres_dir)}
    )
    return asyncpg_url(server)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    # The exit stack closes everything in reverse order of creation, on every path.
    async with AsyncExitStack() as stack:
        engine = create_engine(settings, await _database_url(settings, stack))
        stack.push_async_callback(engine.dispose)
        if settings.environment == "development":
            await upgrade_database(engine)
        http = create_http_client(settings)
        stack.push_async_callback(http.aclose)

        resources = Resources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            http=http,
        )
        if settings.gc_freeze:
            # Everything created so far lives as long as the process: move it out of the
            # collector's way so full collections stay short (DESIGN.md: p99 75 -> 19 ms).
            gc.collect()
            gc.freeze()
        logger.info("service started", extra={"environment": settings.environment})
        yield {"resources": resources}
        logger.info("service stopping")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="{{ cookiecutter.project_name }}",
        description=" ".join((package_doc or "").split("\n")[2:]).strip(),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(users.router)
    if settings.uses_demo_upstream and settings.environment != "production":
        app.mount(DEMO_UPSTREAM_PATH, create_demo_upstream())
    # Added last, so it is outermost: every response and log line carries the request id.
    app.add_middleware(RequestIdMiddleware)
    return app
