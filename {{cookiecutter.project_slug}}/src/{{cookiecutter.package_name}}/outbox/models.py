"""The ``outbox`` table: work that must happen after a commit, written by that same commit.

A row is one message to send. Its life: ``pending`` (due at ``next_attempt_at``), then
``delivered``, or ``dead`` once ``attempts`` reaches the limit. The retry schedule lives in the
row itself (``attempts``, ``next_attempt_at``), so it survives a crash and every replica sees the
same one. A claimed row's ``next_attempt_at`` is pushed a lease ahead: that is what keeps other
dispatchers off it while it is being sent, with no transaction held open during the send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from ..db.models import Base

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"

# The one kind of message the service sends today: the notification of a new order.
ORDER_NOTIFICATION = "order-notification"


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="ck_outbox_status"),
        # What the dispatchers poll for, and what the cleanup deletes: small partial indexes,
        # because most rows of a busy outbox are delivered ones waiting for their cleanup.
        Index("ix_outbox_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index(
            "ix_outbox_delivered_at", "delivered_at", postgresql_where=text("status = 'delivered'")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    topic: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The request that wrote the message, so its delivery can be traced back to it.
    request_id: Mapped[str | None] = mapped_column(String(100))
{%- if cookiecutter.tracing == "opentelemetry" %}
    # The trace of that request (propagation headers), continued by every delivery attempt.
    trace_context: Mapped[dict[str, str] | None] = mapped_column(JSONB)
{%- endif %}
    status: Mapped[str] = mapped_column(String(16), server_default=PENDING)
    attempts: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
