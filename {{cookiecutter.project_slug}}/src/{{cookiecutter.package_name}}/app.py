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

from fastapi import {% if cookiecutter.auth == "bearer" %}Depends, {% endif %}FastAPI

from . import __doc__ as package_doc
from .aio.admission import AdmissionGate, AdmissionMiddleware
from .aio.background import TaskSupervisor
from .aio.deadlines import RequestDeadlineMiddleware
from .aio.debug import LoopLagMonitor, enable_asyncio_debug, install_signal_dumps
from .aio.shutdown import ShutdownBudget
from .api import debug, docs, health, users
{%- if cookiecutter.auth == "bearer" %}
from .api.auth import authorize_user_access
from .auth.middleware import STATE_VERIFIER, BearerAuthMiddleware
from .auth.setup import start_token_verifier
{%- endif %}
from .body_limit import BodyLimitMiddleware
from .db.embedded import asyncpg_url, start_embedded_postgres
from .db.engine import LivenessCheck, create_engine, create_sessionmaker
from .db.idempotency import delete_expired_keys
from .db.migrate import upgrade_database
from .db.reads import Reader
from .errors import ErrorMiddleware, install_error_handlers
from .logs import AccessLog, request_id_var
from .observability.metrics import MetricsMiddleware, ServiceMetrics, StateSources
from .observability.server import MetricsServer, metrics_endpoint
{%- if cookiecutter.tracing == "opentelemetry" %}
from .observability.tracing import Tracing, untraced
{%- endif %}
from .outbox.dispatcher import DispatchPolicy, OutboxDispatcher
from .outbox.models import ORDER_NOTIFICATION
from .request_id import RequestIdMiddleware
from .resources import Resources
from .settings import DEMO_UPSTREAM_PATH, {% if cookiecutter.auth == "bearer" %}PACKAGE_NAME, {% endif %}Settings
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
        liveness = LivenessCheck()
        engine = create_engine(settings, await _database_url(settings, stack), liveness)
        stack.push_async_callback(engine.dispose)
        if settings.environment == "development":
            await upgrade_database(engine)
        # Building a client loads the CA bundle and imports the transport: file reads that
        # would block the loop, so they run in a thread (blockbuster caught this one).
        http = await asyncio.to_thread(create_http_client, settings)
        stack.push_async_callback(http.aclose)
{%- if cookiecutter.tracing == "opentelemetry" %}
        # SQL statements and upstream calls join the current trace (observability/tracing.py).
        # The stack unwinds in reverse, so tracing stops after background work has drained:
        # its spans are flushed too, within what is left of the shutdown budget.
        tracing: Tracing = app.state.tracing
        tracing.start(engine, http)
        stack.push_async_callback(lambda: tracing.stop(app.state.shutdown_budget.remaining()))
{%- endif %}

        metrics: ServiceMetrics = app.state.metrics
        loop_lag = LoopLagMonitor(
            threshold=settings.loop_lag_warning_seconds, on_sample=metrics.observe_loop_lag
        )
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
            observe=metrics.observe_upstream_call,
            max_body_bytes=settings.upstream_max_body_bytes,
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
{%- if cookiecutter.tracing == "opentelemetry" %}
        # Its polling loop (the task inherits this context) is untraced, its deliveries are not.
        with untraced():
            outbox.start()
{%- else %}
        outbox.start()
{%- endif %}
        stack.push_async_callback(lambda: outbox.stop(budget.remaining()))
        metrics.bind(
            StateSources(engine, sessionmaker, supervisor, outbox, app.state.admission_gate)
        )
        stack.callback(metrics.unbind)
        if settings.metrics_port is not None:
            app.state.metrics_server = await stack.enter_async_context(
                MetricsServer(metrics, settings.host, settings.metrics_port)
            )

{%- if cookiecutter.auth == "bearer" %}
        # Caller tokens (auth/): the JWKS is fetched now, through the shared client under its
        # deadline, so no request ever waits for the identity provider; refreshed in the background.
        token_verifier = await start_token_verifier(settings, http, stack)
{%- endif %}
        resources = Resources(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            reader=Reader(
                engine,
                liveness,
                in_transaction=settings.db_pgbouncer,
                # With tracing, SQLAlchemy's instrumentation must see the statement.
                through_sqlalchemy={{ "True" if cookiecutter.tracing == "opentelemetry" else "False" }},
            ),
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
        yield {"resources": resources{% if cookiecutter.auth == "bearer" %}, STATE_VERIFIER: token_verifier{% endif %}}
        logger.info("service stopping")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="{{ cookiecutter.project_name }}",
        description=" ".join((package_doc or "").split("\n")[2:]).strip(),
        version="0.1.0",
        lifespan=lifespan,
        # The docs pages are api/docs.py's (no CDN); the schema only where they are served.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.serves_docs else None,
    )
    app.state.settings = settings
    # One budget for the whole shutdown; the server (see __main__.py) starts it at SIGTERM.
    app.state.shutdown_budget = ShutdownBudget(settings.shutdown_grace)
    install_error_handlers(app)
{%- if cookiecutter.tracing == "opentelemetry" %}
    # The server span wraps the whole middleware stack, which is built before the lifespan runs.
    app.state.tracing = Tracing(app)
{%- endif %}
    # The API's routes first: the router tries routes in the order they were added, and the
    # probes and /metrics are asked for far less often (52k fewer instructions per GET /users/1
    # with this order; docs/patterns.md, Performance).
{%- if cookiecutter.auth == "bearer" %}
    app.include_router(users.router, dependencies=[Depends(authorize_user_access)])
{%- else %}
    app.include_router(users.router)
{%- endif %}
    # Its own registry per app (observability/metrics.py); on the main port unless METRICS_PORT.
    app.state.metrics = ServiceMetrics()
    if settings.metrics_port is None:
        app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.include_router(health.router)
    if settings.debug_token is not None:
        # Without a token the debug routes do not exist at all: 404, not 401.
        app.include_router(debug.router)
    if settings.serves_docs:
        app.include_router(docs.router)
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
{%- if cookiecutter.auth == "bearer" %}
    # Before admission: a request without a valid token costs no slot. Default deny: only these
    # prefixes are open (the debug routes check DEBUG_TOKEN themselves).
    app.add_middleware(
        BearerAuthMiddleware,
        realm=PACKAGE_NAME,
        public_paths=("/health", "/metrics", "/debug", DEMO_UPSTREAM_PATH),
    )
{%- endif %}
    # A body past MAX_BODY_BYTES is refused before anything else reads it (body_limit.py).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Inside the request id, outside everything else: the one place an unhandled exception
    # becomes an answer (see errors.py), with the request's id in the header, body and log.
    app.add_middleware(ErrorMiddleware, retry_after=settings.retry_after)
    # Outside the error middleware, so it times every answer (503s of shed requests, 500s).
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Added last, so it is outermost: every response and log line carries the request id, and
    # the access log line (ACCESS_LOG) sees the status the client got and the whole duration.
    access_log = AccessLog(f"{__package__}.access") if settings.access_log else None
    app.add_middleware(RequestIdMiddleware, access_log=access_log)
    return app
