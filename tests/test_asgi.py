"""ScopedSessionMiddleware for ASGI, driven in process: a unit per HTTP request ended
right after the last body message, also on errors, disconnects and cancellation;
websocket and lifespan scopes; sync sessions on worker threads; Starlette and
FastAPI apps. Real AsyncSession objects on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import operator
import threading
import typing as t

import pytest
from fakes import HAS_SQLALCHEMY, AsyncTrivialSession, TrivialSession

from scoped_session import ScopedSession
from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession

# The tests on real databases skip without SQLAlchemy, or greenlet, which its asyncio
# extension needs (their fixtures: adb, sqlite_adb, db, sqlite_engine).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import AsyncDatabase, AsyncDB, Database, Note
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session as SyncSession
    from sqlalchemy.orm import sessionmaker

Message = t.MutableMapping[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]
App = t.Callable[[Message, Receive, Send], t.Awaitable[None]]


def http_scope(path: str = "/", method: str = "GET") -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }


class Client:
    """One HTTP exchange with an ASGI app, as a server would drive it. With
    ``leave_after`` the client goes away once that many body messages arrived:
    the next send raises OSError (as uvicorn's does) and receive says disconnect."""

    def __init__(self, leave_after: int | None = None) -> None:
        self.sent: list[Message] = []
        self.leave_after = leave_after
        self.gone = asyncio.Event()
        self._requested = False

    async def receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.gone.is_set():
            raise OSError("the client went away")
        self.sent.append(message)
        bodies = [m for m in self.sent if m["type"] == "http.response.body"]
        if self.leave_after is not None and len(bodies) >= self.leave_after:
            self.gone.set()

    async def __call__(self, app: App, path: str = "/", method: str = "GET") -> Client:
        await app(http_scope(path, method), self.receive, self.send)
        return self

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def start(send: Send, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})


async def body(send: Send, data: bytes, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


def notes_app(
    Session: AsyncScopedSession[AsyncSession], db: AsyncDatabase, seen: dict[str, t.Any]
) -> App:
    """A bare ASGI app: ``/stream`` writes a note and streams three chunks from the
    request's session; ``/fail`` writes, then raises; ``/bad`` answers 400."""

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        path = scope["path"]
        session = Session()
        Session.add(Note(text=path))
        await Session.flush()
        if path == "/fail":
            raise RuntimeError("the view failed")
        await start(send, 400 if path == "/bad" else 200)
        if path == "/stream":
            for i in range(3):
                assert Session() is session  # the same session while the body streams
                seen.setdefault("checkedout", []).append(db.checkedout())
                n = await Session.scalar(sa.select(sa.func.count()).select_from(Note))
                Session.add(Note(text=f"{path}-{i}"))
                await body(send, f"{n}\n".encode(), more=True)
        await body(send, b"end")
        # The last body message is out: the unit is over before the app returns.
        seen["after_last_body"] = (
            Session.registry.has(),
            db.checkedout(),
            session.in_transaction(),
        )

    return app


def assert_clean(db: AsyncDatabase) -> None:
    assert db.checkedout() == 0
    assert db.idle_in_transaction() == 0


async def texts(db: AsyncDatabase) -> list[str]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(sa.select(Note.text).order_by(Note.id))).scalars())


# -- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("commit", [False, True])
def test_a_unit_per_request_ends_right_after_the_last_body_message(
    adb: AsyncDB, commit: bool
) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))
        seen: dict[str, t.Any] = {}
        app = ScopedSessionMiddleware(notes_app(Session, db, seen), Session, commit=commit)
        client = await Client()(app, "/stream")
        assert client.status == 200
        assert client.body == b"1\n2\n3\nend"
        # One connection kept while streaming; with commit=True the first body
        # message commits (and gives it back), the rest of the stream takes one again.
        assert seen["checkedout"] == ([1, 0, 1] if commit else [1, 1, 1])
        assert seen["after_last_body"] == (False, 0, False)
        committed = ["/stream", "/stream-0", "/stream-1", "/stream-2"] if commit else []
        assert await texts(db) == committed
        assert Session._stats.created == Session._stats.removed == 1
        assert_clean(db)

    adb.run(run)


def test_commit_happens_before_the_status_goes_out(adb: AsyncDB) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))
        seen: dict[str, t.Any] = {}
        app = ScopedSessionMiddleware(notes_app(Session, db, seen), Session, commit=True)
        at_start: list[list[str]] = []

        class Watching(Client):
            async def send(self, message: Message) -> None:
                if message["type"] == "http.response.start":
                    at_start.append(await texts(db))
                await super().send(message)

        await Watching()(app, "/plain")
        assert at_start == [["/plain"]]
        bad = await Client()(app, "/bad")
        assert bad.status == 400
        with pytest.raises(RuntimeError, match="the view failed"):
            await Client()(app, "/fail")
        assert await texts(db) == ["/plain"]  # not the 400's, not the failed view's
        assert_clean(db)

    adb.run(run)


def test_a_failed_commit_raises_before_anything_is_sent(
    adb: AsyncDB, caplog: pytest.LogCaptureFixture
) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))

        async def duplicate(scope: Message, receive: Receive, send: Send) -> None:
            Session.add(Note(text="same"))
            Session.add(Note(text="same"))  # the commit's flush fails on the unique key
            await start(send)
            await body(send, b"never sent")

        app = ScopedSessionMiddleware(duplicate, Session, commit=True)
        client = Client()
        with pytest.raises(sa.exc.IntegrityError):
            await client(app, "/dup", "POST")
        assert client.sent == []  # the server answers 500 for it
        assert await texts(db) == []
        assert_clean(db)

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        adb.run(run)
    messages = [r.getMessage() for r in caplog.records if r.name == "scoped_session"]
    assert any("Committing a session failed for POST /dup" in m for m in messages)


def test_a_failed_commit_after_the_stream_is_raised_once_the_response_is_out(
    sqlite_adb: AsyncDB, caplog: pytest.LogCaptureFixture
) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))

        async def app(scope: Message, receive: Receive, send: Send) -> None:
            Session.add(Note(text="view"))
            await start(send)
            await body(send, b"first", more=True)  # commits the view's note
            Session.add(Note(text="view"))  # the stream's write: a duplicate
            await body(send, b"last")

        client = Client()
        with pytest.raises(sa.exc.IntegrityError):
            await client(ScopedSessionMiddleware(app, Session, commit=True), "/dup")
        assert (client.status, client.body) == (200, b"firstlast")  # sent whole first
        assert await texts(db) == ["view"]
        assert_clean(db)

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        sqlite_adb.run(run)
    messages = [r.getMessage() for r in caplog.records if r.name == "scoped_session"]
    assert any("Committing a session failed for GET /dup" in m for m in messages)


def test_a_client_that_leaves_mid_stream_gets_its_writes_rolled_back(adb: AsyncDB) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))
        seen: dict[str, t.Any] = {}
        app = ScopedSessionMiddleware(notes_app(Session, db, seen), Session, commit=True)
        client = Client(leave_after=2)
        with pytest.raises(OSError, match="went away"):
            await client(app, "/stream")
        # Committed before the status went out (with the first chunk's write);
        # what the stream wrote after that is not.
        assert await texts(db) == ["/stream", "/stream-0"]
        assert "after_last_body" not in seen
        assert_clean(db)

    adb.run(run)


def test_an_app_that_returns_after_a_disconnect_is_ended_too(sqlite_adb: AsyncDB) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))

        async def app(scope: Message, receive: Receive, send: Send) -> None:
            assert (await receive())["type"] == "http.request"
            Session.add(Note(text="x"))
            await Session.flush()
            await start(send)
            await body(send, b"first", more=True)
            message = await receive()  # the client is gone: stop quietly
            assert message["type"] == "http.disconnect"

        client = Client(leave_after=1)
        await client(ScopedSessionMiddleware(app, Session, commit=True), "/x")
        assert await texts(db) == ["x"]  # committed before the status; nothing after
        assert Session._stats.removed == 1
        assert_clean(db)

    sqlite_adb.run(run)


def test_a_cancelled_request_is_rolled_back_and_closed(adb: AsyncDB) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))
        streaming = asyncio.Event()

        async def app(scope: Message, receive: Receive, send: Send) -> None:
            await start(send)
            Session.add(Note(text="half"))
            await Session.flush()
            await body(send, b"chunk", more=True)
            streaming.set()
            await asyncio.Event().wait()  # stuck until the server cancels it

        task = asyncio.create_task(Client()(ScopedSessionMiddleware(app, Session), "/"))
        await streaming.wait()
        assert db.checkedout() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await texts(db) == []
        assert_clean(db)

    adb.run(run)


def test_lifespan_passes_through_untouched() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)
    calls: list[tuple[Message, bool]] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        calls.append((scope, Session.registry.has()))
        message = await receive()
        await send({"type": f"{message['type']}.complete"})

    async def main() -> list[Message]:
        scope: Message = {"type": "lifespan", "asgi": {"version": "3.0"}}
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "lifespan.startup"}

        async def send(message: Message) -> None:
            sent.append(message)

        await ScopedSessionMiddleware(app, Session)(scope, receive, send)
        assert calls == [(scope, False)]
        return sent

    assert asyncio.run(main()) == [{"type": "lifespan.startup.complete"}]
    assert Session._stats.created == 0


def test_a_websocket_gets_one_unit_for_its_connection(sqlite_adb: AsyncDB) -> None:
    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine))
        sessions: list[AsyncSession] = []

        async def app(scope: Message, receive: Receive, send: Send) -> None:
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                sessions.append(Session())
                Session.add(Note(text=message["text"]))
                await Session.flush()
                await send({"type": "websocket.send", "text": "ok"})

        incoming: list[Message] = [{"type": "websocket.connect"}]
        incoming += [{"type": "websocket.receive", "text": f"m{i}"} for i in range(3)]
        incoming.append({"type": "websocket.disconnect", "code": 1000})
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            assert db.checkedout() == (1 if sessions else 0)
            sent.append(message)

        scope: Message = {"type": "websocket", "path": "/ws", "headers": []}
        await ScopedSessionMiddleware(app, Session, commit=True)(scope, receive, send)
        assert len(sent) == 4
        assert len(sessions) == 3
        assert len(set(map(id, sessions))) == 1
        assert await texts(db) == ["m0", "m1", "m2"]
        assert_clean(db)

    sqlite_adb.run(run)


# -- sync sessions on worker threads ---------------------------------------------------------


def test_a_sync_session_follows_the_request_onto_worker_threads(db: Database) -> None:
    closed_on: list[int] = []

    class Recording(SyncSession):
        def close(self) -> None:
            closed_on.append(threading.get_ident())
            super().close()

    Session: ScopedSession[SyncSession] = ScopedSession(
        sessionmaker(db.engine, class_=Recording), scope="context"
    )
    seen: dict[str, list[object]] = {}

    def sync_view(path: str, step: int) -> None:  # on a worker thread, like a sync endpoint
        seen.setdefault(path, []).append(Session())
        Session.add(Note(text=f"{path}-{step}"))
        Session.flush()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        path = scope["path"]
        await asyncio.to_thread(sync_view, path, 1)
        await asyncio.to_thread(sync_view, path, 2)
        seen[path].append(Session())  # and in the request's own task
        await start(send)
        await body(send, b"ok")

    async def main() -> None:
        wrapped = ScopedSessionMiddleware(app, Session, commit=True)
        requests = [Client()(wrapped, f"/r{i}") for i in range(8)]
        if db.kind == "postgres":
            await asyncio.gather(*requests)
        else:  # SQLite deadlocks two writers in long transactions: one at a time
            for request in requests:
                await request

    loop_thread = threading.get_ident()
    asyncio.run(main())
    assert len(seen) == 8
    for sessions in seen.values():
        assert len(sessions) == 3
        assert len(set(map(id, sessions))) == 1  # one session per request, any thread
    assert len({id(s[0]) for s in seen.values()}) == 8
    assert len(closed_on) == 8
    assert loop_thread not in closed_on  # closed on a worker thread, not the loop's
    assert db.count_notes() == 16
    assert db.checkedout() == 0
    assert db.idle_in_transaction() == 0


def test_a_thread_scoped_session_is_refused() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        pass

    with pytest.raises(ValueError, match="scope='context'"):
        ScopedSessionMiddleware(app, ScopedSession(TrivialSession))


def test_bad_arguments_say_what_to_do() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        pass

    with pytest.raises(TypeError, match="ASGI application first"):
        ScopedSessionMiddleware(Session, Session)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncScopedSession or ScopedSession"):
        ScopedSessionMiddleware(app, TrivialSession)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        ScopedSessionMiddleware(app, Session, Session)
    with pytest.raises(TypeError, match="commit must be"):
        ScopedSessionMiddleware(app, Session, commit="yes")  # type: ignore[arg-type]
    assert "sessions=1" in repr(ScopedSessionMiddleware(app, Session))


class FailingClose(AsyncTrivialSession):
    async def close(self) -> None:
        await super().close()
        raise OSError("close failed")


def test_every_session_is_ended_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    Failing = AsyncScopedSession(FailingClose)
    Fine = AsyncScopedSession(AsyncTrivialSession)
    made: list[AsyncTrivialSession] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        made.extend([Failing(), Fine()])
        await start(send)
        await body(send, b"ok")

    async def main() -> Client:
        client = Client()
        with pytest.raises(OSError, match="close failed"):
            await client(ScopedSessionMiddleware(app, Failing, Fine), "/two")
        return client

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        client = asyncio.run(main())
    assert client.body == b"ok"  # the response went out whole first
    assert [s.closed for s in made] == [1, 1]
    assert any("Closing a session failed for GET /two" in r.getMessage() for r in caplog.records)


# -- frameworks ------------------------------------------------------------------------------


def test_starlette_streaming_background_and_base_http_middleware(sqlite_adb: AsyncDB) -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def run(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine), strict=True)

        async def audit(text: str) -> None:  # runs after the response: a unit of its own
            async with Session.scope(commit=True):
                Session.add(Note(text=text))

        async def add(request: Request) -> Response:
            Session.add(Note(text=request.path_params["text"]))
            text = request.path_params["text"]
            return PlainTextResponse("added", background=BackgroundTask(audit, f"audit-{text}"))

        async def export(request: Request) -> Response:
            async def lines() -> t.AsyncIterator[str]:
                result = await Session.stream(sa.select(Note.text).order_by(Note.id))
                async for text in result.scalars():
                    yield f"{text}\n"

            return StreamingResponse(lines())

        async def timing(request: Request, call_next: RequestResponseEndpoint) -> Response:
            return await call_next(request)  # the endpoint runs in a task of its own

        starlette = Starlette(
            routes=[Route("/add/{text}", add, methods=["POST"]), Route("/export", export)],
            middleware=[Middleware(BaseHTTPMiddleware, dispatch=timing)],
        )
        app = ScopedSessionMiddleware(starlette, Session, commit=True)
        for text in ("one", "two"):
            assert (await Client()(app, f"/add/{text}", "POST")).body == b"added"
        exported = await Client()(app, "/export")
        assert exported.body == b"one\naudit-one\ntwo\naudit-two\n"
        assert Session._stats.created == Session._stats.removed == 5
        assert_clean(db)

    sqlite_adb.run(run)


def test_fastapi_sync_and_async_endpoints_share_the_requests_sessions(
    sqlite_adb: AsyncDB, sqlite_engine: sa.Engine
) -> None:
    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI

    async def run(db: AsyncDatabase) -> None:
        AsyncDBSession = AsyncScopedSession(async_sessionmaker(db.engine))
        SyncDBSession: ScopedSession[SyncSession] = ScopedSession(
            sessionmaker(sqlite_engine), scope="context"
        )
        seen: dict[str, list[SyncSession]] = {}

        def sync_dependency() -> SyncSession:  # FastAPI runs it on a worker thread
            session = SyncDBSession()
            seen.setdefault("dependency", []).append(session)
            return session

        api = FastAPI()

        @api.post("/sync/{text}")
        def sync_endpoint(
            text: str,
            session: SyncSession = Depends(sync_dependency),  # noqa: B008 - FastAPI's way
        ) -> dict[str, t.Any]:
            assert SyncDBSession() is session  # another worker thread, the same session
            seen.setdefault("endpoint", []).append(session)
            SyncDBSession.add(Note(text=text))
            return {"ok": True}

        async def async_dependency() -> AsyncSession:
            return AsyncDBSession()

        @api.post("/async/{text}")
        async def async_endpoint(
            text: str,
            session: AsyncSession = Depends(async_dependency),  # noqa: B008
        ) -> dict[str, int]:
            assert AsyncDBSession() is session
            AsyncDBSession.add(Note(text=text))
            await AsyncDBSession.flush()
            count = await AsyncDBSession.scalar(sa.select(sa.func.count()).select_from(Note))
            return {"count": int(count or 0)}

        app = ScopedSessionMiddleware(api, AsyncDBSession, SyncDBSession, commit=True)
        for i in range(3):
            client = await Client()(app, f"/sync/s{i}", "POST")
            assert client.status == 200, client.body
        assert all(map(operator.is_, seen["dependency"], seen["endpoint"]))
        assert len(set(map(id, seen["endpoint"]))) == 3  # a session per request (all alive)
        answers = await asyncio.gather(*(Client()(app, f"/async/a{i}", "POST") for i in range(4)))
        assert [a.status for a in answers] == [200] * 4
        # Both engines are on the same SQLite file (tmp_path/test.db).
        assert sorted(await texts(db)) == ["a0", "a1", "a2", "a3", "s0", "s1", "s2"]
        assert sqlite_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert_clean(db)

    sqlite_adb.run(run)


def test_a_close_that_waits_finishes_when_the_request_is_cancelled_meanwhile() -> None:
    # The ending runs inline until it first waits, then in a task of its own
    # that a cancellation of the request does not reach.
    closing = asyncio.Event()
    release = asyncio.Event()
    closed: list[bool] = []

    class SlowSession:
        async def close(self) -> None:
            closing.set()
            await release.wait()
            closed.append(True)

    Session = AsyncScopedSession(SlowSession)

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        Session()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def main() -> None:
        middleware = ScopedSessionMiddleware(app, Session)
        task = asyncio.create_task(middleware(http_scope(), receive, send))
        await asyncio.wait_for(closing.wait(), 10)
        task.cancel()
        await asyncio.sleep(0)
        assert not task.done()  # still waiting for the close, not abandoning it
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert closed == [True]
        assert Session.stats().live == 0

    asyncio.run(main())
