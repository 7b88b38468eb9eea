"""What the upstream services may answer. An upstream is outside the service's trust boundary
too: its answers are validated like a client's request before they reach a client or the
database. A body that does not fit is the upstream's failure (502), never passed on.

Only the declared fields are kept (unknown ones are dropped, not forwarded), every string and
list is bounded, and each answer must be about the user that was asked for. Adapt the fields to
your real upstreams; keep the bounds.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

MAX_ID = 2**63 - 1
# The most notifications one answer may carry: the notifier keeps the recent ones only.
MAX_NOTIFICATIONS = 100

ShortText = Annotated[str, StringConstraints(max_length=200)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class UpstreamModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Preferences(UpstreamModel):
    user_id: Id
    language: Annotated[str, StringConstraints(min_length=1, max_length=35)]
    channels: Annotated[list[ShortText], Field(max_length=20)] = []
    digest: ShortText | None = None


class Notification(UpstreamModel):
    user_id: Id
    order_id: Id | None = None
    item: ShortText | None = None
    quantity: int | None = None


NOTIFICATIONS = TypeAdapter(Annotated[list[Notification], Field(max_length=MAX_NOTIFICATIONS)])
