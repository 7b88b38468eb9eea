"""See what a stuck asyncio process is doing: task dumps, signal handlers, loop-lag heartbeat.

Why each piece:

- ``Task.print_stack`` shows one frame of a suspended coroutine, which rarely says why it waits.
  ``dump_tasks`` follows the chain of awaits (``cr_await``) from the task's coroutine down to the
  innermost frame and names the task it waits for, if any. With loop debug mode on it adds where
  each task was created; on Python 3.14+ it adds ``asyncio.format_call_graph``, which also shows
  who awaits the task.
- ``loop.add_signal_handler`` callbacks run on the loop, so they cannot run while the loop is
  blocked, the one moment a dump matters most. ``install_signal_dumps`` therefore wires two
  signals: SIGUSR1 logs the task dump (the loop must be alive), SIGUSR2 makes ``faulthandler``
  write every thread's Python stack from C, at once, even while the loop is stuck in a blocking
  call.
- ``loop.slow_callback_duration`` only reports in debug mode, which is too costly for production.
  ``LoopLagMonitor`` is a cheap heartbeat: a task that sleeps for ``interval`` and measures how
  late it wakes up. Lag is every request's added latency; a spike names a blocking call or a long
  garbage-collection pause. ``enable_asyncio_debug`` is for development and tests.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from types import FrameType
from typing import IO, Any, Literal, TypedDict

_default_logger = logging.getLogger(__name__)


class FrameInfo(TypedDict):
    """One frame: ``file:line`` and the function running there."""

    file: str
    line: int
    function: str


class TaskInfo(TypedDict):
    """One task of the dump, as plain data (JSON-ready)."""

    name: str
    coroutine: str
    state: Literal["pending", "done", "cancelled", "failed"]
    error: str | None
    # The chain of awaits, outermost first: the task's coroutine, what it awaits, and so on.
    awaiting: list[FrameInfo]
    # What the innermost frame waits on: "task 'name'" for another task, else the future's type.
    waiting_on: str | None
    # Where the task was created: only when the loop was in debug mode at creation.
    created_at: list[FrameInfo]
    # asyncio.format_call_graph output on Python 3.14+, None before.
    call_graph: str | None


def _frame_info(frame: FrameType) -> FrameInfo:
    return {
        "file": frame.f_code.co_filename,
        "line": frame.f_lineno or 0,
        "function": frame.f_code.co_name,
    }


def _await_chain(coro: object) -> list[FrameInfo]:
    # Coroutines expose cr_frame/cr_await, generator-based ones gi_frame/gi_yieldfrom, async
    # generators ag_frame/ag_await. A C-level awaitable (a future's iterator) ends the chain.
    chain: list[FrameInfo] = []
    current: object = coro
    for _ in range(200):  # a guard against pathological self-referencing awaitables
        if current is None:
            break
        frame: FrameType | None = None
        for attr in ("cr_frame", "gi_frame", "ag_frame"):
            frame = getattr(current, attr, None)
            if frame is not None:
                break
        if frame is not None:
            chain.append(_frame_info(frame))
        following = None
        for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
            following = getattr(current, attr, None)
            if following is not None:
                break
        current = following
    return chain


def _waiting_on(task: asyncio.Task[Any]) -> str | None:
    # ``_fut_waiter`` (the future the task is suspended on) is private but has existed in both
    # the C and the Python Task since asyncio began; read it defensively.
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None:
        return None
    if isinstance(waiter, asyncio.Task):
        return f"task {waiter.get_name()!r}"
    return type(waiter).__name__


def _created_at(task: asyncio.Task[Any]) -> list[FrameInfo]:
    summary: Iterable[traceback.FrameSummary] | None = getattr(task, "_source_traceback", None)
    if not summary:
        return []
    return [
        {"file": entry.filename, "line": entry.lineno or 0, "function": entry.name}
        for entry in summary
    ]


def _call_graph(task: asyncio.Task[Any]) -> str | None:
    formatter: Callable[..., str] | None = getattr(asyncio, "format_call_graph", None)
    if formatter is None:
        return None
    try:
        return formatter(task)
    except Exception as exc:  # noqa: BLE001 - a dump must not fail because of one task
        return f"<call graph unavailable: {exc!r}>"


def task_info(task: asyncio.Task[Any]) -> TaskInfo:
    """Describe one task: name, coroutine, state, chain of awaits, creation point."""
    coro = task.get_coro()
    state: Literal["pending", "done", "cancelled", "failed"] = "pending"
    error: str | None = None
    if task.cancelled():
        state = "cancelled"
    elif task.done():
        exc = task.exception()
        state = "failed" if exc is not None else "done"
        error = repr(exc) if exc is not None else None
    return {
        "name": task.get_name(),
        "coroutine": getattr(coro, "__qualname__", type(coro).__name__),
        "state": state,
        "error": error,
        "awaiting": _await_chain(coro) if not task.done() else [],
        "waiting_on": _waiting_on(task) if not task.done() else None,
        "created_at": _created_at(task),
        "call_graph": _call_graph(task) if not task.done() else None,
    }


def dump_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[TaskInfo]:
    """Describe every unfinished task of ``loop`` (default: the running loop), sorted by name."""
    tasks = asyncio.all_tasks(loop)
    return [task_info(task) for task in sorted(tasks, key=lambda task: task.get_name())]


def _format_frame(frame: FrameInfo) -> str:
    return f"{frame['file']}:{frame['line']} in {frame['function']}"


def format_task_dump(infos: list[TaskInfo]) -> str:
    """Render ``dump_tasks()`` output as text for a log line or a terminal."""
    lines = [f"{len(infos)} asyncio task(s)"]
    for info in infos:
        lines.append(f"Task {info['name']!r} [{info['state']}] coroutine={info['coroutine']}")
        if info["error"]:
            lines.append(f"  error: {info['error']}")
        lines.extend(f"  {_format_frame(frame)}" for frame in info["awaiting"])
        if info["waiting_on"]:
            lines.append(f"  waiting on: {info['waiting_on']}")
        if info["created_at"]:
            lines.append("  created at:")
            lines.extend(f"    {_format_frame(frame)}" for frame in info["created_at"])
    return "\n".join(lines)


def install_signal_dumps(
    loop: asyncio.AbstractEventLoop,
    logger: logging.Logger | None = None,
    *,
    file: IO[Any] | None = None,
) -> Callable[[], None]:
    """SIGUSR1: log the task dump (from the loop). SIGUSR2: faulthandler stacks (at once).

    ``file`` is where faulthandler writes (default ``sys.stderr``; it must have a real file
    descriptor). Call from the loop's thread, the main thread. Any SIGUSR1 handler of the loop is
    replaced. Returns a function that removes both handlers and puts back the SIGUSR1 handler
    that was set with ``signal.signal`` before. On platforms without these signals it does
    nothing.
    """
    if not hasattr(signal, "SIGUSR1"):  # Windows
        return lambda: None
    log = logger or _default_logger

    def dump() -> None:
        infos = dump_tasks(loop)
        log.warning(
            "asyncio task dump (SIGUSR1)\n%s",
            format_task_dump(infos),
            extra={"task_count": len(infos)},
        )

    # faulthandler first: it is the one that can fail (a stream without a file descriptor).
    faulthandler.register(signal.SIGUSR2, file=file or sys.stderr, all_threads=True)
    previous = signal.getsignal(signal.SIGUSR1)
    loop.add_signal_handler(signal.SIGUSR1, dump)

    def uninstall() -> None:
        faulthandler.unregister(signal.SIGUSR2)
        loop.remove_signal_handler(signal.SIGUSR1)
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)

    return uninstall


def enable_asyncio_debug(
    loop: asyncio.AbstractEventLoop, slow_callback_seconds: float = 0.1
) -> None:
    """Turn on asyncio debug mode: slow-callback warnings, creation tracebacks, extra checks.

    Costly: for development and tests. Production watches lag with ``LoopLagMonitor``.
    """
    loop.set_debug(True)
    loop.slow_callback_duration = slow_callback_seconds


class LoopLagMonitor:
    """A heartbeat that measures how late the event loop wakes a sleeping task.

    Every ``interval`` seconds it records the lag (actual wake-up minus planned wake-up) in
    ``current_lag`` and the largest seen in ``peak_lag``, and logs a warning when a lag reaches
    ``threshold``. Also an async context manager.
    """

    def __init__(
        self,
        interval: float = 0.1,
        threshold: float = 0.1,
        logger: logging.Logger | None = None,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        # Called with every lag measured (a metrics histogram, say); it runs on the loop, so it
        # must be quick and must not raise.
        self._on_sample = on_sample
        self._logger = logger or _default_logger
        self._task: asyncio.Task[None] | None = None
        self.current_lag = 0.0
        self.peak_lag = 0.0

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the heartbeat task (named ``loop-lag-monitor``) on the running loop."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Stop the heartbeat and wait until it has stopped."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() neither raises the task's CancelledError nor swallows our caller's own.
        await asyncio.wait([task])

    async def __aenter__(self) -> LoopLagMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - planned)
            self.current_lag = lag
            self.peak_lag = max(self.peak_lag, lag)
            if self._on_sample is not None:
                self._on_sample(lag)
            if lag >= self.threshold:
                self._logger.warning(
                    "event loop lag %.3f s (something blocked the loop)",
                    lag,
                    extra={"loop_lag": round(lag, 4)},
                )
