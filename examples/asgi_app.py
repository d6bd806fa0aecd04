"""A Starlette notes app on an async session: one unit of work per request.

Run it and open http://127.0.0.1:8000/ ::

    python examples/asgi_app.py                  # SQLite file asgi_app.db here (aiosqlite)
    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test python examples/asgi_app.py

Needs ``starlette``, ``uvicorn`` and ``aiosqlite`` (or ``asyncpg``). The views use
``Session`` anywhere; ``ScopedSessionMiddleware(commit=True)`` commits before the
status goes out and closes the session once the response is over. ``GET /notes``
streams the notes from the view's own session, which stays open until the last
line was sent.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import socket
import typing as t
from urllib.parse import parse_qs

import sqlalchemy as sa
import uvicorn
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


def make_app(url: str) -> tuple[ScopedSessionMiddleware, AsyncEngine]:
    """The notes app on the database at ``url``, and its engine."""
    engine = create_async_engine(url)
    Session: AsyncScopedSession[AsyncSession] = AsyncScopedSession(async_sessionmaker(engine))

    async def index(request: Request) -> Response:
        texts = await Session.scalars(sa.select(Note.text).order_by(Note.id))
        items = "".join(f"<li>{html.escape(text)}</li>" for text in texts)
        return HTMLResponse(
            "<!doctype html><title>Notes</title><h1>Notes</h1>"
            '<form method="post" action="/notes"><input name="text" autofocus>'
            f"<button>Add</button></form><ul>{items}</ul>"
            '<p><a href="/notes">as text, streamed</a></p>'
        )

    async def add_note(request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        text = form.get("text", [""])[0].strip()
        Session.add(Note(text=text))  # rolled back below when the text is empty
        if not text:
            return PlainTextResponse("A note needs some text.\n", status_code=400)
        return RedirectResponse("/", status_code=303)

    async def stream_notes(request: Request) -> Response:
        async def lines() -> t.AsyncIterator[str]:
            # Runs while the server sends the body, still on this request's session.
            result = await Session.stream_scalars(sa.select(Note.text).order_by(Note.id))
            async for text in result:
                yield f"{text}\n"

        return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> t.AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        pool = engine.sync_engine.pool  # a NullPool (aiosqlite on SQLAlchemy 2.0) keeps none
        left = pool.checkedout() if isinstance(pool, sa.QueuePool) else 0
        print(f"connections left checked out: {left}", flush=True)
        await engine.dispose()

    starlette = Starlette(
        routes=[
            Route("/", index),
            Route("/notes", add_note, methods=["POST"]),
            Route("/notes", stream_notes, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return ScopedSessionMiddleware(starlette, Session, commit=True), engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///asgi_app.db"),
        help="an async SQLAlchemy URL (default: $DATABASE_URL, else the SQLite file asgi_app.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    app, _ = make_app(args.db)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)  # connections wait in the backlog until the server accepts them
    print(f"Serving on http://{args.host}:{sock.getsockname()[1]}/ (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl+C once it is done
        server.run(sockets=[sock])  # Ctrl+C: a graceful shutdown, then the lifespan's end


if __name__ == "__main__":
    main()
