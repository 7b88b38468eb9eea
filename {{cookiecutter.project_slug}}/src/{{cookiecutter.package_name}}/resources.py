"""What the lifespan owns, handed to routers through ``ResourcesDep``.

Everything long-lived is created in the lifespan and closed there, in reverse order; nothing is
created at import time, so tests can build as many independent apps as they like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx2
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .aio.background import TaskSupervisor
from .aio.debug import LoopLagMonitor
from .db.reads import Reader
from .outbox.dispatcher import OutboxDispatcher
from .settings import Settings
from .upstream.calls import Upstreams


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    reader: Reader  # reads without a transaction (db/reads.py)
    http: httpx2.AsyncClient
    upstreams: Upstreams
    supervisor: TaskSupervisor
    loop_lag: LoopLagMonitor
    outbox: OutboxDispatcher


async def get_resources(request: Request) -> Resources:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
    # (and a wait for a free thread under load) on every request that needs the resources.
    resources: Resources = request.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
