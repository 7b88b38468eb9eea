"""One budget for the whole shutdown, and the watchdog that ends a process stuck past it."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.aio.background import TaskSupervisor
from {{ cookiecutter.package_name }}.aio.shutdown import ExitWatchdog, ShutdownBudget

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "src"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_counts_from_the_first_start_only() -> None:
    clock = FakeClock()
    budget = ShutdownBudget(10.0, clock=clock)
    assert not budget.started

    budget.start()
    clock.now += 4
    budget.start()  # a second SIGTERM does not buy more time
    assert budget.remaining() == pytest.approx(6.0)
    clock.now += 7
    assert budget.remaining() == 0.0


def test_asking_for_the_remainder_starts_an_unstarted_budget() -> None:
    clock = FakeClock()
    budget = ShutdownBudget(5.0, clock=clock)

    assert budget.remaining() == pytest.approx(5.0)  # no server started it: the drain does
    assert budget.started


async def _shut_down(grace: float, *, shared_budget: bool) -> float:
    # A request that will not finish in time, and background work that will not either.
    supervisor = TaskSupervisor()
    release = asyncio.Event()
    supervisor.spawn(release.wait(), name="notify:stuck")
    request = asyncio.create_task(release.wait(), name="request:stuck")
    budget = ShutdownBudget(grace)
    started = time.monotonic()
    budget.start()  # SIGTERM
    # What the server does: wait for requests in flight for the grace, then cancel them.
    await asyncio.wait({request}, timeout=grace)
    request.cancel()
    # What the lifespan does next: drain background work.
    drain_for = budget.remaining() if shared_budget else grace
    await supervisor.drain(drain_for, cancel_wait=0.1)
    release.set()
    return time.monotonic() - started


async def test_requests_and_the_drain_share_one_budget() -> None:
    grace = 0.4

    took = await _shut_down(grace, shared_budget=True)

    assert grace <= took < grace * 1.5 + 0.1


@pytest.mark.pitfall
async def test_pitfall_a_grace_for_each_step_adds_up_past_the_kill() -> None:
    grace = 0.4

    took = await _shut_down(grace, shared_budget=False)

    # Each step kept its promise, and the whole took twice the grace: an orchestrator that
    # sends SIGKILL at the grace kills the process halfway through the drain.
    assert took >= 2 * grace


def test_the_watchdog_fires_once_after_its_seconds() -> None:
    exits: list[int] = []
    fired = threading.Event()

    def record(code: int) -> None:
        exits.append(code)
        fired.set()

    watchdog = ExitWatchdog(0.1, exit_code=0, exit_now=record)
    watchdog.arm()
    watchdog.arm()  # a second signal: still one timer
    assert fired.wait(timeout=5)
    time.sleep(0.2)  # a second timer, if there were one, would have fired by now
    assert exits == [0]


@pytest.mark.allow_blocking
async def test_the_watchdog_ends_a_process_whose_main_thread_is_stuck() -> None:
    # What no cancellation can reach: the main thread blocked in a call that never returns.
    script = (
        "import time\n"
        "from {{ cookiecutter.package_name }}.aio.shutdown import ExitWatchdog\n"
        "ExitWatchdog(0.5, exit_code=0).arm()\n"
        "time.sleep(60)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=environment, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()

    assert process.returncode == 0
    assert time.monotonic() - started < 30
    assert b"shutdown did not finish within 0.5 s" in stderr
