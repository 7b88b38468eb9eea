"""All-or-nothing fan-out with a TaskGroup, and what plain ``gather`` does instead."""

from __future__ import annotations

import asyncio
import time

import pytest

from {{ cookiecutter.package_name }}.aio.fanout import (
    FanoutError,
    FanoutTimeout,
    run_all,
)


async def _after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


async def _fail_after(seconds: float, error: Exception) -> str:
    await asyncio.sleep(seconds)
    raise error


async def test_latency_is_the_slowest_source_not_the_sum() -> None:
    started = time.monotonic()
    results = await run_all(
        {
            "user": lambda: _after(0.2, "u"),
            "orders": lambda: _after(0.2, "o"),
            "preferences": lambda: _after(0.2, "p"),
        }
    )
    elapsed = time.monotonic() - started
    assert results == {"user": "u", "orders": "o", "preferences": "p"}
    assert elapsed < 0.5  # sequential awaits would need at least 0.6 s


@pytest.mark.pitfall
async def test_pitfall_sequential_awaits_add_up() -> None:
    started = time.monotonic()
    results = [await _after(0.2, "u"), await _after(0.2, "o"), await _after(0.2, "p")]
    assert results == ["u", "o", "p"]
    assert time.monotonic() - started >= 0.6


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
    observed: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            observed.append(f"{name} cancelled")
            raise
        return name

    started = time.monotonic()
    with pytest.raises(FanoutError) as caught:
        await run_all(
            {
                "user": lambda: slow("user"),
                "preferences": lambda: _fail_after(0.05, ValueError("bad json")),
                "orders": lambda: slow("orders"),
            }
        )
    assert time.monotonic() - started < 1.0
    assert caught.value.name == "preferences"
    assert isinstance(caught.value.cause, ValueError)
    assert caught.value.__cause__ is caught.value.cause
    assert not isinstance(caught.value, TimeoutError)  # a failure (502), not a deadline (504)
    # The siblings did not outlive the call: they were cancelled and had stopped on return.
    assert sorted(observed) == ["orders cancelled", "user cancelled"]


async def test_a_second_failure_is_kept_not_lost() -> None:
    def close_connection() -> None:
        raise RuntimeError("cleanup failed")

    async def fails_while_cancelled() -> str:
        try:
            await asyncio.sleep(5)
        finally:
            close_connection()  # runs when cancelled, and fails
        return "never"

    with pytest.raises(FanoutError) as caught:
        await run_all(
            {
                "orders": fails_while_cancelled,
                "user": lambda: _fail_after(0.05, LookupError("no such user")),
            }
        )
    assert caught.value.name == "user"
    assert [(other.name, type(other.cause)) for other in caught.value.others] == [
        ("orders", RuntimeError)
    ]


async def test_a_source_timeout_stays_a_timeout_error() -> None:
    async def too_slow() -> str:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
        return "never"

    with pytest.raises(TimeoutError) as caught:
        await run_all({"notifications": too_slow, "user": lambda: _after(0.01, "u")})
    assert isinstance(caught.value, FanoutTimeout)
    assert isinstance(caught.value, FanoutError)
    assert caught.value.name == "notifications"


async def test_the_callers_deadline_gives_a_plain_timeout_and_stops_every_source() -> None:
    cancelled: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.1):
            await run_all({"a": lambda: slow("a"), "b": lambda: slow("b")})
    assert time.monotonic() - started < 1.0
    assert not isinstance(caught.value, FanoutError)
    assert sorted(cancelled) == ["a", "b"]


async def test_cancelling_the_caller_cancels_every_source() -> None:
    cancelled: list[str] = []

    async def slow(name: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    caller = asyncio.create_task(run_all({"a": lambda: slow("a"), "b": lambda: slow("b")}))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(cancelled) == ["a", "b"]


@pytest.mark.pitfall
async def test_pitfall_gather_leaves_the_others_running_and_loses_a_later_error() -> None:
    events: list[str] = []

    async def keeps_going() -> str:
        await asyncio.sleep(0.2)
        events.append("kept running after gather raised")
        return "done"

    async def fails_later() -> str:
        await asyncio.sleep(0.2)
        raise LookupError("this error reaches nobody")

    first = asyncio.create_task(_fail_after(0.02, ValueError("first")))
    orphan = asyncio.create_task(keeps_going())
    second_failure = asyncio.create_task(fails_later())
    with pytest.raises(ValueError, match="first"):
        await asyncio.gather(first, orphan, second_failure)
    # gather has returned control to the caller, yet its other children still run, unowned.
    assert not orphan.done()
    assert not second_failure.done()
    await asyncio.wait([orphan, second_failure])
    assert events == ["kept running after gather raised"]
    # The later error exists only inside a task that no caller awaits: gather never raised it.
    assert isinstance(second_failure.exception(), LookupError)
