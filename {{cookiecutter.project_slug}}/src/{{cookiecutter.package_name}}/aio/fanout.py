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

The caller's cancellation always wins. A task group ranks its children's errors above the
cancellation of the task that runs it: if the caller is cancelled (its deadline, a server
shutdown) and a source's cleanup raises while being cancelled, the group raises that error and
the cancellation is gone. A deadline around ``run_all`` would then see a ``FanoutError`` (a 502
instead of a 504) and a shutdown would not stop the caller. ``run_all`` checks whether its task
still has a cancellation pending after the group and, if so, raises ``CancelledError``.

Each source runs in a task named ``fanout:<name>``, so task dumps and logs say what it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

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
    raises ``CancelledError``, even when sources fail while they are being cancelled.
    """
    caller = asyncio.current_task()
    if caller is None:
        raise RuntimeError("run_all must be awaited from inside an asyncio task")
    # Cancellation requests of the caller that were already pending are not ours to judge.
    pending_at_start = caller.cancelling()
    tasks: dict[str, asyncio.Task[T]] = {}
    try:
        async with asyncio.TaskGroup() as group:
            for name, source in named.items():
                tasks[name] = group.create_task(_run_source(name, source), name=f"fanout:{name}")
            if tasks:
                # Wait here, not only in the group's exit. On the first failure the group cancels
                # this task to interrupt the body. Landing here, that cancellation is withdrawn
                # again on every Python; landing in the exit, 3.11 and 3.12 (3.12.1 checked)
                # leave it counted in ``cancelling()``, where it would pass for the caller's.
                await asyncio.wait(tasks.values())
    except* FanoutError as failures:
        if caller.cancelling() > pending_at_start:
            # The caller is being cancelled: that must reach it whatever the sources did.
            # ``asyncio.timeout`` turns only a ``CancelledError`` into its ``TimeoutError`` (on
            # 3.11 and 3.12 not even a subclass of it), and a shutdown must stop the task. The
            # failures are logged because nothing else shows them: a deadline's handler seldom
            # logs the chain and a cancelled task ends silently. They also stay attached as the
            # ``__context__`` of the ``CancelledError``, for a debugger or a test.
            names = sorted({error.name for error in _fanout_errors(failures)})
            logger.exception(
                "fan-out sources failed while the caller was cancelled: %s", ", ".join(names)
            )
            raise asyncio.CancelledError  # noqa: B904 - context, not the cause of the cancel
        # Children wrap every Exception they raise, so the group holds only FanoutErrors, in the
        # order they happened: the first is the one that made the group cancel the rest.
        first, *rest = _fanout_errors(failures)
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


def _fanout_errors(failures: BaseExceptionGroup[FanoutError]) -> list[FanoutError]:
    return [exc for exc in failures.exceptions if isinstance(exc, FanoutError)]
