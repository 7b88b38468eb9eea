"""Dependency aliases for routers (``SessionDep``, ``ReaderDep``, ``ResourcesDep``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.reads import Reader
from ..db.session import transaction
from ..resources import Resources, ResourcesDep, get_resources

__all__ = ["ReaderDep", "ResourcesDep", "SessionDep", "reader_of", "transactional_session"]


async def transactional_session(request: Request) -> AsyncIterator[AsyncSession]:
    resources = await get_resources(request)
    async with transaction(resources.sessionmaker) as session:
        yield session


# scope="function": the commit runs when the endpoint returns, before the response is sent,
# so a failing commit becomes an error response instead of a 201 for data that is gone.
SessionDep = Annotated[AsyncSession, Depends(transactional_session, scope="function")]


def reader_of(request: Request) -> Reader:
    """The lifespan's reader, without FastAPI's dependency machinery: what ``ReaderDep`` gives,
    for the one route where that machinery is a measurable share of the request."""
    resources: Resources = request.state.resources
    return resources.reader


async def reader(request: Request) -> Reader:
    # Not a yield dependency: a read holds a connection only while its statement runs, so there
    # is nothing to close when the endpoint returns (and no exit stack to pay for).
    return reader_of(request)


# For endpoints that only read: no transaction, one round trip per statement (db/reads.py).
ReaderDep = Annotated[Reader, Depends(reader)]
