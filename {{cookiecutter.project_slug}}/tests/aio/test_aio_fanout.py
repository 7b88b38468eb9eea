"""All-or-nothing fan-out with a TaskGroup, and what ``gather`` or awaiting in turn do instead.

Nothing here waits a fixed time for something else to happen: sources that must be running
set an event, sources that must be cancelled wait for an event nobody sets, and the few
latencies are compared with what awaiting one source after another would take, with a wide
margin, because the suite runs on busy machines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import pytest

from {{ cookiecutter.package_name }}.aio.fanout import (
    FanoutError,
    FanoutTimeout,
    run_all,
)

STEP = 0.3  # how long a slow source takes
BOUND = 5.0  # far more than anything here needs: a broken version fails instead of hanging
LOGGER = run_all.__module__


async def _after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


class Hung:
    """Sources that run until they are cancelled, and what happened to them."""

    def __init__(self, *names: str) -> None:
        self.started = {name: asyncio.Event() for name in names}
        self.cancelled: list[str] = []
        self.tasks: list[asyncio.Task[object]] = []

    async def source(self, name: str) -> str:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.started[name].set()
        try:
            await asyncio.Event().wait()  # nothing sets it: only a cancellation ends this
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        return name

    def __getitem__(self, name: str) -> Callable[[], Awaitable[str]]:
        return partial(self.source, name)

    async def all_started(self) -> None:
        async with asyncio.timeout(BOUND):
            for event in self.started.values():
                await event.wait()

    def all_stopped(self) -> bool:
        return all(task.done() for task in self.tasks)


def close_connection() -> None:
    raise RuntimeError("cleanup failed")


class FailsWhenCancelled:
    """A source whose cleanup raises when it is cancelled, like a close that hits a dead socket."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cleaned_up = False

    async def source(self) -> str:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cleaned_up = True
            close_connection()  # raises, so this error replaces the cancellation
            raise
        return "never"


async def test_latency_is_the_slowest_source_not_the_sum() -> None:
    running = 0
    most_at_once = 0

    async def slow(value: str) -> str:
        nonlocal running, most_at_once
        running += 1
        most_at_once = max(most_at_once, running)
        await asyncio.sleep(STEP)
        running -= 1
        return value

    started = time.monotonic()
    results = await run_all(
        {
            "user": partial(slow, "u"),
            "orders": partial(slow, "o"),
            "preferences": partial(slow, "p"),
        }
    )
    elapsed = time.monotonic() - started

    assert results == {"user": "u", "orders": "o", "preferences": "p"}
    assert most_at_once == 3  # all three were in progress at once
    # One after another can never take less than 3 * STEP; at once it is STEP and overhead, and
    # the rest is room for a busy machine.
    assert elapsed < 2.5 * STEP


async def _one_after_another(named: Mapping[str, Callable[[], Awaitable[str]]]) -> dict[str, str]:
    """The naive fan-out: the same sources, each awaited when the one before it is done."""
    return {name: await source() for name, source in named.items()}


@pytest.mark.pitfall
async def test_pitfall_sequential_awaits_miss_a_deadline_each_source_meets() -> None:
    asked: list[str] = []

    async def source(name: str) -> str:
        asked.append(name)
        await asyncio.sleep(STEP)
        return name

    sources = {name: partial(source, name) for name in ("user", "orders", "preferences")}
    with pytest.raises(TimeoutError):
        # The page's budget is one and a half times what any single source needs.
        async with asyncio.timeout(1.5 * STEP):
            await _one_after_another(sources)
    # Every source would have answered in time on its own, yet the page timed out, and the last
    # one was never even asked: awaited in turn, the latencies add up.
    assert "preferences" not in asked


async def test_coroutine_objects_are_accepted_as_sources() -> None:
    assert await run_all({"user": _after(0.01, "u"), "orders": _after(0.01, "o")}) == {
        "user": "u",
        "orders": "o",
    }


async def test_sources_run_in_tasks_named_after_them() -> None:
    async def own_name() -> str:
        task = asyncio.current_task()
        assert task is not None
        return task.get_name()

    assert await run_all({"user": own_name, "orders": own_name}) == {
        "user": "fanout:user",
        "orders": "fanout:orders",
    }


async def test_first_failure_cancels_the_others_and_names_the_source() -> None:
    hung = Hung("user", "orders")

    async def fails_once_the_others_run() -> str:
        await hung.all_started()
        raise ValueError("bad json")

    with pytest.raises(FanoutError) as caught:
        async with asyncio.timeout(BOUND):
            await run_all(
                {
                    "user": hung["user"],
                    "preferences": fails_once_the_others_run,
                    "orders": hung["orders"],
                }
            )
    assert caught.value.name == "preferences"
    assert isinstance(caught.value.cause, ValueError)
    assert caught.value.__cause__ is caught.value.cause
    assert not isinstance(caught.value, TimeoutError)  # a failure (502), not a deadline (504)
    # The siblings did not outlive the call: when it raised, both had been cancelled and had
    # stopped. (Sources that only a cancellation ends cannot have stopped any other way.)
    assert sorted(hung.cancelled) == ["orders", "user"]
    assert hung.all_stopped()


async def test_a_second_failure_is_kept_not_lost() -> None:
    orders = FailsWhenCancelled()

    async def missing_user() -> str:
        await orders.started.wait()
        raise LookupError("no such user")

    with pytest.raises(FanoutError) as caught:
        async with asyncio.timeout(BOUND):
            await run_all({"orders": orders.source, "user": missing_user})
    assert caught.value.name == "user"
    assert [(other.name, type(other.cause)) for other in caught.value.others] == [
        ("orders", RuntimeError)
    ]


async def test_a_source_timeout_stays_a_timeout_error() -> None:
    async def too_slow() -> str:
        async with asyncio.timeout(0.05):
            await asyncio.Event().wait()
        return "never"

    with pytest.raises(TimeoutError) as caught:
        await run_all({"notifications": too_slow, "user": lambda: _after(0.01, "u")})
    assert isinstance(caught.value, FanoutTimeout)
    assert isinstance(caught.value, FanoutError)
    assert caught.value.name == "notifications"


async def test_the_callers_deadline_gives_a_plain_timeout_and_stops_every_source() -> None:
    hung = Hung("a", "b")

    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.1):
            await run_all({"a": hung["a"], "b": hung["b"]})
    assert not isinstance(caught.value, FanoutError)
    assert sorted(hung.cancelled) == ["a", "b"]
    assert hung.all_stopped()


async def test_the_callers_deadline_wins_over_a_source_failing_in_its_cleanup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A request deadline around the fan-out must still be a TimeoutError (504) when a source
    # fails while being cancelled, not that source's error (a 502 for a request that was slow).
    flaky = FailsWhenCancelled()
    hung = Hung("user")
    guard = asyncio.timeout(BOUND)  # in case the deadline is swallowed and the call carries on

    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(TimeoutError) as caught:
        async with guard, asyncio.timeout(0.1):
            await run_all({"orders": flaky.source, "user": hung["user"]})
    assert not guard.expired()  # the caller's own deadline ended the call
    assert flaky.cleaned_up  # the cleanup really ran, and raised, during the cancellation
    assert hung.cancelled == ["user"]
    assert not isinstance(caught.value, FanoutError)
    # The failure is not dropped: it is logged and chained to the cancellation.
    cancellation = caught.value.__cause__
    assert isinstance(cancellation, asyncio.CancelledError)
    failures = cancellation.__context__
    assert isinstance(failures, BaseExceptionGroup)
    kept = [error for error in failures.exceptions if isinstance(error, FanoutError)]
    assert [(error.name, type(error.cause)) for error in kept] == [("orders", RuntimeError)]
    assert [record.getMessage() for record in caplog.records if record.name == LOGGER] == [
        "fan-out sources failed while the caller was cancelled: orders"
    ]


async def test_cancelling_the_caller_wins_over_a_source_failing_in_its_cleanup() -> None:
    # A server shutdown cancels the request's task: it must end cancelled, whatever the
    # sources raise on the way out, or the shutdown waits on a task that carries on.
    flaky = FailsWhenCancelled()
    hung = Hung("user")
    caller = asyncio.create_task(run_all({"orders": flaky.source, "user": hung["user"]}))
    await flaky.started.wait()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        # Bounded: a version that swallows the cancellation would carry on with its sources.
        async with asyncio.timeout(BOUND):
            await caller
    assert caller.cancelled()
    assert flaky.cleaned_up
    assert hung.cancelled == ["user"]


async def test_cancelling_the_caller_cancels_every_source() -> None:
    hung = Hung("a", "b")
    caller = asyncio.create_task(run_all({"a": hung["a"], "b": hung["b"]}))
    await hung.all_started()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(hung.cancelled) == ["a", "b"]
    assert hung.all_stopped()


@pytest.mark.pitfall
async def test_pitfall_gather_leaves_the_others_running_and_loses_a_later_error() -> None:
    events: list[str] = []
    release = asyncio.Event()

    async def keeps_going() -> str:
        await release.wait()
        events.append("kept running after gather raised")
        return "done"

    async def fails_later() -> str:
        await release.wait()
        raise LookupError("this error reaches nobody")

    async def fails_now() -> str:
        raise ValueError("first")

    orphan = asyncio.create_task(keeps_going())
    second_failure = asyncio.create_task(fails_later())
    with pytest.raises(ValueError, match="first"):
        await asyncio.gather(fails_now(), orphan, second_failure)
    # gather has returned control to the caller, yet its other children still run, unowned.
    assert not orphan.done()
    assert not second_failure.done()
    release.set()
    await asyncio.wait([orphan, second_failure])
    assert events == ["kept running after gather raised"]
    # The later error exists only inside a task that no caller awaits: gather never raised it.
    assert isinstance(second_failure.exception(), LookupError)
