"""Request and response bodies. Input is checked here so that bad input is a 422, never a
database error: lengths match the columns, control characters (PostgreSQL rejects NUL in text)
are refused, ids stay inside BIGINT."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_ID = 2**63 - 1
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _printable(value: str) -> str:
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _email(value: str) -> str:
    if not EMAIL_PATTERN.match(value):
        raise ValueError("is not an email address")
    return value.lower()


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_printable),
]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=254),
    AfterValidator(_printable),
    AfterValidator(_email),
]
UserIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's id")]


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
    orders: list[OrderOut]
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
