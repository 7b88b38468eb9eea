"""Overload: goodput and latency tail with 1, 4, 8 and 16 times more clients than the pool.

What it measures
    The service as it runs in production, in a process of its own
    (``python -m {{ cookiecutter.package_name }}``: uvicorn, the real lifespan, the default
    settings unless the environment overrides them), on a real PostgreSQL: the server in
    ``TEST_DATABASE_URL`` when that is set (in a throwaway database, dropped at the end), else an
    embedded one in a temporary folder, migrated first with
    ``python -m {{ cookiecutter.package_name }} migrate``.
    One user is created, then ``C`` clients, each on one keep-alive connection of its own,
    send ``GET /users/{id}`` back to back for ``--seconds`` after a one-second warm-up. ``C`` is
    32 (the reference, as in ``load.py``), then 1, 4, 8 and 16 times the pool
    (``DB_POOL_SIZE + DB_MAX_OVERFLOW``: 15 by default). Then the service is started again
    without admission control (``ADMISSION_LIMIT`` far above any crowd) and measured at 8x and
    16x. Other settings pass through from the environment (``ADMISSION_LIMIT``,
    ``ADMISSION_TIMEOUT``, ``DB_POOL_SIZE``, ...), to compare them the same way.

    A client that gets a 503 sends its next request at once (``--retry at-once``, the default,
    as ``wrk`` does: the harshest client there is), or waits the ``Retry-After`` it was given
    (``--retry after-header``, what a well-behaved client does).

How to read the output
    One row per run: clients (and how many times the pool that is); goodput, the 200s per
    second, and its ratio to the 32-client goodput of the same run; 503s per second; failures,
    anything else (a 500, a 504, a dropped connection, a client timeout of 10 s) out of all
    requests; latency percentiles and the slowest answer of **all** answers (200s and 503s
    together, as the clients saw them), and p99 of the 200s alone, in milliseconds.
    The target, checked on the last line for the 8x run with admission: no failure, p99 of all
    answers under 1 s, goodput at least 0.8 of the 32-client goodput. The runs without
    admission show what the gate prevents: everybody queues, and the tail grows with the crowd.
    The load generator, the service and PostgreSQL share the machine: compare the ratios and
    the rows of one run, never figures from different runs or machines.

    With ``--wrk`` (and ``wrk`` installed) the crowd is ``wrk -c C`` instead of the Python
    clients: far less CPU for the generator; wrk retries a 503 at once and reports latency
    percentiles of all answers only (no p99 of the 200s, no maximum).

Run it from the project root, with the dev extra installed (or ``PYTHONPATH=src``)::

    python bench/overload.py [--seconds N] [--retry at-once|after-header] [--wrk]

Only 127.0.0.1 (and PostgreSQL's unix socket) is contacted; every loop is bounded in time and
count, and the run stops by itself (about ``7 * (N + 1) + 15`` seconds; 80 s by default).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from harness import (
    Run,
    Target,
    Window,
    create_user,
    latencies,
    machine_load,
    measure,
    migrated_database,
    run_in_temporary_folder,
    running_service,
)

from {{ cookiecutter.package_name }}.settings import Settings

# Variables that must come from this script, not from the caller's shell.
CONTROLLED_VARIABLES = (
    "DATABASE_URL", "ENVIRONMENT", "HOST", "PORT", "PREFERENCES_URL", "NOTIFIER_URL",
    "DEBUG_TOKEN",
)  # fmt: skip
REFERENCE_CLIENTS = 32
POOL_MULTIPLES = (1, 4, 8, 16)
TARGET_MULTIPLE = 8  # the target is checked on this crowd
NO_ADMISSION = 100_000  # an ADMISSION_LIMIT no crowd here reaches: the gate never refuses
TARGET_P99 = 1.0
TARGET_GOODPUT_RATIO = 0.8


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seconds: float
    pool: int
    polite: bool
    use_wrk: bool


async def run_benchmark(place: Run, plan: Plan) -> list[Window]:
    log = place.logs["service"]
    async with migrated_database(place, log, CONTROLLED_VARIABLES) as database_url:
        runs = [(REFERENCE_CLIENTS, "reference")]
        runs += [(plan.pool * multiple, f"{multiple}x pool") for multiple in POOL_MULTIPLES]
        windows = []
        for admission, crowds in ((True, runs), (False, runs[-2:])):
            settings = {} if admission else {"ADMISSION_LIMIT": str(NO_ADMISSION)}
            async with running_service(database_url, log, CONTROLLED_VARIABLES, **settings) as (
                host,
                port,
            ):
                target = Target(host, port, f"/users/{await create_user(host, port)}")
                for clients, name in crowds:
                    label = name if admission else f"{name}, no admission"
                    window = await measure(
                        target,
                        clients,
                        label,
                        plan.seconds,
                        use_wrk=plan.use_wrk,
                        polite=plan.polite,
                    )
                    windows.append(window)
        return windows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


HEADER = ("run", "clients", "200/s", "ratio", "503/s", "failures", "p50 ms", "p99 ms",
          "max ms", "p99 200 ms")  # fmt: skip
WIDTHS = (22, 8, 8, 7, 8, 13, 8, 8, 8, 11)


def _row(cells: Sequence[str]) -> str:
    label, *values = cells
    padded = (value.rjust(width) for value, width in zip(values, WIDTHS[1:], strict=True))
    return label.ljust(WIDTHS[0]) + "".join(padded)


def format_table(windows: Sequence[Window], plan: Plan) -> str:
    reference = windows[0].goodput
    tool = "wrk" if plan.use_wrk else "Python clients"
    retry = "wait Retry-After" if plan.polite else "503s retried at once"
    lines = [
        f"GET /users/<id>: {plan.seconds:g} s per run, pool {plan.pool}, {tool}, {retry}"
        f"{machine_load()}",
        _row(HEADER),
    ]
    for window in windows:
        p50, p99, worst, p99_ok = latencies(window)
        ratio = window.goodput / reference if reference else 0.0
        lines.append(
            _row([
                window.label, str(window.clients), f"{window.goodput:.0f}", f"{ratio:.2f}",
                f"{len(window.refused) / window.elapsed:.0f}",
                f"{window.failures}/{window.requests}", _ms(p50), _ms(p99), _ms(worst),
                _ms(p99_ok),
            ])
        )  # fmt: skip
    lines.append(verdict(windows))
    return "\n".join(lines)


def verdict(windows: Sequence[Window]) -> str:
    """The target, checked on the 8x run with admission."""
    reference = windows[0]
    crowd = windows[1 + POOL_MULTIPLES.index(TARGET_MULTIPLE)]
    _, p99, _, _ = latencies(crowd)
    ratio = crowd.goodput / reference.goodput if reference.goodput else 0.0
    checks = [
        ("no failure", crowd.failures == 0),
        (f"p99 of all answers {_ms(p99)} ms < {TARGET_P99 * 1000:.0f} ms", p99 < TARGET_P99),
        (f"goodput ratio {ratio:.2f} >= {TARGET_GOODPUT_RATIO}", ratio >= TARGET_GOODPUT_RATIO),
    ]
    marks = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks)
    return f"target at {crowd.label} ({crowd.clients} clients): {marks}"


def run(plan: Plan) -> list[Window]:
    """The whole run, in a temporary folder that holds the log and the embedded PostgreSQL."""
    return run_in_temporary_folder(
        "bench-overload-", ["service"], lambda place: run_benchmark(place, plan)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GET /users/{id} past capacity, with admission")
    parser.add_argument("--seconds", type=float, default=8.0, help="per run (default 8)")
    parser.add_argument(
        "--retry",
        choices=("at-once", "after-header"),
        default="at-once",
        help="what a client does after a 503 (default: at once, as wrk does)",
    )
    parser.add_argument("--wrk", action="store_true", help="use wrk (must be installed)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.wrk and shutil.which("wrk") is None:
        parser.error("--wrk: wrk is not installed")
    # The pool the service will have: the defaults, or what the environment sets.
    settings = Settings(environment="test", database_url=None)
    plan = Plan(
        seconds=args.seconds,
        pool=settings.db_pool_size + settings.db_max_overflow,
        polite=args.retry == "after-header",
        use_wrk=args.wrk,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        windows = run(plan)
    except KeyboardInterrupt:
        print("interrupted; the service and PostgreSQL have been stopped", file=sys.stderr)
        return 130
    print(format_table(windows, plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
