"""The app factory and the lifespan that owns every long-lived resource.

Run it with ``python -m {{ cookiecutter.package_name }}`` (see ``__main__.py``) or
``uvicorn --factory {{ cookiecutter.package_name }}.app:create_app``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from . import __doc__ as package_doc
from .aio.admission import AdmissionGate, AdmissionMiddleware
from .aio.background import TaskSupervisor
from .aio.deadlines import RequestDeadlineMiddleware
from .aio.debug import LoopLagMonitor, enable_asyncio_debug, install_signal_dumps
from .aio.shutdown import ShutdownBudget
from .api import debug, health, users
from .db.embedded import asyncpg_url, start_embedded_postgres
from .db.engine import create_engine, create_sessionmaker
from .db.idempotency import delete_expired_keys
from .db.migrate import upgrade_database
from .errors import ErrorMiddleware, install_error_handlers
from .logs import request_id_var
from .outbox.dispatcher import DispatchPolicy, OutboxDispatcher
from .outbox.models import ORDER_NOTIFICATION
from .request_id import RequestIdMiddleware
from .resources import Resources
from .settings import DEMO_UPSTREAM_PATH, Settings
from .upstream.calls import Upstreams
from .upstream.client import create_http_client
from .upstream.demo import create_demo_upstream

logger = logging.getLogger(__name__)


async def _database_url(settings: Settings, stack: AsyncExitStack) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    # Starting the embedded server blocks for about a second: keep it off the event loop.
    server = await asyncio.to_thread(start_embedded_postgres, settings.embedded_postgres_dir)
    stack.push_async_callback(asyncio.to_thread, server.cleanup)
    logger.info("embedded PostgreSQL started")
    return asyncpg_url(server)


async def _drain_background_work(supervisor: TaskSupervisor, budget: ShutdownBudget) -> None:
    # Whatever the server left of the shutdown budget: requests and background work share it.
    summary = await supervisor.drain(budget.remaining())
    logger.info(
        "background work drained",
        extra={"drained": summary.drained, "cancelled": list(summary.cancelled_names)},
    )


def _install_debug_hooks(settings: Settings, stack: AsyncExitStack) -> None:
    loop = asyncio.get_running_loop()
    if settings.asyncio_debug:
        enable_asyncio_debug(loop, settings.slow_callback_seconds)
    if threading.current_thread() is threading.main_thread():
        # Signal handlers can only be installed from the main thread.
        stack.callback(install_signal_dumps(loop, logging.getLogger(f"{__package__}.debug")))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    # The exit stack closes everything in reverse order of creation, on every path: background
    # work is drained first, while the client and the engine it uses are still open.
    async with AsyncExitStack() as stack:
        engine = create_engine(settings, await _database_url(settings, stack))
        stack.push_async_callback(engine.dispose)
        if settings.environment == "development":
            await upgrade_database(engine)
        # Building a client loads the CA bundle and imports the transport: file reads that
        # would block the loop, so they run in a thread (blockbuster caught this one).
        http = await asyncio.to_thread(create_http_client, settings)
        stack.push_async_callback(http.aclose)

        loop_lag = LoopLagMonitor(threshold=settings.loop_lag_warning_seconds)
        await loop_lag.start()
        stack.push_async_callback(loop_lag.stop)
        _install_debug_hooks(settings, stack)
        supervisor = TaskSupervisor(logging.getLogger(f"{__package__}.background"))
        budget: ShutdownBudget = app.state.shutdown_budget
        stack.push_async_callback(_drain_background_work, supervisor, budget)

        sessionmaker = create_sessionmaker(engine)
        upstreams = Upstreams(
            http,
            preferences_url=settings.preferences_base_url,
            notifier_url=settings.notifier_base_url,
            deadline=settings.upstream_timeout,
        )
        # Durable notifications (outbox/). Its callback is pushed after the drain's, so at
        # shutdown the dispatcher stops polling first, within what is left of the budget; a
        # send it has to cut is sent again after a restart, or by another replica.
        outbox = OutboxDispatcher(
            sessionmaker,
            {ORDER_NOTIFICATION: upstreams.notify},
            DispatchPolicy.from_settings(settings),
            cleanup_jobs=[delete_expired_keys],
            logger=logging.getLogger(f"{__package__}.outbox"),
        )
        outbox.start()
        stack.push_async_callback(lambda: outbox.stop(budget.remaining()))

        resources = Resources(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            http=http,
            upstreams=upstreams,
            supervisor=supervisor,
            loop_lag=loop_lag,
            outbox=outbox,
        )
        if settings.gc_freeze:
            # Everything created so far lives as long as the process: move it out of the
            # collector's way so full collections stay short (loop-lag p99 under load fell
            # from 54 to 4 ms in our measurements; bench/load.py measures it on your machine).
            gc.collect()
            gc.freeze()
        logger.info(
            "service started",
            extra={
                "environment": settings.environment,
                # uvloop when installed (uvicorn picks it): worth seeing in the log.
                "event_loop": type(asyncio.get_running_loop()).__module__,
            },
        )
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
    # One budget for the whole shutdown; the server (see __main__.py) starts it at SIGTERM.
    app.state.shutdown_budget = ShutdownBudget(settings.shutdown_grace)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(users.router)
    if settings.debug_token is not None:
        # Without a token the debug routes do not exist at all: 404, not 401.
        app.include_router(debug.router)
    if settings.uses_demo_upstream and settings.environment != "production":
        app.mount(DEMO_UPSTREAM_PATH, create_demo_upstream())
    app.add_middleware(
        RequestDeadlineMiddleware, timeout=settings.request_timeout, request_id=request_id_var.get
    )
    # Overload is refused at the door, before any routing or database work; probes, metrics,
    # debug dumps and the demo upstream (which the service calls itself) are never refused.
    app.state.admission_gate = AdmissionGate(settings.admission_slots, settings.admission_timeout)
    app.add_middleware(
        AdmissionMiddleware,
        gate=app.state.admission_gate,
        retry_after=settings.retry_after,
        exempt_paths=("/health", "/metrics", "/debug", DEMO_UPSTREAM_PATH),
        request_id=request_id_var.get,
    )
    # Inside the request id, outside everything else: the one place an unhandled exception
    # becomes an answer (see errors.py), with the request's id in the header, body and log.
    app.add_middleware(ErrorMiddleware, retry_after=settings.retry_after)
    # Added last, so it is outermost: every response and log line carries the request id.
    app.add_middleware(RequestIdMiddleware)
    return app
