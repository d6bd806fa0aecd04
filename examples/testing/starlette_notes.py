"""A small Starlette app for the testing example: one AsyncScopedSession, made
without an engine (the tests give the plugin one of their own, see
``starlette_conftest.py``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


Session: AsyncScopedSession[AsyncSession] = AsyncScopedSession(async_sessionmaker())


async def add_note(request: Request) -> JSONResponse:
    Session.add(Note(text=request.path_params["text"]))
    await Session.flush()
    count = await Session.scalar(sa.select(sa.func.count()).select_from(Note))
    return JSONResponse({"notes": count}, status_code=201)


async def notes(request: Request) -> JSONResponse:
    texts = await Session.scalars(sa.select(Note.text).order_by(Note.id))
    return JSONResponse(list(texts))


app = ScopedSessionMiddleware(
    Starlette(
        routes=[
            Route("/notes/{text}", add_note, methods=["POST"]),
            Route("/notes", notes),
        ]
    ),
    Session,
    commit=True,
)
