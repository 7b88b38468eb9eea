"""The queries the API needs, each on a session it is given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import NotFoundError
from .models import Order, User
from .reads import Reader
from .session import transaction


async def load_user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} does not exist")
    return user


# The hot read, on the driver's connection (db/reads.py): asyncpg's placeholders, the columns of
# models.User. tests/test_read_path.py checks it against the model.
USER_BY_ID = "SELECT id, email, name, created_at FROM users WHERE id = $1"


async def find_user(reader: Reader, user_id: int) -> dict[str, Any]:
    """One user's columns, without a transaction (``db/reads.py``), or ``NotFoundError``."""
    row = await reader.fetch_one(USER_BY_ID, user_id)
    if row is None:
        raise NotFoundError(f"user {user_id} does not exist")
    return row


@dataclass(frozen=True, slots=True)
class OrderPage:
    """Up to ``limit`` orders, oldest first, and where the next page starts (None: none)."""

    orders: Sequence[Order]
    next_after: int | None


async def orders_of(
    session: AsyncSession, user_id: int, *, limit: int, after: int = 0
) -> OrderPage:
    """A page of the user's orders with an id above ``after`` (a keyset cursor: each page costs
    the same however deep it is, and an order placed meanwhile neither repeats nor skips one).
    One row more than asked tells whether another page follows."""
    query = (
        select(Order)
        .where(Order.user_id == user_id, Order.id > after)
        .order_by(Order.id)
        .limit(limit + 1)
    )
    rows = (await session.scalars(query)).all()
    page = rows[:limit]
    return OrderPage(page, page[-1].id if len(rows) > limit else None)


async def load_order(session: AsyncSession, order_id: int) -> Order:
    order = await session.get(Order, order_id)
    if order is None:
        raise NotFoundError(f"order {order_id} does not exist")
    return order


async def insert_order(session: AsyncSession, user_id: int, item: str, quantity: int) -> Order:
    await load_user(session, user_id)
    order = Order(user_id=user_id, item=item, quantity=quantity)
    session.add(order)
    await session.flush()
    await session.refresh(order)
    return order


# For concurrent readers (a fan-out): one session per task, since an AsyncSession must never be
# shared between tasks that run at the same time.


async def read_user(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> User:
    async with transaction(sessionmaker) as session:
        return await load_user(session, user_id)


async def read_orders(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, *, limit: int
) -> OrderPage:
    async with transaction(sessionmaker) as session:
        return await orders_of(session, user_id, limit=limit)
