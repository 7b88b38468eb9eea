"""Users, their orders, and the two views over everything about a user.

The routers only wire things together: the concurrency lives in ``aio`` (fan-out, settled
fan-out, shielded and background work), the queries in ``db`` (idempotency keys too), the calls
in ``upstream``, durable notifications in ``outbox``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..aio.fanout import FanoutError, run_all
from ..aio.settled import Failed, Ok, run_settled
from ..db.idempotency import claim_key, parse_idempotency_key, record_key, request_fingerprint
from ..db.models import User
from ..db.queries import (
    find_user,
    insert_order,
    load_order,
    load_user,
    orders_of,
    read_orders,
    read_user,
)
from ..db.session import transaction
from ..errors import ConflictError, NotFoundError, ServiceError
from ..logs import request_id_var
from ..outbox.models import ORDER_NOTIFICATION
from ..outbox.store import enqueue
from ..resources import Resources
from ..upstream.calls import UpstreamTimeoutError
from .deps import ResourcesDep, SessionDep, reader_of
from .responses import json_response
from .schemas import (
    PAGE_DEFAULT,
    AfterCursor,
    Dashboard,
    OrderCreate,
    OrderOut,
    PageLimit,
    Section,
    SectionError,
    Summary,
    UserCreate,
    UserIdPath,
    UserOut,
)

router = APIRouter(prefix="/users", tags=["users"])
logger = logging.getLogger(__name__)


async def existing_user(session: SessionDep, user_id: UserIdPath) -> User:
    return await load_user(session, user_id)


ExistingUser = Annotated[User, Depends(existing_user)]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep) -> UserOut:
    user = User(email=body.email, name=body.name)
    session.add(user)
    try:
        # Flush here, not at commit, so the duplicate is reported with a precise message.
        await session.flush()
    except IntegrityError as error:
        # The address is not echoed: the client knows it, and the answer may be logged.
        raise ConflictError("a user with this email already exists") from error
    await session.refresh(user)
    return UserOut.model_validate(user)


@router.get("/{user_id}", response_model=UserOut)
async def get_user(user_id: UserIdPath, request: Request) -> Response:
    # The hot path: one statement outside any transaction, the columns validated once into the
    # model and written as JSON bytes; FastAPI sends a Response as it is, without validating
    # and serializing the value a second time (response_model keeps the OpenAPI schema). The
    # reader comes from the request, not from ReaderDep: resolving a dependency cost 71k
    # instructions per request here, a tenth of the service's CPU (docs/patterns.md, 26).
    row = await find_user(reader_of(request), user_id)
    return json_response(UserOut.model_validate(row))


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        description=(
            "Makes the request safe to retry: a quoted string (or a bare token) of 1 to 255 "
            "characters, unique per order. The same key with the same body within "
            "IDEMPOTENCY_KEY_TTL answers with the order it created (201, header "
            "Idempotent-Replayed: true); with another body it is 422; while the first request "
            "with the key is still running it is 409 with Retry-After."
        ),
    ),
]


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: OrderOut
    replayed: bool  # answered with the order an earlier request with the same key created


async def _enqueue_notification(session: AsyncSession, order: OrderOut) -> int:
    payload = {"user_id": order.user_id, "order_id": order.id, "item": order.item,
               "quantity": order.quantity}  # fmt: skip
    return await enqueue(session, ORDER_NOTIFICATION, payload, request_id=request_id_var.get())


async def place_order(
    resources: Resources, user_id: int, body: OrderCreate, key: str | None = None
) -> PlacedOrder:
    """Write the order, its idempotency key and its notification in one transaction, then send
    the notification in the background.

    This runs shielded: once started it finishes even if the request that asked for it is
    cancelled (its deadline, or the server's shutdown). The notification is a row of the outbox,
    committed with the order: sent at once after the commit, and by the outbox's dispatcher
    later if that first attempt fails or the process dies first.
    """
    fingerprint = request_fingerprint(body.model_dump())
    async with transaction(resources.sessionmaker) as session:
        if key is not None:
            stored = await claim_key(session, user_id=user_id, key=key, fingerprint=fingerprint)
            if stored is not None:
                replayed = OrderOut.model_validate(await load_order(session, stored))
                return PlacedOrder(replayed, replayed=True)
        order = OrderOut.model_validate(
            await insert_order(session, user_id, body.item, body.quantity)
        )
        if key is not None:
            await record_key(
                session,
                user_id=user_id,
                key=key,
                fingerprint=fingerprint,
                order_id=order.id,
                ttl=resources.settings.idempotency_key_ttl,
            )
        message_id = await _enqueue_notification(session, order)
    # The first attempt, right after the commit, without the response waiting for it. Spawned
    # from the shielded task itself, so the supervisor accepts and drains it even when the write
    # finished after shutdown began.
    resources.supervisor.spawn(
        resources.outbox.deliver(message_id), name=f"notify-order:{order.id}"
    )
    return PlacedOrder(order, replayed=False)


@router.post("/{user_id}/orders", status_code=status.HTTP_201_CREATED)
async def create_order(
    body: OrderCreate,
    user_id: UserIdPath,
    resources: ResourcesDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> OrderOut:
    key = None if idempotency_key is None else parse_idempotency_key(idempotency_key)
    placed = await resources.supervisor.run_shielded(
        place_order(resources, user_id, body, key), name=f"place-order:user-{user_id}"
    )
    if placed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return placed.order


@router.get("/{user_id}/orders")
async def list_orders(
    *,
    user: ExistingUser,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: PageLimit = PAGE_DEFAULT,
    after: AfterCursor = 0,
) -> list[OrderOut]:
    """A page of the user's orders, oldest first. The body stays the plain list it always was;
    when more follow, ``X-Next-Cursor`` and a ``Link: <...>; rel="next"`` header say where."""
    page = await orders_of(session, user.id, limit=limit, after=after)
    if page.next_after is not None:
        following = request.url.include_query_params(limit=limit, after=page.next_after)
        response.headers["X-Next-Cursor"] = str(page.next_after)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return [OrderOut.model_validate(order) for order in page.orders]


def _sources(
    resources: Resources, user_id: int, orders_limit: int
) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
    # Each database source opens its own session: tasks running at once never share one.
    return {
        "user": lambda: read_user(resources.sessionmaker, user_id),
        "orders": lambda: read_orders(resources.sessionmaker, user_id, limit=orders_limit),
        "preferences": lambda: resources.upstreams.preferences(user_id),
        "notifications": lambda: resources.upstreams.recent_notifications(user_id),
    }


@router.get("/{user_id}/dashboard")
async def dashboard(
    user_id: UserIdPath, resources: ResourcesDep, orders_limit: PageLimit = PAGE_DEFAULT
) -> Dashboard:
    """All four sources at once; the first failure cancels the others and is the answer."""
    try:
        values = await run_all(_sources(resources, user_id, orders_limit))
    except FanoutError as error:
        if isinstance(error.cause, ServiceError):
            raise error.cause from error  # 404 user, 502 upstream, 504 upstream deadline
        if isinstance(error, TimeoutError):
            raise UpstreamTimeoutError(f"{error.name} ran out of time") from error
        raise
    return Dashboard(
        user=UserOut.model_validate(values["user"]),
        orders=[OrderOut.model_validate(order) for order in values["orders"].orders],
        orders_next_cursor=values["orders"].next_after,
        preferences=values["preferences"],
        notifications=values["notifications"],
    )


def _section_error(error: Exception) -> SectionError:
    if isinstance(error, ServiceError):
        return SectionError(code=error.code, message=error.message)
    logger.error("summary section failed", exc_info=error)
    return SectionError(code="internal_error", message="this section could not be loaded")


@router.get("/{user_id}/summary")
async def summary(
    user_id: UserIdPath, resources: ResourcesDep, orders_limit: PageLimit = PAGE_DEFAULT
) -> Summary:
    """The same sources, partial: each failed section is reported, the rest still served."""
    outcomes = await run_settled(_sources(resources, user_id, orders_limit))
    match outcomes.pop("user"):
        case Ok(value=user):
            pass
        case Failed(error=NotFoundError() as missing):
            raise missing
        case Failed(error=error):
            raise error
    sections: dict[str, Section] = {}
    for name, outcome in outcomes.items():
        match outcome:
            case Ok(value=value):
                data = (
                    [OrderOut.model_validate(order) for order in value.orders]
                    if name == "orders"
                    else value
                )
                sections[name] = Section(status="ok", data=data)
            case Failed(error=error):
                sections[name] = Section(status="error", error=_section_error(error))
    return Summary(user=UserOut.model_validate(user), sections=sections)
