"""``python -m {{ cookiecutter.package_name }} [serve|migrate|demo-upstream]``.

The process this starts is the server: signals sent to its PID act on the service. SIGTERM
(and Ctrl-C) stop accepting connections, let in-flight requests finish, drain background work,
close the pools and exit 0, all within one budget of ``SHUTDOWN_GRACE`` seconds counted from the
signal; a watchdog ends the process (still with 0) if anything overruns it by more than
``EXIT_MARGIN`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from pydantic import ValidationError

from .aio.shutdown import ExitWatchdog, ShutdownBudget
from .db.embedded import EmbeddedPostgresMissingError, asyncpg_url, start_embedded_postgres
from .db.engine import create_engine
from .db.migrate import upgrade_database
from .logs import configure_logging
from .settings import Settings

EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_FAILED = 3
# How long past SHUTDOWN_GRACE the watchdog lets the process live; an orchestrator's own grace
# (compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds) must be larger.
EXIT_MARGIN = 1.5


def describe_settings_error(error: ValidationError) -> str:
    """One line naming the environment variables that are wrong."""
    problems = []
    for item in error.errors():
        variable = "_".join(str(part) for part in item["loc"]).upper()
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{variable}: {message}" if variable else message)
    return "; ".join(problems)


class BudgetedServer(uvicorn.Server):
    """uvicorn's server, with the first exit signal starting the shutdown budget and the
    watchdog, so that the drain later gets only what the requests left of it."""

    def __init__(
        self, config: uvicorn.Config, budget: ShutdownBudget, watchdog: ExitWatchdog
    ) -> None:
        super().__init__(config)
        self.budget = budget
        self.watchdog = watchdog

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.budget.start()
        self.watchdog.arm()
        super().handle_exit(sig, frame)


def _serve(settings: Settings) -> int:
    from .app import create_app  # noqa: PLC0415 - keeps `migrate` free of the web stack

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging is already configured
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        server_header=False,
        # RequestIdMiddleware writes the access log: structured, with the request id, cheaper.
        access_log=False,
    )
    watchdog = ExitWatchdog(settings.shutdown_grace + EXIT_MARGIN)
    server = BudgetedServer(config, app.state.shutdown_budget, watchdog)
    # uvicorn re-raises the signal that stopped it, once its own handlers are removed; a
    # no-op handler turns that into a normal return, so SIGTERM ends with exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else EXIT_STARTUP_FAILED


async def _migrate(url: str, settings: Settings) -> None:
    engine = create_engine(settings, url)
    try:
        await upgrade_database(engine)
    finally:
        await engine.dispose()


def _run_migrations(settings: Settings) -> int:
    if settings.database_url is not None:
        asyncio.run(_migrate(settings.database_url.get_secret_value(), settings))
        return 0
    server = start_embedded_postgres(settings.embedded_postgres_dir)
    try:
        asyncio.run(_migrate(asyncpg_url(server), settings))
    finally:
        server.cleanup()
    return 0


def _serve_demo_upstream(host: str, port: int) -> int:
    from .upstream.demo import create_demo_upstream  # noqa: PLC0415

    config = uvicorn.Config(create_demo_upstream(), host=host, port=port, log_config=None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the API (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    demo = commands.add_parser("demo-upstream", help="serve the demo upstream services")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as error:
        print(f"ERROR: configuration: {describe_settings_error(error)}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            return _run_migrations(settings)
        if args.command == "demo-upstream":
            return _serve_demo_upstream(args.host, args.port)
        return _serve(settings)
    except EmbeddedPostgresMissingError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
