"""Partial fan-out: every section's value or error, and what ``gather`` throws away."""

from __future__ import annotations

import asyncio
import time

import pytest

from {{ cookiecutter.package_name }}.aio.settled import (
    Failed,
    Ok,
    SourceCancelledError,
    run_settled,
)


async def _after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


async def _fail_after(seconds: float, error: Exception) -> str:
    await asyncio.sleep(seconds)
    raise error


async def test_every_section_is_reported_by_name() -> None:
    started = time.monotonic()
    outcomes = await run_settled(
        {
            "user": lambda: _after(0.1, "alice"),
            "preferences": lambda: _fail_after(0.02, ValueError("bad json")),
            "notifications": lambda: _fail_after(0.05, ConnectionError("reset")),
            "orders": lambda: _after(0.15, "3 orders"),
        }
    )
    assert time.monotonic() - started < 0.6  # concurrent, not one after another
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
    cancelled: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    caller = asyncio.create_task(
        run_settled({"a": lambda: slow("a"), "b": lambda: slow("b"), "c": lambda: _after(0, "c")})
    )
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(cancelled) == ["a", "b"]


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
    slow_section = asyncio.create_task(_after(0.2, "orders"))
    outcome: tuple[str, str, str] | None = None
    with pytest.raises(ValueError, match="bad json"):
        outcome = await asyncio.gather(
            _after(0.01, "alice"),
            _fail_after(0.05, ValueError("bad json")),
            slow_section,
        )
    # "alice" arrived before the error, but the caller has no list to find it in.
    assert outcome is None
    # And the section that was still running was left running, owned by nobody.
    assert not slow_section.done()
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
