"""Users and their orders."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Order, User
from ..errors import ConflictError, NotFoundError
from .deps import SessionDep
from .schemas import OrderCreate, OrderOut, UserCreate, UserIdPath, UserOut

router = APIRouter(prefix="/users", tags=["users"])


async def load_user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} does not exist")
    return user


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
        raise ConflictError(f"a user with email {body.email!r} already exists") from error
    await session.refresh(user)
    return UserOut.model_validate(user)


@router.get("/{user_id}")
async def get_user(user: ExistingUser) -> UserOut:
    return UserOut.model_validate(user)


@router.post("/{user_id}/orders", status_code=status.HTTP_201_CREATED)
async def create_order(body: OrderCreate, user: ExistingUser, session: SessionDep) -> OrderOut:
    order = Order(user_id=user.id, item=body.item, quantity=body.quantity)
    session.add(order)
    await session.flush()
    await session.refresh(order)
    return OrderOut.model_validate(order)


@router.get("/{user_id}/orders")
async def list_orders(user: ExistingUser, session: SessionDep) -> list[OrderOut]:
    orders = await session.scalars(select(Order).where(Order.user_id == user.id).order_by(Order.id))
    return [OrderOut.model_validate(order) for order in orders]
