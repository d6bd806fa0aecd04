"""A small FastAPI app for the testing example: async endpoints on an
AsyncScopedSession and a sync endpoint (``GET /stats``) on a
ScopedSession(scope="context"), both given to one ScopedSessionMiddleware.

The registries' factories are made without an engine, so this module names no
database: the tests choose it, by giving the plugin engines of their own (see
``fastapi_conftest.py``), and every session made in a test is bound to the test's
connection. To serve the app, bind the factories first:
``DB.configure(bind=create_async_engine(url))`` and
``SyncDB.configure(bind=create_engine(url))``.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from scoped_session import ScopedSession
from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


DB: AsyncScopedSession[AsyncSession] = AsyncScopedSession(async_sessionmaker())
SyncDB: ScopedSession[Session] = ScopedSession(sessionmaker(), scope="context")
COUNT = sa.select(sa.func.count()).select_from(Note)


def db() -> AsyncSession:
    """The request's async session (the middleware ends it)."""
    return DB()


Db = t.Annotated[AsyncSession, Depends(db)]

api = FastAPI()


@api.post("/notes/{text}", status_code=201)
async def add_note(text: str, session: Db) -> dict[str, int]:
    session.add(Note(text=text))
    await session.flush()
    return {"notes": await session.scalar(COUNT) or 0}


@api.get("/notes")
async def notes(session: Db) -> list[str]:
    return list(await session.scalars(sa.select(Note.text).order_by(Note.id)))


@api.get("/stats")
def stats() -> dict[str, int]:
    # A sync endpoint: FastAPI runs it on a worker thread, with the request's session.
    return {"notes": SyncDB.scalar(COUNT) or 0}


app = ScopedSessionMiddleware(api, DB, SyncDB, commit=True)
