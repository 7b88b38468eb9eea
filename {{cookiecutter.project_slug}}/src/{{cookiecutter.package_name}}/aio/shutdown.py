"""One time budget for the whole shutdown, and a watchdog that keeps the promise.

An orchestrator sends SIGTERM, waits its grace period, then sends SIGKILL. Everything the service
does after SIGTERM must fit in that window: letting requests in flight finish, draining background
work, closing pools. When each step gets "the grace" of its own, the steps add up (the server's
grace, then the drain's grace, then the pool's close) and the SIGKILL lands in the middle of the
drain, which is the work the drain was meant to save.

``ShutdownBudget`` is one deadline, started by the first signal (or, without a server, by the
first step that asks), which every later step reads: the server gets all of it for requests,
the drain gets what is left. ``ExitWatchdog`` is the backstop for what no asyncio code can stop:
a thread stuck in a blocking call, a task that swallows its cancellation, a close that hangs.
When the budget and a margin are spent, it ends the process from a thread of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

_default_logger = logging.getLogger(__name__)


class ShutdownBudget:
    """``seconds`` for the whole shutdown, counted from the first call to ``start``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._started_at: float | None = None

    @property
    def started(self) -> bool:
        return self._started_at is not None

    def start(self) -> None:
        """Start counting, once: a second signal does not extend the budget."""
        if self._started_at is None:
            self._started_at = self._clock()

    def remaining(self) -> float:
        """Seconds left, never negative. Starts the budget if nothing has started it yet."""
        if self._started_at is None:
            self._started_at = self._clock()
        return max(0.0, self._started_at + self.seconds - self._clock())


class ExitWatchdog:
    """End the process with ``exit_code`` if it is still alive ``seconds`` after ``arm``.

    It runs in a daemon thread and calls ``os._exit``, which needs neither the event loop nor
    the interpreter's orderly shutdown: both may be what is stuck. The log line goes out first,
    so the operator learns why the process ended the hard way. Arming twice keeps the first
    timer. It is never disarmed: once the server has returned, the process has nothing left
    to do but exit, and a daemon thread does not hold that up.
    """

    def __init__(
        self,
        seconds: float,
        *,
        exit_code: int = 0,
        logger: logging.Logger | None = None,
        exit_now: Callable[[int], object] = os._exit,
    ) -> None:
        self.seconds = seconds
        self.exit_code = exit_code
        self._logger = logger or _default_logger
        self._exit_now = exit_now
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.name = "exit-watchdog"
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self._logger.error(
            "shutdown did not finish within %g s: ending the process now", self.seconds
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit_now(self.exit_code)
