"""Partial fan-out: run named sources at once and keep every outcome, a value or an error.

For a page that is still useful when one section is missing, the caller wants each section's
value or its error, by name. ``asyncio.gather`` without ``return_exceptions`` raises the first
error and throws the values that did arrive away (and leaves the rest running). With
``return_exceptions=True`` it returns a list where values and errors must be told apart by
position and type, and a child's ``CancelledError`` turns up as a list item like any error.

``run_settled`` returns ``{name: Ok(value) | Failed(error)}``. It catches ``Exception`` only, so a
cancellation is never turned into a result: cancelling the caller cancels every source, waits for
them, and re-raises ``CancelledError``. ``KeyboardInterrupt`` and ``SystemExit`` also propagate.
That holds when a source raises while it is being cancelled, too: the error becomes a ``Failed``
inside the source's own task, so the task group never holds an error, which it would rank above
the caller's cancellation (the trap ``run_all`` in ``fanout.py`` has to step around).

Match on the result: ``match outcome: case Ok(value): ... case Failed(error): ...``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

T = TypeVar("T")

# A coroutine object, or a zero-argument callable that returns an awaitable.
Source: TypeAlias = Callable[[], Awaitable[T]] | Coroutine[Any, Any, T]


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """A section that produced its value."""

    value: T


@dataclass(frozen=True, slots=True)
class Failed:
    """A section that raised; ``error`` is the exception itself, traceback included."""

    error: Exception


Outcome: TypeAlias = Ok[T] | Failed


class SourceCancelledError(Exception):
    """A source was cancelled by something other than the caller of ``run_settled``."""


async def _settle(source: Source[T]) -> Outcome[T]:
    try:
        value = await (source if isinstance(source, Coroutine) else source())
    except Exception as exc:  # noqa: BLE001 - the point is to keep the error as a result
        return Failed(exc)
    return Ok(value)


async def run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:
    """Run every source concurrently; return each one's ``Ok`` or ``Failed`` by name.

    Tasks are named ``settled:<name>``. Cancelling the caller cancels all of them and the
    ``CancelledError`` propagates: it never appears in the result.
    """
    tasks: dict[str, asyncio.Task[Outcome[T]]] = {}
    # The children never raise an Exception, so the group only ends early on cancellation
    # (or KeyboardInterrupt/SystemExit), which is exactly what must propagate.
    async with asyncio.TaskGroup() as group:
        for name, source in named.items():
            tasks[name] = group.create_task(_settle(source), name=f"settled:{name}")
    outcomes: dict[str, Outcome[T]] = {}
    for name, task in tasks.items():
        if task.cancelled():
            # The caller was not cancelled (we would not be here), so someone else cancelled
            # this one source: report it as that section's failure, not as a CancelledError.
            error = SourceCancelledError(f"source {name!r} was cancelled from outside")
            outcomes[name] = Failed(error)
        else:
            outcomes[name] = task.result()
    return outcomes
