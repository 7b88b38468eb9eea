"""Background work that is neither lost, nor silent, nor cut off at shutdown.

Why a supervisor instead of a bare ``asyncio.create_task``:

- The event loop keeps only weak references to tasks. A task whose ``Task`` object nobody holds
  can be garbage-collected while it is still pending, and its work silently vanishes. The
  supervisor keeps every task in a set until it is done.
- A task that fails and is never awaited reports its error only when it is garbage-collected
  ("Task exception was never retrieved"), late, or never. The supervisor logs the failure the
  moment it happens, with the task's name, its traceback and the context variables of the code
  that spawned it (the request id, say): ``create_task`` copies the context, and the log call
  runs inside that copy, so a log formatter that reads a context variable finds the request's.
- ``asyncio.shield`` protects work from its caller's cancellation only; ``asyncio.run`` (and
  every server's shutdown) still cancels all remaining tasks when the loop ends. ``drain`` gives
  tracked work a grace period to finish before that, then cancels what is left and says what.

Own one ``TaskSupervisor`` per application, create it in the lifespan and ``await drain(grace)``
at shutdown, after the server has stopped taking requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_default_logger = logging.getLogger(__name__)


class SupervisorClosedError(RuntimeError):
    """New work was handed to a supervisor that is draining or has drained."""


@dataclass(frozen=True, slots=True)
class DrainSummary:
    """What ``drain`` did: tasks that finished in the grace period, and tasks it cancelled.

    ``stuck`` names tasks that were cancelled but had still not stopped when ``drain`` gave up
    on them (they swallow cancellation).
    """

    drained: int
    cancelled: int
    cancelled_names: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()


@dataclass(slots=True)
class _Tracked:
    name: str
    context: contextvars.Context
    # Plain values of the spawner's context variables, taken at spawn time, for the log.
    context_values: dict[str, object] = field(default_factory=dict)
    # Whether a failure must be logged: not while a caller awaits the result and gets it.
    report: bool = True


def _loggable_values(context: contextvars.Context) -> dict[str, object]:
    # Only simple values: context variables may hold sessions, clients, secrets in objects.
    plain = (str, int, float, bool)
    return {var.name: value for var, value in context.items() if isinstance(value, plain)}


class TaskSupervisor:
    """Owns background tasks: strong references, failure logging, shielding, bounded drain."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _default_logger
        self._tasks: dict[asyncio.Task[Any], _Tracked] = {}
        self._closed = False
        # Running totals for whoever watches the process (metrics read them; nothing here
        # depends on them): tasks started, tasks that failed, tasks cut off by ``drain``.
        self.started_total = 0
        self.failed_total = 0
        self.abandoned_total = 0

    @property
    def pending(self) -> int:
        """How many tracked tasks have not finished yet."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once ``drain`` has started: no new work is accepted."""
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start ``coro`` as a tracked task named ``name`` and return at once.

        A failure is logged when it happens. Once ``drain`` has started, raises
        ``SupervisorClosedError`` (closing the coroutine, so it does not warn that it was never
        awaited), unless the caller is itself a tracked task.
        """
        task, _ = self._start(coro, name)
        return task

    async def run_shielded(self, coro: Coroutine[Any, Any, T], *, name: str) -> T:
        """Run ``coro`` in a tracked task that the caller's cancellation does not stop.

        If the caller is cancelled, it still gets ``CancelledError`` at once, while the work goes
        on to the end (or until ``drain`` gives up on it). A failure after the caller left is
        logged; before that it is raised to the caller, and not logged twice.
        """
        task, tracked = self._start(coro, name)
        tracked.report = False
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                # It finished while our cancellation was on its way: report it ourselves, in
                # its context like the done callback would.
                tracked.context.run(self._log_failure, task, tracked)
            else:
                tracked.report = True
            raise

    async def drain(self, grace: float, *, cancel_wait: float = 1.0) -> DrainSummary:
        """Stop accepting work, wait up to ``grace`` seconds, then cancel and log what is left.

        Work that tracked tasks start while draining (a write that, once stored, spawns its
        notification) is waited for too, within the same ``grace``. Cancelled tasks get
        ``cancel_wait`` more seconds to unwind; any that still run are logged as stuck and left
        alone. If ``drain`` itself is cancelled, it cancels every remaining task and re-raises.
        """
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        drained = 0
        left: set[asyncio.Task[Any]] = set()
        stuck: set[asyncio.Task[Any]] = set()
        try:
            while self._tasks and (remaining := deadline - loop.time()) > 0:
                done, _ = await asyncio.wait(set(self._tasks), timeout=remaining)
                drained += len(done)
            left = set(self._tasks)
            self.abandoned_total += len(left)
            for task in left:
                self._logger.warning(
                    "background task %r still running after the %g s grace period; cancelling",
                    task.get_name(),
                    grace,
                    extra={"task": task.get_name()},
                )
                task.cancel()
            if left:
                _, stuck = await asyncio.wait(left, timeout=cancel_wait)
        except asyncio.CancelledError:
            for task in list(self._tasks):
                task.cancel()
            raise
        for task in stuck:
            self._logger.error(
                "background task %r ignored its cancellation",
                task.get_name(),
                extra={"task": task.get_name()},
            )
        return DrainSummary(
            drained=drained,
            cancelled=len(left),
            cancelled_names=tuple(sorted(task.get_name() for task in left)),
            stuck=tuple(sorted(task.get_name() for task in stuck)),
        )

    def _start(self, coro: Coroutine[Any, Any, T], name: str) -> tuple[asyncio.Task[T], _Tracked]:
        # While draining, only tracked work may start more work (it is part of what is being
        # finished); anything else is refused, so shutdown cannot be kept open from outside.
        if self._closed and asyncio.current_task() not in self._tasks:
            coro.close()
            raise SupervisorClosedError(f"cannot start {name!r}: the supervisor is draining")
        # The task runs in this copy of the caller's context; the done callback runs in it too.
        context = contextvars.copy_context()
        tracked = _Tracked(name, context, _loggable_values(context))
        task = asyncio.get_running_loop().create_task(coro, name=name, context=context)
        self._tasks[task] = tracked
        self.started_total += 1
        task.add_done_callback(self._on_done, context=context)
        return task, tracked

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        tracked = self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            self.failed_total += 1
        if tracked is not None and tracked.report:
            self._log_failure(task, tracked)

    def _log_failure(self, task: asyncio.Task[Any], tracked: _Tracked) -> None:
        if task.cancelled():
            return  # cancellation is not a failure; drain logs the tasks it cancels
        error = task.exception()
        if error is None:
            return
        self._logger.error(
            "background task %r failed: %r",
            tracked.name,
            error,
            exc_info=error,
            extra={"task": tracked.name, "context": tracked.context_values},
        )
