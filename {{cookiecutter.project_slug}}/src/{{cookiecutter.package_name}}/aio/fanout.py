"""All-or-nothing fan-out: run named sources at once, get every value or one clear error.

Why ``asyncio.TaskGroup`` and not ``asyncio.gather``: when one awaitable given to ``gather``
fails, ``gather`` raises at once but leaves the others running with no owner. Their work goes on
after the caller has given up, and an error they raise later is never seen by anybody. A task
group cancels the siblings as soon as one fails and waits until they have really stopped, so
nothing outlives the call.

A task group reports failures as an ``ExceptionGroup``, which callers do not want to pick apart.
``run_all`` turns it into one error: ``FanoutError`` for the first source that failed, with the
source's name and the original exception as ``cause``. A source that ran out of time gives
``FanoutTimeout``, which is also a ``TimeoutError``, so a caller can tell "too slow" (504) from
"broken" (502) with one ``except TimeoutError``. When the caller's own deadline fires around
``run_all``, the caller gets the plain ``TimeoutError`` of that deadline.

Each source runs in a task named ``fanout:<name>``, so task dumps and logs say what it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")

# A source is either a coroutine object or a zero-argument callable that returns an awaitable.
# Callables are preferred: nothing is created until the task that runs it starts.
Source: TypeAlias = Callable[[], Awaitable[T]] | Coroutine[Any, Any, T]


class FanoutError(Exception):
    """A source of the fan-out failed; ``name`` says which one and ``cause`` what happened.

    When other sources failed too (at the same moment, or while being cancelled), they are kept
    in ``others`` rather than dropped.
    """

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"fan-out source {name!r} failed: {cause!r}")
        self.name = name
        self.cause = cause
        self.others: tuple[FanoutError, ...] = ()


class FanoutTimeout(FanoutError, TimeoutError):  # noqa: N818 - it reads as what it is
    """A source of the fan-out ran out of time: a ``TimeoutError`` as well as a ``FanoutError``."""


async def _run_source(name: str, source: Source[T]) -> T:
    try:
        if isinstance(source, Coroutine):
            return await source
        return await source()
    except TimeoutError as exc:
        raise FanoutTimeout(name, exc) from exc
    except Exception as exc:
        raise FanoutError(name, exc) from exc


async def run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:
    """Run every source concurrently and return their values by name, or raise one error.

    Raises ``FanoutTimeout`` or ``FanoutError`` for the first source that failed (the others are
    cancelled and awaited before this returns). Cancelling the caller cancels every source and
    the ``CancelledError`` propagates unchanged.
    """
    tasks: dict[str, asyncio.Task[T]] = {}
    try:
        async with asyncio.TaskGroup() as group:
            for name, source in named.items():
                tasks[name] = group.create_task(_run_source(name, source), name=f"fanout:{name}")
    except* FanoutError as failures:
        # Children wrap every Exception they raise, so the group holds only FanoutErrors, in the
        # order they happened: the first is the one that made the group cancel the rest.
        first, *rest = (exc for exc in failures.exceptions if isinstance(exc, FanoutError))
        first.others = tuple(rest)
        raise first from first.cause
    results: dict[str, T] = {}
    for name, task in tasks.items():
        if task.cancelled():
            # Cancelled by someone else than this call (which would have raised above): treat
            # it as a failure of that source instead of letting a CancelledError escape, which
            # would look like the caller itself was cancelled.
            raise FanoutError(name, RuntimeError("the source was cancelled from outside"))
        results[name] = task.result()
    return results
