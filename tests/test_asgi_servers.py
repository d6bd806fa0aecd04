"""ScopedSessionMiddleware under uvicorn on 127.0.0.1, with a Starlette app and a
FastAPI app, on PostgreSQL (asyncpg, psycopg) or, without it, SQLite (aiosqlite).

Each run sends 1,000 requests from 16 concurrent clients: plain writes, streamed
bodies that read and write while they stream, views that fail, clients that hang up
mid-stream, and (FastAPI) sync endpoints with a sync session on worker threads.
Once the server has finished every request, the checks: no connection checked out,
no PostgreSQL backend idle in a transaction, and exactly the rows of the requests
that should have committed. Then the two examples are run as scripts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import logging
import random
import socket
import threading
import time
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy is not installed: the servers run on real databases"
)

import psycopg
import sqlalchemy as sa
from helpers import (
    Base,
    Note,
    backends,
    drop_schema,
    get_and_leave,
    libpq_url,
    make_async_engine,
    make_sqlite_engine,
    postgres_url,
    run_example,
)

pytest.importorskip("greenlet")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from scoped_session import ScopedSession
from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 16
TIMEOUT = 30.0
CHUNK = b"x" * 1024
STREAM_BODY = CHUNK * 8 + b"end"
#: 1,000 requests per run; "sync" is FastAPI's (Starlette runs more "plain").
MIX = {"plain": 400, "stream": 250, "fail": 100, "disconnect": 100, "sync": 150}
#: What each kind commits, by note prefix.
COMMITS = {
    "plain": ["plain"],
    "stream": ["stream", "streamtail"],
    "fail": [],
    "disconnect": ["disc"],  # before the status; never "disctail", written mid-stream
    "sync": ["sync"],
}
#: What the library logs when a session outlived its request.
LEAK_SIGNS = ("without remove()", "was dropped", "event loop is gone", "could not be closed")

Message = t.MutableMapping[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]
App = t.Callable[[Message, Receive, Send], t.Awaitable[None]]


class ServerDB(t.NamedTuple):
    kind: str  # "sqlite", "asyncpg" or "psycopg"
    url: str  # the SQLite file, or the PostgreSQL URL
    app_name: str
    schema: str


#: The database each framework's run uses on PostgreSQL; without it, SQLite.
PG_DRIVER = {"starlette": "asyncpg", "fastapi": "psycopg"}


@pytest.fixture(params=["starlette", "fastapi"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[tuple[str, ServerDB]]:
    """A framework and its database: PostgreSQL (asyncpg for Starlette, psycopg for
    FastAPI) when configured, else a SQLite file (aiosqlite). Two runs of 1,000
    requests keep the file under half a minute; the in-process tests cover every
    database with each framework."""
    framework: str = request.param
    if framework == "fastapi":
        pytest.importorskip("fastapi")
    pg = postgres_url()
    if pg is None:
        pytest.importorskip("aiosqlite")
        yield framework, ServerDB("sqlite", str(tmp_path / "server.db"), "", "")
        return
    kind = PG_DRIVER[framework]
    pytest.importorskip(kind)
    tag = uuid.uuid4().hex[:12]
    db = ServerDB(kind, pg, f"ss-asgi-{tag}", f"ss_{tag}")
    with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {db.schema}")
    yield framework, db
    drop_schema(pg, db.schema)


def sync_engine(db: ServerDB) -> sa.Engine:
    """The sync engine of the test (and of FastAPI's sync endpoints): SQLite in WAL
    mode with a long busy timeout; PostgreSQL in the test's schema."""
    if db.kind == "sqlite":
        return make_sqlite_engine(f"sqlite:///{db.url}", wal=True)
    return sa.create_engine(
        sa.make_url(db.url).set(drivername="postgresql+psycopg"),
        connect_args={"application_name": db.app_name, "options": f"-csearch_path={db.schema}"},
        pool_size=8,
        max_overflow=12,
    )


def async_engine(db: ServerDB) -> AsyncEngine:
    if db.kind == "sqlite":
        engine: AsyncEngine = make_async_engine(
            "sqlite", db.url, connect_args={"timeout": 30}, pool_size=8, max_overflow=12
        )[0]

        @sa.event.listens_for(engine.sync_engine, "connect")
        def wal(dbapi_connection: t.Any, record: object) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    kind = db.kind
    if kind == "asyncpg":
        connect_args: dict[str, t.Any] = {
            "server_settings": {"application_name": db.app_name, "search_path": db.schema}
        }
    else:
        connect_args = {"application_name": db.app_name, "options": f"-csearch_path={db.schema}"}
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(
        sa.make_url(db.url).set(drivername=f"postgresql+{kind}"),
        connect_args=connect_args,
        pool_size=8,
        max_overflow=12,
    )


class InFlight:
    """Counts HTTP requests whose app call has not returned yet, so that the test
    waits for the server's work to be over instead of guessing."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._count = 0
        self._cond = threading.Condition()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._cond:
            self._count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


class Wiring(t.NamedTuple):
    app: InFlight
    sessions: list[AsyncScopedSession[t.Any] | ScopedSession[t.Any]]
    engine: AsyncEngine
    sync_engine: sa.Engine


def make_app(framework: str, db: ServerDB) -> Wiring:
    engine = async_engine(db)
    sync = sync_engine(db)
    Base.metadata.create_all(sync)
    Session: AsyncScopedSession[AsyncSession] = AsyncScopedSession(async_sessionmaker(engine))
    SyncDB: ScopedSession[SyncSession] = ScopedSession(sessionmaker(sync), scope="context")

    async def plain(request: Request) -> Response:
        Session.add(Note(text=f"plain-{request.query_params['id']}"))
        return PlainTextResponse("plain")

    async def stream(request: Request) -> Response:
        request_id = request.query_params["id"]
        Session.add(Note(text=f"stream-{request_id}"))

        async def body() -> t.AsyncIterator[bytes]:
            # Runs while the server sends the body, on the request's session. The
            # first chunk commits what the view wrote; the tail is committed after
            # the last one. (Written before any read of its transaction: SQLite
            # cannot turn a read into a write once another connection wrote.)
            await Session.scalar(sa.select(sa.func.count()).select_from(Note))
            yield CHUNK
            Session.add(Note(text=f"streamtail-{request_id}"))
            await Session.flush()
            for _ in range(7):
                await Session.scalar(sa.select(sa.func.count()).select_from(Note))
                yield CHUNK
            yield b"end"

        return StreamingResponse(body())

    async def fail(request: Request) -> Response:
        Session.add(Note(text=f"fail-{request.query_params['id']}"))
        await Session.flush()
        raise RuntimeError("the view failed")

    async def disconnect(request: Request) -> Response:
        request_id = request.query_params["id"]
        Session.add(Note(text=f"disc-{request_id}"))

        async def body() -> t.AsyncIterator[bytes]:
            await Session.scalar(sa.select(sa.func.count()).select_from(Note))
            yield CHUNK * 4  # the status goes out: what the view wrote is committed
            Session.add(Note(text=f"disctail-{request_id}"))  # never flushed, never kept
            for _ in range(2):
                yield CHUNK * 4
            # More than the client reads: it hangs up now, and Starlette, which
            # listens for that, cancels this body.
            await asyncio.Event().wait()

        return StreamingResponse(body())

    async def lifespan(app: object) -> t.AsyncIterator[None]:
        yield
        await engine.dispose()  # on the server's loop, where its connections live

    routes = [
        Route("/plain", plain),
        Route("/stream", stream),
        Route("/fail", fail),
        Route("/disconnect", disconnect),
    ]
    inner: App
    if framework == "starlette":
        inner = Starlette(routes=routes, lifespan=contextlib.asynccontextmanager(lifespan))
    else:
        from fastapi import Depends, FastAPI

        api = FastAPI(lifespan=contextlib.asynccontextmanager(lifespan))
        api.router.routes.extend(routes)

        def sync_db() -> SyncSession:  # a sync dependency: runs on a worker thread
            return SyncDB()

        @api.get("/sync")
        def sync_view(id: str, session: SyncSession = Depends(sync_db)) -> str:  # noqa: B008
            assert SyncDB() is session  # another worker thread, the request's session
            session.add(Note(text=f"sync-{id}"))
            return "sync"

        inner = api
    app = InFlight(ScopedSessionMiddleware(inner, Session, SyncDB, commit=True))
    return Wiring(app, [Session, SyncDB], engine, sync)


@contextlib.contextmanager
def uvicorn_server(app: App) -> t.Iterator[int]:
    """uvicorn in a thread of its own, on a socket bound to 127.0.0.1:0 beforehand."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)  # clients may connect before the server accepts
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        loop="asyncio",
        lifespan="on",
        log_level="critical",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        sock.close()


# -- clients -------------------------------------------------------------------------------


class Outcome(t.NamedTuple):
    kind: str
    status: int
    body: bytes | None  # None: the client left


def hit(port: int, kind: str, request_id: str) -> Outcome:
    if kind == "disconnect":
        return hit_and_leave(port, request_id)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"/{kind}?id={request_id}")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return Outcome(kind, response.status, body)


def hit_and_leave(port: int, request_id: str) -> Outcome:
    """Read the status and the start of the body, then leave with a reset."""
    status = get_and_leave(port, f"/disconnect?id={request_id}", 8192, TIMEOUT)
    return Outcome("disconnect", status, None)


EXPECTED = {
    "plain": (200, b"plain"),
    "stream": (200, STREAM_BODY),
    "fail": (500, b"Internal Server Error"),
    "disconnect": (200, None),
    "sync": (200, b'"sync"'),
}


def load(port: int, mix: dict[str, int], seed: int) -> list[Outcome]:
    plan = [kind for kind, count in mix.items() for _ in range(count)]
    random.Random(seed).shuffle(plan)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(hit, port, kind, uuid.uuid4().hex) for kind in plan]
        return [future.result(timeout=TIMEOUT * 4) for future in futures]


def backends_gone(db: ServerDB) -> bool:
    """Whether every backend of the run has exited. A backend leaves
    pg_stat_activity a moment after its client said goodbye: wait for that,
    bounded."""
    deadline = time.monotonic() + TIMEOUT
    while backends(db.url, db.app_name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- the runs ------------------------------------------------------------------------------


def test_uvicorn_serves_a_thousand_requests_and_leaves_nothing_open(
    setup: tuple[str, ServerDB], caplog: pytest.LogCaptureFixture
) -> None:
    framework, db = setup
    mix = dict(MIX)
    if framework == "starlette":
        mix["plain"] += mix.pop("sync")
    wiring = make_app(framework, db)
    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        with uvicorn_server(wiring.app) as port:
            outcomes = load(port, mix, seed=7)
            assert wiring.app.wait_idle(TIMEOUT)  # every request's app call is over
            assert wiring.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            assert wiring.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            if db.kind != "sqlite":
                states = [state for _, state in backends(db.url, db.app_name)]
                assert states, "the run used no connection"
                assert all(state == "idle" for state in states), states
        # The server has stopped: its lifespan disposed of the async engine.
        wiring.sync_engine.dispose()
        if db.kind != "sqlite":
            assert backends_gone(db)
    assert len(outcomes) == sum(mix.values()) >= 1000
    wrong = [o for o in outcomes if (o.status, o.body) != EXPECTED[o.kind]]
    assert wrong == []
    with wiring.sync_engine.connect() as conn:
        texts = conn.execute(sa.select(Note.text)).scalars().all()
    wiring.sync_engine.dispose()
    committed = collections.Counter(text.rsplit("-", 1)[0] for text in texts)
    expected: collections.Counter[str] = collections.Counter()
    for kind, count in mix.items():
        for prefix in COMMITS[kind]:
            expected[prefix] += count
    assert committed == expected
    # One session per request of each kind that uses one; each closed by its unit.
    assert wiring.sessions[0]._stats.created == len(outcomes) - mix.get("sync", 0)
    assert wiring.sessions[1]._stats.created == mix.get("sync", 0)
    for scoped in wiring.sessions:
        assert scoped._stats.created == scoped._stats.removed
        assert scoped._stats.reaped == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "scoped_session"]
    assert [m for m in messages if any(sign in m for sign in LEAK_SIGNS)] == []


# -- the examples, as scripts ----------------------------------------------------------------


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("example", ["asgi_app.py", "fastapi_app.py"])
def test_the_example_serves_as_a_script(example: str, tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    if example == "fastapi_app.py":
        pytest.importorskip("fastapi")
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'ex.db'}"
    with run_example(ROOT / "examples" / example, db_url, tmp_path, TIMEOUT) as run:
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=TIMEOUT)
        try:
            for text in ("hello there", "second"):
                conn.request(
                    "POST",
                    "/notes",
                    body=f"text={text.replace(' ', '+')}",
                    headers=FORM,
                )
                response = conn.getresponse()
                response.read()
                assert response.status == 303
            conn.request(
                "POST",
                "/notes",
                body="text=",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 400  # nothing committed for it
            conn.request("GET", "/notes")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello there\nsecond\n")
            conn.request("GET", "/")
            response = conn.getresponse()
            page = response.read()
            assert response.status == 200
            assert b"<li>second</li>" in page
        finally:
            conn.close()
    assert run.returncode == 0, run.err
    assert "connections left checked out: 0" in run.out
