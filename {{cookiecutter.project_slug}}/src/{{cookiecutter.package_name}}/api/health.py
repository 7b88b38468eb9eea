"""Liveness (the process answers) and readiness (the database answers, within a deadline)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..errors import error_response
from .deps import ResourcesDep

router = APIRouter(prefix="/health", tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/ready", response_model=None)
async def ready(resources: ResourcesDep) -> dict[str, str] | JSONResponse:
    try:
        # A real round trip under a short deadline: a database that hangs is as unready as
        # one that refuses, and a probe must never hang with it.
        async with asyncio.timeout(resources.settings.readiness_timeout):
            async with resources.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except (TimeoutError, OSError, SQLAlchemyError) as error:
        logger.warning("readiness check failed: %s", type(error).__name__)
        return error_response(503, "unavailable", "the database is not reachable")
    return {"status": "ready", "database": "ok"}
