"""What ``GET /users/{id}`` looks like when written without the template: FastAPI and the ORM
as their tutorials show them.

What it stands for
    The app a team writes on the same libraries before it meets the problems the service's
    practices are for: ``create_async_engine(url)`` with every default (a pool of 5 plus 10
    overflow, no pre-ping, no statement timeout), an ``async_sessionmaker``, a ``get_session``
    dependency that yields a session, a declarative ``User`` mapped to the service's table, the
    route reading it with ``session.get``, a 404 through ``HTTPException``, a pydantic response
    model, and uvicorn with its default logging (the access log on, as such an app runs). None
    of the service's middleware (request ids, metrics, admission, deadlines, body limit, JSON
    logs) nor its lifespan work (loop-lag monitor, outbox, upstream client) is here.
    ``bench/hotpath.py`` measures it beside the service and the bare ceiling
    (``reference_ceiling.py``): the service against it is what the template's practices cost
    (or save) on the hot path, against plain framework code doing the same read.

Run it (``bench/hotpath.py`` does, on the service's database)::

    python bench/reference_naive.py --port 8002 --database-url postgresql+asyncpg://u@h/db

SIGTERM or Ctrl-C stops it cleanly: uvicorn's shutdown, then the engine is disposed of.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time,
# and the dependency they name is local to create_app.
import argparse
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UserOut(BaseModel, from_attributes=True):
    id: int
    email: str
    name: str
    created_at: datetime


def create_app(database_url: str) -> FastAPI:
    engine = create_async_engine(database_url)
    sessionmaker = async_sessionmaker(engine)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with sessionmaker() as session:
            yield session

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{user_id}", response_model=UserOut)
    async def get_user(
        user_id: int, session: Annotated[AsyncSession, Depends(get_session)]
    ) -> User:
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404, detail="user not found")
        return user

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GET /users/{id}: FastAPI + ORM, defaults")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True, help="postgresql+asyncpg://...")
    args = parser.parse_args(argv)
    app = create_app(args.database_url)
    # uvicorn raises the stopping signal again once it has shut down: a no-op handler makes
    # SIGTERM a clean exit (0), and Ctrl-C's KeyboardInterrupt is caught.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
