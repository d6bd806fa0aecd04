"""A FastAPI notes app: async endpoints on an async session, a sync endpoint on a
sync session, both scoped to the request by one middleware.

Run it and open http://127.0.0.1:8000/ ::

    python examples/fastapi_app.py               # SQLite file fastapi_app.db here (aiosqlite)
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test python examples/fastapi_app.py

Needs ``fastapi``, ``uvicorn`` and ``aiosqlite`` (or ``asyncpg``/``psycopg``).
``ScopedSessionMiddleware(app, Session, SyncSession, commit=True)`` gives each request
one unit of work on each registry: the async endpoints get the request's
``AsyncSession`` from a dependency, and the sync endpoint ``GET /stats``, which
FastAPI runs on a worker thread, gets the request's sync ``Session`` there (the
registry is made with ``scope="context"``, so it follows the request, not the thread).
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
from fastapi import Depends, FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from scoped_session import ScopedSession
from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


#: The registries, bound to their engines by make_app(): a session per request each.
DB: AsyncScopedSession[AsyncSession] = AsyncScopedSession(async_sessionmaker())
SyncDB: ScopedSession[Session] = ScopedSession(sessionmaker(), scope="context")


def session() -> AsyncSession:
    """A dependency: the request's async session (the middleware ends it)."""
    return DB()


Db = t.Annotated[AsyncSession, Depends(session)]


def sync_url(url: str) -> sa.URL:
    """The sync driver for the same database: sqlite+aiosqlite -> sqlite, any
    postgresql+... -> postgresql+psycopg."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite")
    return parsed.set(drivername="postgresql+psycopg")


def make_app(url: str) -> ScopedSessionMiddleware:
    """The notes app on the database at ``url``."""
    engine = create_async_engine(url)
    sync_engine = sa.create_engine(sync_url(url))
    DB.configure(bind=engine)
    SyncDB.configure(bind=sync_engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> t.AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        pools = (engine.sync_engine.pool, sync_engine.pool)  # a NullPool keeps none
        left = sum(pool.checkedout() for pool in pools if isinstance(pool, sa.QueuePool))
        print(f"connections left checked out: {left}", flush=True)
        await engine.dispose()
        sync_engine.dispose()

    api = FastAPI(lifespan=lifespan)

    @api.get("/", response_class=HTMLResponse)
    async def index(db: Db) -> str:
        texts = await db.scalars(sa.select(Note.text).order_by(Note.id))
        items = "".join(f"<li>{html.escape(text)}</li>" for text in texts)
        return (
            "<!doctype html><title>Notes</title><h1>Notes</h1>"
            '<form method="post" action="/notes"><input name="text" autofocus>'
            f"<button>Add</button></form><ul>{items}</ul>"
            '<p><a href="/notes">as text, streamed</a> · <a href="/stats">stats</a></p>'
        )

    @api.post("/notes")
    async def add_note(request: Request, db: Db) -> Response:
        form = parse_qs((await request.body()).decode())
        text = form.get("text", [""])[0].strip()
        db.add(Note(text=text))  # rolled back below when the text is empty
        if not text:
            return PlainTextResponse("A note needs some text.\n", status_code=400)
        return RedirectResponse("/", status_code=303)

    @api.get("/notes")
    async def stream_notes() -> StreamingResponse:
        async def lines() -> t.AsyncIterator[str]:
            # Runs while the server sends the body, still on this request's session.
            async for text in await DB.stream_scalars(sa.select(Note.text).order_by(Note.id)):
                yield f"{text}\n"

        return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")

    @api.get("/stats")
    def stats() -> dict[str, int]:
        # A sync endpoint: FastAPI runs it on a worker thread; SyncDB() is still
        # the request's own session there.
        return {"notes": SyncDB.scalar(sa.select(sa.func.count()).select_from(Note)) or 0}

    return ScopedSessionMiddleware(api, DB, SyncDB, commit=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///fastapi_app.db"),
        help="an async SQLAlchemy URL (default: $DATABASE_URL, else SQLite: fastapi_app.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    app = make_app(args.db)
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
