"""Request and response bodies. Input is checked here so that bad input is a 422, never a
database error: lengths match the columns, control characters (PostgreSQL rejects NUL in text)
are refused, ids stay inside BIGINT.

A length is checked on the value that is stored, after normalization: lowercasing can make a
string longer ("İ" becomes "i" and a combining dot), so an email checked before ``lower()``
passes 254 characters and then overflows its column. The limits come from the columns.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ..db.models import Order, User

MAX_ID = 2**63 - 1
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _printable(value: str) -> str:
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _column_length(column: Any) -> int:
    length = column.type.length
    if not isinstance(length, int):
        raise TypeError(f"{column} has no length to validate against")
    return length


EMAIL_MAX_LENGTH = _column_length(User.__table__.c.email)
TEXT_MAX_LENGTH = min(_column_length(User.__table__.c.name), _column_length(Order.__table__.c.item))


def _email(value: str) -> str:
    if not EMAIL_PATTERN.match(value):
        raise ValueError("is not an email address")
    stored = value.lower()
    if len(stored) > EMAIL_MAX_LENGTH:
        raise ValueError(f"must be at most {EMAIL_MAX_LENGTH} characters once lowercased")
    return stored


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX_LENGTH),
    AfterValidator(_printable),
]
Email = Annotated[
    str,
    # A first bound before the pattern runs; the length stored is checked after lowercasing.
    StringConstraints(strip_whitespace=True, min_length=3, max_length=EMAIL_MAX_LENGTH),
    AfterValidator(_printable),
    AfterValidator(_email),
]
UserIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's id")]

# Every list has a bounded page: one request never reads, serializes and sends a whole table.
PAGE_DEFAULT = 50
PAGE_MAX = 200
PageLimit = Annotated[
    int, Query(ge=1, le=PAGE_MAX, description=f"At most this many orders ({PAGE_MAX} at most)")
]
AfterCursor = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_ID,
        description="Orders after this one: the X-Next-Cursor of the previous page",
    ),
]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(StrictBody):
    email: Email
    name: Text


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    created_at: datetime


class OrderCreate(StrictBody):
    item: Text
    quantity: int = Field(ge=1, le=10_000)


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    item: str
    quantity: int
    created_at: datetime


class Dashboard(BaseModel):
    """Everything about a user, all or nothing."""

    user: UserOut
    orders: list[OrderOut]  # the first page; more through GET /users/{id}/orders
    orders_next_cursor: int | None = None  # its `after` when there are more
    preferences: dict[str, Any]
    notifications: list[Any]


class SectionError(BaseModel):
    code: str
    message: str


class Section(BaseModel):
    """One part of a summary: its data, or why it is missing."""

    status: Literal["ok", "error"]
    data: Any = None
    error: SectionError | None = None


class Summary(BaseModel):
    """Everything about a user that could be had: a failed section does not sink the rest."""

    user: UserOut
    sections: dict[str, Section]
