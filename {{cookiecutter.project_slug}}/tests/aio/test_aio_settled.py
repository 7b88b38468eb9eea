"""Partial fan-out: every section's value or error, and what ``gather`` throws away.

Sources that must be running set an event, sources that must be cancelled wait for an event
nobody sets: nothing here waits a fixed time for something else to happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from {{ cookiecutter.package_name }}.aio.settled import (
    Failed,
    Ok,
    SourceCancelledError,
    run_settled,
)

BOUND = 2.0  # far more than anything here needs: a broken version fails instead of hanging


async def _after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


async def _fail_after(seconds: float, error: Exception) -> str:
    await asyncio.sleep(seconds)
    raise error


class Hung:
    """Sources that run until they are cancelled, and what happened to them."""

    def __init__(self, *names: str) -> None:
        self.started = {name: asyncio.Event() for name in names}
        self.cancelled: list[str] = []

    async def source(self, name: str) -> str:
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


async def test_every_section_is_reported_by_name() -> None:
    # Each section first waits until all four have started. Run one after another, the first
    # would wait there alone until BOUND and fail: this passes only if they run at once.
    everyone = asyncio.Barrier(4)

    async def section(result: str | Exception) -> str:
        async with asyncio.timeout(BOUND):
            await everyone.wait()
        if isinstance(result, Exception):
            raise result
        return result

    outcomes = await run_settled(
        {
            "user": partial(section, "alice"),
            "preferences": partial(section, ValueError("bad json")),
            "notifications": partial(section, ConnectionError("reset")),
            "orders": partial(section, "3 orders"),
        }
    )
    assert outcomes["user"] == Ok("alice")
    assert outcomes["orders"] == Ok("3 orders")
    # Both errors are kept, each under its section's name, as the exceptions themselves.
    preferences = outcomes["preferences"]
    notifications = outcomes["notifications"]
    assert isinstance(preferences, Failed)
    assert isinstance(preferences.error, ValueError)
    assert preferences.error.__traceback__ is not None
    assert isinstance(notifications, Failed)
    assert isinstance(notifications.error, ConnectionError)


async def test_results_can_be_matched() -> None:
    # Coroutine objects are accepted as well as callables.
    outcomes = await run_settled({"a": _after(0, "x"), "b": _fail_after(0, KeyError("k"))})
    rendered: dict[str, str] = {}
    for name, outcome in outcomes.items():
        match outcome:
            case Ok(value):
                rendered[name] = str(value)
            case Failed(error):
                rendered[name] = f"error: {type(error).__name__}"
    assert rendered == {"a": "x", "b": "error: KeyError"}


async def test_sources_run_in_named_tasks() -> None:
    async def own_name() -> str:
        task = asyncio.current_task()
        assert task is not None
        return task.get_name()

    assert await run_settled({"user": own_name}) == {"user": Ok("settled:user")}


async def test_cancelling_the_caller_cancels_the_sources_and_is_never_a_result() -> None:
    hung = Hung("a", "b")
    caller = asyncio.create_task(
        run_settled({"a": hung["a"], "b": hung["b"], "c": lambda: _after(0, "c")})
    )
    await hung.all_started()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(hung.cancelled) == ["a", "b"]


async def test_the_callers_deadline_wins_over_a_source_failing_in_its_cleanup() -> None:
    # The source's error becomes its Failed inside its own task, so the caller's deadline is
    # still a TimeoutError and not that error (a 502 or 500 for a request that was only slow).
    flaky = FailsWhenCancelled()
    hung = Hung("user")
    guard = asyncio.timeout(BOUND)  # in case the deadline is swallowed and the call carries on

    with pytest.raises(TimeoutError) as caught:
        async with guard, asyncio.timeout(0.1):
            await run_settled({"orders": flaky.source, "user": hung["user"]})
    assert not guard.expired()  # the caller's own deadline ended the call
    assert flaky.cleaned_up  # the cleanup really ran, and raised, during the cancellation
    assert hung.cancelled == ["user"]
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


async def test_cancelling_the_caller_wins_over_a_source_failing_in_its_cleanup() -> None:
    # A server shutdown cancels the request's task: it must end cancelled.
    flaky = FailsWhenCancelled()
    hung = Hung("user")
    caller = asyncio.create_task(run_settled({"orders": flaky.source, "user": hung["user"]}))
    await flaky.started.wait()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        # Bounded: a version that swallows the cancellation would carry on with its sources.
        async with asyncio.timeout(BOUND):
            await caller
    assert caller.cancelled()
    assert flaky.cleaned_up
    assert hung.cancelled == ["user"]


async def test_a_source_cancelled_from_elsewhere_is_a_failure_not_a_cancellation() -> None:
    async def cancels_itself() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)
        return "never"

    outcomes = await run_settled({"odd": cancels_itself, "user": lambda: _after(0.01, "u")})
    assert outcomes["user"] == Ok("u")
    odd = outcomes["odd"]
    assert isinstance(odd, Failed)
    assert isinstance(odd.error, SourceCancelledError)


@pytest.mark.pitfall
async def test_pitfall_gather_without_return_exceptions_throws_the_results_away() -> None:
    user_answered = asyncio.Event()
    release = asyncio.Event()

    async def user() -> str:
        user_answered.set()
        return "alice"

    async def preferences() -> str:
        await user_answered.wait()
        raise ValueError("bad json")

    async def orders() -> str:
        await release.wait()
        return "orders"

    slow_section = asyncio.create_task(orders())
    outcome: tuple[str, str, str] | None = None
    with pytest.raises(ValueError, match="bad json"):
        outcome = await asyncio.gather(user(), preferences(), slow_section)
    # "alice" arrived before the error, but the caller has no list to find it in.
    assert outcome is None
    # And the section that was still running was left running, owned by nobody.
    assert not slow_section.done()
    release.set()
    assert await slow_section == "orders"


@pytest.mark.pitfall
async def test_pitfall_gather_return_exceptions_turns_a_cancellation_into_a_result() -> None:
    async def cancels_itself() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)
        return "never"

    results = await asyncio.gather(cancels_itself(), _after(0, "u"), return_exceptions=True)
    # A CancelledError handed back as a plain list item, easy to mistake for a normal error.
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == "u"
