"""Blocking work belongs in a thread: ``asyncio.to_thread``, and what it does not do for you.

The loop runs every task on one thread, so a blocking call made in a coroutine (``time.sleep``,
a synchronous client, a big file read, a CPU-heavy loop) stops all of them until it returns.
``asyncio.to_thread`` moves the call to the loop's default executor and the loop goes on.

Two things it does not do. A deadline around it gives up the wait, not the work: Python cannot
stop a thread, so the call runs on to its end, holding an executor thread and whatever it
locked. And the executor is small, ``min(32, os.cpu_count() + 4)`` threads for the whole
process: calls beyond that queue, so a thread per request does not scale with requests.
(CPU-bound pure-Python work also holds the GIL, which a thread does not release: it needs a
process pool, or to be done elsewhere.)

The loop's health is measured with a heartbeat: a task that ticks every few milliseconds. The
longest gap between two ticks is the longest time the loop could not run anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from itertools import pairwise

import pytest

BLOCK_SECONDS = 0.4
TICK_SECONDS = 0.01


class Heartbeat:
    """The times at which a task that sleeps ``TICK_SECONDS`` in a loop woke up."""

    def __init__(self) -> None:
        self.beats: list[float] = []

    @property
    def longest_gap(self) -> float:
        return max(later - earlier for earlier, later in pairwise(self.beats))


@contextlib.asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    """Tick while the block runs; the first beat is its start, the last its end."""
    recorder = Heartbeat()
    recorder.beats.append(time.monotonic())

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            recorder.beats.append(time.monotonic())

    ticking = asyncio.create_task(tick())
    try:
        yield recorder
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        recorder.beats.append(time.monotonic())


async def test_to_thread_keeps_the_loop_responsive_while_blocking_work_runs() -> None:
    started = time.monotonic()
    async with heartbeat() as beats:
        await asyncio.to_thread(time.sleep, BLOCK_SECONDS)
    assert time.monotonic() - started >= BLOCK_SECONDS
    # The loop woke the heartbeat all along: ~40 ticks, none of them much later than due
    # (wide margin: the machine may be busy with other test processes).
    assert len(beats.beats) >= 10
    assert beats.longest_gap < BLOCK_SECONDS / 2


async def test_a_deadline_does_not_stop_the_thread_it_abandons() -> None:
    finished = threading.Event()

    def slow_job() -> None:
        time.sleep(BLOCK_SECONDS)
        finished.set()

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await asyncio.to_thread(slow_job)
    # The deadline was kept: the caller got its TimeoutError long before the job's end ...
    assert time.monotonic() - started < BLOCK_SECONDS
    assert not finished.is_set()
    # ... and the job, which nothing can stop, went on in its thread and finished anyway.
    assert await asyncio.to_thread(finished.wait, 5)


def _peak_concurrency(calls: int, expected: int) -> tuple[int, int]:
    """Make ``calls`` blocking calls at once on a fresh loop's default executor.

    Return how many ran together, and how many started only once others were let go. A loop of
    its own: threads that other tests left busy in the session's executor do not count.
    """
    lock = threading.Lock()
    entered: list[bool] = []  # one item per call that got a thread; True once released
    release = threading.Event()

    def hold_a_thread() -> None:
        with lock:
            entered.append(release.is_set())
        release.wait(10)

    async def measure() -> tuple[int, int]:
        try:
            async with asyncio.timeout(5), asyncio.TaskGroup() as group:
                for _ in range(calls):
                    group.create_task(asyncio.to_thread(hold_a_thread))
                while len(entered) < expected:  # noqa: ASYNC110 - threads have no loop event
                    await asyncio.sleep(0.01)
                # Room for one more thread to start, if the executor had one to give.
                await asyncio.sleep(0.3)
                together = len(entered)
                release.set()
        finally:
            release.set()  # on failure too: the loop cannot close while its threads wait
        return together, entered.count(True)

    loop_factories: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    if importlib.util.find_spec("uvloop"):  # the loop uvicorn runs the service on
        import uvloop  # noqa: PLC0415 - optional

        loop_factories.append(uvloop.new_event_loop)
    results = set()
    for factory in loop_factories:
        entered.clear()
        release.clear()
        with asyncio.Runner(loop_factory=factory) as runner:
            results.add(runner.run(measure()))
    [result] = results  # the same on every loop
    return result


async def test_the_default_executor_has_min_32_cpu_plus_4_workers() -> None:
    workers = min(32, (os.cpu_count() or 1) + 4)
    together, late = await asyncio.to_thread(_peak_concurrency, workers + 1, workers)
    assert together == workers  # every thread busy: the call after them got none ...
    assert late == 1  # ... and started only when one of them was free again


@pytest.mark.pitfall
@pytest.mark.pitfall
@pytest.mark.allow_blocking
async def test_pitfall_a_blocking_call_in_a_coroutine_stalls_the_heartbeat() -> None:
    async with heartbeat() as beats:
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - the blocking call this test is about
    # Not one tick for the whole call (the beats are the block's start and end, nothing between):
    # every task of the process waited that long.
    assert len(beats.beats) == 2
    assert beats.longest_gap >= BLOCK_SECONDS
