"""The dispatcher: sends what the outbox holds, retries with backoff, gives up loudly.

Two ways a message leaves:

- ``deliver(id)``, right after the commit that wrote it, in a task of the supervisor: the first
  attempt costs the request nothing (the response does not wait for it) and adds no delay.
- the polling loop, which every ``poll_interval`` claims due messages in batches: retries, and
  whatever the process that wrote them could not send (it crashed, or shut down mid-send).

Every attempt runs under its own deadline (``UPSTREAM_TIMEOUT``). A failure schedules the next
attempt after a random delay between zero and ``retry_base * 2**(attempt - 1)`` (capped): full
jitter, so messages that failed together during an outage do not come back as one wave when it
ends. After ``max_attempts`` a message is ``dead``: logged as an error and kept for an operator.

Delivery is at least once. A process killed after the remote side accepted a message but before
it recorded that (or a send that outlives its lease) sends it again later; receivers deduplicate
on the payload's ids (``order_id``). In normal operation, with any number of replicas, each
message is sent once.

Own one per process: ``start()`` it in the lifespan and ``await stop(grace)`` at shutdown, or use
it as an async context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.session import transaction
from ..logs import request_id_var
{%- if cookiecutter.tracing == "opentelemetry" %}
from ..observability.tracing import trace_context_of
{%- endif %}
from ..settings import Settings
from .models import DEAD
from .store import Claimed, claim_due, claim_one, mark_delivered, mark_failed, purge_delivered

# Sends one payload; raises on failure. (``Upstreams.notify``, for the order notification.)
Sender = Callable[[dict[str, Any]], Awaitable[object]]
# Deletes up to ``limit`` expired rows in the session's transaction; returns how many it did.
CleanupJob = Callable[[AsyncSession, int], Awaitable[int]]

CLEANUP_BATCH = 1000
# A lease must outlast an attempt and the recording of its outcome, or a slow send is claimed
# again by another dispatcher and sent twice: it is never shorter than the attempt plus this.
LEASE_MARGIN = 1.0
# How long a stopping dispatcher waits for its cancelled round to unwind.
CANCEL_WAIT = 1.0

_default_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """How the dispatcher polls, retries and cleans up (durations in seconds)."""

    attempt_timeout: float
    poll_interval: float = 1.0
    batch_size: int = 20
    lease: float = 30.0
    max_attempts: int = 20
    retry_base: float = 1.0
    retry_cap: float = 600.0
    retention: float = 86400.0
    cleanup_interval: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            attempt_timeout=settings.upstream_timeout,
            poll_interval=settings.outbox_poll_interval,
            batch_size=settings.outbox_batch_size,
            lease=max(settings.outbox_lease, settings.upstream_timeout + LEASE_MARGIN),
            max_attempts=settings.outbox_max_attempts,
            retry_base=settings.outbox_retry_base,
            retry_cap=settings.outbox_retry_cap,
            retention=settings.outbox_retention,
            cleanup_interval=settings.outbox_cleanup_interval,
        )


def retry_delay(attempts: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failure: exponential backoff, full jitter.

    The ceiling doubles with each failure (``base``, ``2 * base``, ``4 * base``, ...) up to
    ``cap``; the delay is drawn uniformly below it.
    """
    ceiling = min(cap, base * 2.0 ** min(attempts - 1, 64))
    return rng.uniform(0.0, ceiling)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OutboxDispatcher:
    """Delivers outbox messages through ``senders`` (one per topic)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        senders: Mapping[str, Sender],
        policy: DispatchPolicy,
        *,
        cleanup_jobs: Sequence[CleanupJob] = (),
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._senders = dict(senders)
        self.policy = policy
        self._cleanup_jobs = tuple(cleanup_jobs)
        self._logger = logger or _default_logger
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # What this process did, for metrics: sends that landed, failed sends scheduled again,
        # and messages set aside as dead (how many wait in the table: ``count_by_status``).
        self.delivered_total = 0
        self.retried_total = 0
        self.dead_total = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the polling loop (once). Its first round, one poll interval later, sends
        whatever is due: the messages a previous process left behind included."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="outbox-dispatcher"
            )

    async def stop(self, grace: float) -> None:
        """Stop polling; let the round in flight finish within ``grace`` seconds, then cancel it.

        Cancelling loses nothing: a message whose send was cut stays claimed until its lease
        ends, then any dispatcher (this process after a restart, or another replica) sends it.
        """
        self._stopping.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            _, pending = await asyncio.wait({task}, timeout=grace)
            if pending:
                self._logger.warning(
                    "outbox dispatcher still sending after %g s; cancelling it (the messages "
                    "it held are sent again once their lease ends)",
                    grace,
                )
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_WAIT)
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A round is bounded by one attempt's deadline plus two short transactions.
        await self.stop(self.policy.attempt_timeout + 1.0)

    # -- sending ------------------------------------------------------------------------------

    async def deliver(self, message_id: int) -> bool:
        """Send one message now, if it is due and nobody else holds it: the first attempt, made
        right after the commit that wrote the message. True if this call delivered it."""
        async with transaction(self._sessionmaker) as session:
            claimed = await claim_one(session, message_id, lease=self.policy.lease)
        if claimed is None:
            return False
        return await self._attempt(claimed)

    async def dispatch_due(self) -> int:
        """Claim one batch of due messages and send them at once; return how many were claimed."""
        async with transaction(self._sessionmaker) as session:
            batch = await claim_due(session, limit=self.policy.batch_size, lease=self.policy.lease)
        if batch:
            # Each attempt records its own outcome and never raises: one bad message does not
            # cancel the others' sends.
            async with asyncio.TaskGroup() as group:
                for claimed in batch:
                    group.create_task(self._attempt(claimed), name=f"outbox-send:{claimed.id}")
        return len(batch)

    async def _attempt(self, claimed: Claimed) -> bool:
{%- if cookiecutter.tracing == "opentelemetry" %}
        # Every attempt, the first one right after the commit and each retry from the poller
        # (of this process or another replica, after a restart too), continues the trace of
        # the request that wrote the message: its context is stored in the row.
        with trace_context_of(claimed.trace_context):
            return await self._attempt_in_trace(claimed)

    async def _attempt_in_trace(self, claimed: Claimed) -> bool:
{%- endif %}
        # The request that wrote the message: on the log lines of its delivery, and for whatever
        # reads the current request id while sending.
        token = request_id_var.set(claimed.request_id)
        try:
            error = await self._send(claimed)
            try:
                if error is None:
                    async with transaction(self._sessionmaker) as session:
                        await mark_delivered(session, claimed.id)
                    self.delivered_total += 1
                else:
                    await self._record_failure(claimed, error)
            except Exception as record_error:  # noqa: BLE001 - logged; the lease brings it back
                self._logger.warning(
                    "could not record the outcome of outbox message %d (%s); it is retried "
                    "when its lease ends",
                    claimed.id,
                    _describe(record_error),
                    extra={"outbox_id": claimed.id, "topic": claimed.topic},
                )
            return error is None
        finally:
            request_id_var.reset(token)

    async def _send(self, claimed: Claimed) -> Exception | None:
        sender = self._senders.get(claimed.topic)
        if sender is None:
            return LookupError(f"no sender for topic {claimed.topic!r}")
        try:
            async with asyncio.timeout(self.policy.attempt_timeout):
                await sender(claimed.payload)
        except Exception as error:  # noqa: BLE001 - a failed send is an outcome: recorded, retried
            return error
        return None

    async def _record_failure(self, claimed: Claimed, error: Exception) -> None:
        retry_in = retry_delay(
            claimed.attempts, base=self.policy.retry_base, cap=self.policy.retry_cap, rng=self._rng
        )
        async with transaction(self._sessionmaker) as session:
            status = await mark_failed(
                session,
                claimed,
                error=_describe(error),
                retry_in=retry_in,
                max_attempts=self.policy.max_attempts,
            )
        extra = {"outbox_id": claimed.id, "topic": claimed.topic, "attempt": claimed.attempts}
        if status == DEAD:
            self.dead_total += 1
            self._logger.error(
                "outbox message %d (%s) is dead after %d attempts; last error: %s",
                claimed.id,
                claimed.topic,
                claimed.attempts,
                _describe(error),
                extra=extra,
            )
        elif status is not None:
            self.retried_total += 1
            self._logger.warning(
                "outbox message %d (%s): attempt %d failed (%s); next attempt in %.2f s",
                claimed.id,
                claimed.topic,
                claimed.attempts,
                _describe(error),
                retry_in,
                extra={**extra, "retry_in": round(retry_in, 3)},
            )

    # -- the loop -----------------------------------------------------------------------------

    async def clean_up(self) -> int:
        """Delete delivered messages past their retention, and run the other cleanup jobs."""

        async def purge(session: AsyncSession, limit: int) -> int:
            return await purge_delivered(session, older_than=self.policy.retention, limit=limit)

        removed = 0
        for job in (purge, *self._cleanup_jobs):
            while not self._stopping.is_set():
                async with transaction(self._sessionmaker) as session:
                    count = await job(session, CLEANUP_BATCH)
                removed += count
                if count < CLEANUP_BATCH:
                    break
        return removed

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time() + self.policy.cleanup_interval
        # The first round comes one interval after start, not during it: a restarting process
        # gets its pending messages out a moment later, and startup stays free of sends.
        while not await self._stopped_within(self.policy.poll_interval):
            try:
                more = True
                while more and not self._stopping.is_set():
                    # A full batch means more may be due: go again at once.
                    more = await self.dispatch_due() >= self.policy.batch_size
                if loop.time() >= next_cleanup:
                    next_cleanup = loop.time() + self.policy.cleanup_interval
                    await self.clean_up()
            except Exception as error:  # noqa: BLE001 - logged; the loop must outlive an outage
                self._logger.warning(
                    "outbox dispatcher round failed (%s); trying again in %g s",
                    _describe(error),
                    self.policy.poll_interval,
                )

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if ``stop`` is called meanwhile; say whether it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()
