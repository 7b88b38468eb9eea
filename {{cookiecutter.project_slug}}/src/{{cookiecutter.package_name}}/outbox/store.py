"""The outbox's SQL: write a message in the caller's transaction, claim due ones, record results.

Claiming is one short transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks due rows that no
other dispatcher is claiming at this instant, and the same statement pushes their
``next_attempt_at`` a lease ahead, which keeps every dispatcher off them after the commit too.
The send happens after that commit, with no transaction (and no connection) held while the
remote side takes its time; its outcome is recorded in another short transaction.

SKIP LOCKED gives up strict ordering: messages are sent roughly oldest first, not exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

{% if cookiecutter.tracing == "opentelemetry" -%}
from ..observability.tracing import current_trace_context
{% endif -%}
from .models import DEAD, DELIVERED, PENDING, OutboxMessage

# The longest error text kept on a row: enough to say what failed, not a whole HTML error page.
ERROR_TEXT_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message this dispatcher owns until its lease ends: send it, then record the outcome."""

    id: int
    topic: str
    payload: dict[str, Any]
    request_id: str | None
    attempts: int  # counting the attempt about to be made
{%- if cookiecutter.tracing == "opentelemetry" %}
    trace_context: dict[str, str] | None = None
{%- endif %}


async def enqueue(
    session: AsyncSession, topic: str, payload: dict[str, Any], *, request_id: str | None
) -> int:
    """Add a message in ``session``'s transaction, due at once; return its id.

    It commits, or rolls back, with whatever else the transaction wrote: the caller's data and
    the promise to tell someone about it are one unit.
    """
    statement = (
        insert(OutboxMessage)
{%- if cookiecutter.tracing == "opentelemetry" %}
        # The current trace goes with the message: its delivery continues it, even from
        # another process hours later (observability/tracing.py).
        .values(
            topic=topic,
            payload=payload,
            request_id=request_id,
            trace_context=current_trace_context(),
        )
{%- else %}
        .values(topic=topic, payload=payload, request_id=request_id)
{%- endif %}
        .returning(OutboxMessage.id)
    )
    message_id: int = (await session.execute(statement)).scalar_one()
    return message_id


async def _claim(session: AsyncSession, picked: Select[Any], lease: float) -> list[Claimed]:
    statement = (
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(picked.scalar_subquery()))
        .values(
            attempts=OutboxMessage.attempts + 1,
            next_attempt_at=func.now() + timedelta(seconds=lease),
        )
        .returning(
            OutboxMessage.id,
            OutboxMessage.topic,
            OutboxMessage.payload,
            OutboxMessage.request_id,
            OutboxMessage.attempts,
{%- if cookiecutter.tracing == "opentelemetry" %}
            OutboxMessage.trace_context,
{%- endif %}
        )
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(statement)).all()
    return sorted((Claimed(*row) for row in rows), key=lambda claimed: claimed.id)


async def claim_due(session: AsyncSession, *, limit: int, lease: float) -> list[Claimed]:
    """Claim up to ``limit`` due messages, oldest due first, skipping rows others are claiming."""
    picked = (
        select(OutboxMessage.id)
        .where(OutboxMessage.status == PENDING, OutboxMessage.next_attempt_at <= func.now())
        .order_by(OutboxMessage.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return await _claim(session, picked, lease)


async def claim_one(session: AsyncSession, message_id: int, *, lease: float) -> Claimed | None:
    """Claim one message if it is still due and nobody holds it (the send right after commit)."""
    picked = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.id == message_id,
            OutboxMessage.status == PENDING,
            OutboxMessage.next_attempt_at <= func.now(),
        )
        .with_for_update(skip_locked=True)
    )
    claimed = await _claim(session, picked, lease)
    return claimed[0] if claimed else None


async def mark_delivered(session: AsyncSession, message_id: int) -> None:
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id)
        .values(status=DELIVERED, delivered_at=func.now(), last_error=None)
        .execution_options(synchronize_session=False)
    )


async def mark_failed(
    session: AsyncSession, claimed: Claimed, *, error: str, retry_in: float, max_attempts: int
) -> str | None:
    """Schedule the next attempt in ``retry_in`` seconds, or set the message aside as dead once
    it has had ``max_attempts``. Returns the new status, or None if the row was no longer ours
    (its lease ran out and another dispatcher claimed it again: that one decides)."""
    status = DEAD if claimed.attempts >= max_attempts else PENDING
    result = await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id == claimed.id,
            OutboxMessage.status == PENDING,
            OutboxMessage.attempts == claimed.attempts,
        )
        .values(
            status=status,
            next_attempt_at=func.now() + timedelta(seconds=retry_in),
            last_error=error[:ERROR_TEXT_LIMIT],
        )
        .returning(OutboxMessage.status)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none()


async def purge_delivered(session: AsyncSession, *, older_than: float, limit: int) -> int:
    """Delete up to ``limit`` messages delivered more than ``older_than`` seconds ago.

    Dead messages stay: they are what an operator looks at, and requeues, after an incident.
    """
    expired = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.status == DELIVERED,
            OutboxMessage.delivered_at < func.now() - timedelta(seconds=older_than),
        )
        .limit(limit)
    )
    result = await session.execute(
        delete(OutboxMessage)
        .where(OutboxMessage.id.in_(expired.scalar_subquery()))
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    """How many messages are in each state (pending and dead are what an operator watches)."""
    rows = await session.execute(
        select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
    )
    counts = dict.fromkeys((PENDING, DELIVERED, DEAD), 0)
    for status, count in rows:
        counts[status] = count
    return counts
