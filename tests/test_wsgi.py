"""ScopedSessionMiddleware driven step by step, the way a WSGI server drives it."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import typing as t
import weakref
import wsgiref.util
from pathlib import Path

import pytest
from fakes import HAS_SQLALCHEMY, TrivialSession, needs_sqlalchemy
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from scoped_session import ScopedSession
from scoped_session.wsgi import ScopedSessionMiddleware

# The tests on real databases skip without SQLAlchemy (their fixtures, or the mark).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Database, Note
    from sqlalchemy.orm import Session as SASession
    from sqlalchemy.orm import sessionmaker

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

EXAMPLE = Path(__file__).parent.parent / "examples" / "wsgi_app.py"


def make_environ(
    path: str = "/", method: str = "GET", extra: dict[str, t.Any] | None = None
) -> WSGIEnvironment:
    builder = EnvironBuilder(path=path, method=method)
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ.update(extra or {})
    return environ


class Server:
    """What a WSGI server sees of one request: the status, the headers, the body."""

    def __init__(self, on_status: t.Callable[[str], None] | None = None) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.written: list[bytes] = []
        self.on_status = on_status

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> t.Callable[[bytes], object]:
        if exc_info is not None and self.written:
            raise exc_info[1].with_traceback(exc_info[2])  # type: ignore[union-attr]
        if self.on_status is not None:
            self.on_status(status)
        self.status, self.headers = status, headers
        return self.written.append

    def run(self, app: WSGIApplication, environ: WSGIEnvironment | None = None) -> bytes:
        """Call the app, read the whole body, close the response."""
        body = app(environ or make_environ(), self.start_response)
        try:
            for chunk in body:
                self.written.append(chunk)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return b"".join(self.written)


class Recorder:
    """A scoped session of TrivialSessions that remembers every session it made."""

    def __init__(
        self, session_class: type[TrivialSession] = TrivialSession, scope: str = "thread"
    ) -> None:
        self.made: list[TrivialSession] = []

        def factory(**kw: t.Any) -> TrivialSession:
            session = session_class(**kw)
            self.made.append(session)
            return session

        self.Session: ScopedSession[TrivialSession] = ScopedSession(factory, scope=scope)


def ok(start_response: StartResponse) -> None:
    start_response("200 OK", [("Content-Type", "text/plain")])


def notes(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(Note.text).order_by(Note.text)).scalars())


def assert_no_leaks(db: Database) -> None:
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.idle_in_transaction() == 0


# -- construction -------------------------------------------------------------


def noop_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    ok(start_response)
    return [b""]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((42, None), {}, TypeError, "WSGI application first"),
        ((noop_app, "Session"), {}, TypeError, "takes ScopedSession objects"),
        ((noop_app, None), {"commit": 1}, TypeError, "commit must be True or False"),
        ((noop_app, None), {"commit": True, "veto": 3}, TypeError, "veto must be a callable"),
        ((noop_app, None), {"veto": lambda *a: True}, ValueError, "pass commit=True"),
    ],
)
def test_bad_arguments_say_what_to_pass(
    args: tuple[t.Any, ...], kwargs: dict[str, t.Any], error: type[Exception], match: str
) -> None:
    Session = ScopedSession(TrivialSession)
    args = tuple(Session if a is None else a for a in args)
    with pytest.raises(error, match=match):
        ScopedSessionMiddleware(*args, **kwargs)


@needs_sqlalchemy
def test_a_sessionmaker_is_refused_with_what_to_pass_instead() -> None:
    with pytest.raises(TypeError, match=r"ScopedSession\(sessionmaker"):
        ScopedSessionMiddleware(noop_app, sessionmaker())  # type: ignore[arg-type]


def test_the_same_session_twice_is_an_error() -> None:
    Session = ScopedSession(TrivialSession)
    with pytest.raises(ValueError, match="passed to ScopedSessionMiddleware"):
        ScopedSessionMiddleware(noop_app, Session, Session)


def test_attributes_and_repr() -> None:
    a, b = ScopedSession(TrivialSession), ScopedSession(TrivialSession)
    mw = ScopedSessionMiddleware(noop_app, a, b, commit=True)
    assert mw.app is noop_app
    assert mw.sessions == (a, b)
    assert mw.commit is True
    assert mw.veto is None
    assert "sessions=2" in repr(mw)


# -- a unit per request ---------------------------------------------------------


def test_a_finished_body_ends_the_unit_when_the_app_returns() -> None:
    rec = Recorder()
    Session = rec.Session
    body = [b"hello"]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        assert not Session.registry.has()  # opened fresh, before the app runs
        Session().info = "used"  # type: ignore[attr-defined]
        ok(start_response)
        return body

    server = Server()
    result = ScopedSessionMiddleware(app, Session)(make_environ(), server.start_response)
    assert result is body  # handed to the server untouched
    assert [s.closed for s in rec.made] == [1]
    assert not Session.registry.has()


def test_each_request_gets_a_fresh_session_and_an_outer_one_comes_back() -> None:
    rec = Recorder()
    Session = rec.Session
    outer = Session()
    seen: list[TrivialSession] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen.append(Session())
        ok(start_response)
        return [b""]

    mw = ScopedSessionMiddleware(app, Session)
    for _ in range(3):
        Server().run(mw)
    assert len(set(map(id, seen))) == 3
    assert outer not in seen
    assert all(s.closed == 1 for s in seen)
    assert Session() is outer
    assert outer.closed == 0
    Session.remove()


def test_a_streamed_body_uses_the_views_session_until_close() -> None:
    rec = Recorder()
    Session = rec.Session
    events: list[str] = []

    class Body:
        def __init__(self, view_session: TrivialSession) -> None:
            self.view_session = view_session
            self.chunks = iter([b"a", b"b"])

        def __iter__(self) -> Body:
            return self

        def __next__(self) -> bytes:
            assert Session() is self.view_session
            return next(self.chunks)

        def close(self) -> None:
            # The app's own close() runs first, still inside the unit.
            assert Session() is self.view_session
            events.append(f"body closed, session closed={self.view_session.closed}")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Body:
        ok(start_response)
        return Body(Session())

    server = Server()
    response = ScopedSessionMiddleware(app, Session)(make_environ(), server.start_response)
    assert rec.made[0].closed == 0  # the app returned; the body has not run
    assert list(response) == [b"a", b"b"]
    assert rec.made[0].closed == 0  # read to the end, not yet closed
    response.close()  # type: ignore[attr-defined]
    assert events == ["body closed, session closed=0"]
    assert rec.made[0].closed == 1
    response.close()  # type: ignore[attr-defined]  # idempotent
    assert rec.made[0].closed == 1
    assert len(rec.made) == 1
    assert not Session.registry.has()


def test_an_app_that_raises_ends_its_unit_at_once() -> None:
    rec = Recorder()
    Session = rec.Session

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        Session()
        raise LookupError("view failed")

    with pytest.raises(LookupError, match="view failed"):
        ScopedSessionMiddleware(app, Session)(make_environ(), Server().start_response)
    assert [s.closed for s in rec.made] == [1]
    assert not Session.registry.has()


def test_a_body_that_raises_on_its_first_chunk_ends_its_unit_at_once() -> None:
    rec = Recorder()
    Session = rec.Session
    closed_body: list[bool] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session()

        def body() -> t.Iterator[bytes]:
            try:
                start_response("200 OK", [])
                raise LookupError("body failed")
                yield b""
            finally:
                closed_body.append(True)

        return body()

    response = ScopedSessionMiddleware(app, Session)(make_environ(), Server().start_response)
    with pytest.raises(LookupError, match="body failed"):
        next(iter(response))
    assert closed_body == [True]
    assert [s.closed for s in rec.made] == [1]  # before the server calls close()
    response.close()  # type: ignore[attr-defined]
    assert [s.closed for s in rec.made] == [1]


def test_a_body_that_raises_later_is_ended_by_the_servers_close() -> None:
    rec = Recorder()
    Session = rec.Session

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        ok(start_response)
        Session()

        def body() -> t.Iterator[bytes]:
            yield b"first"
            raise LookupError("body failed")

        return body()

    server = Server()
    with pytest.raises(LookupError):
        server.run(ScopedSessionMiddleware(app, Session))
    assert server.written == [b"first"]
    assert [s.closed for s in rec.made] == [1]


def test_a_client_that_disconnects_mid_stream_still_gets_its_session_closed() -> None:
    rec = Recorder()
    Session = rec.Session
    finally_saw: list[int] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        ok(start_response)
        session = Session()

        def body() -> t.Iterator[bytes]:
            try:
                while True:
                    yield b"x" * 1024
            finally:
                # GeneratorExit from the server's close(): the session is still open.
                finally_saw.append(session.closed)

        return body()

    response = ScopedSessionMiddleware(app, Session)(make_environ(), Server().start_response)
    iterator = iter(response)
    next(iterator)
    next(iterator)
    response.close()  # type: ignore[attr-defined]  # the server saw the client go
    assert finally_saw == [0]
    assert [s.closed for s in rec.made] == [1]


def test_close_from_another_thread_ends_that_requests_unit() -> None:
    rec = Recorder()
    Session = rec.Session
    views: list[TrivialSession] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        views.append(Session())
        ok(start_response)
        return iter([b"a", b"b"])

    mw = ScopedSessionMiddleware(app, Session)
    response = mw(make_environ(), Server().start_response)
    assert list(response) == [b"a", b"b"]

    other: dict[str, TrivialSession] = {}

    def close_elsewhere() -> None:
        other["before"] = Session()  # the closing thread's own session
        response.close()  # type: ignore[attr-defined]
        other["after"] = Session()
        Session.remove()

    closer = threading.Thread(target=close_elsewhere)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()

    assert views[0].closed == 1
    assert other["before"] is other["after"]
    assert other["before"] not in views
    assert other["before"].closed == 1  # by its own remove(), once

    Server().run(mw)  # the next request on this thread
    assert views[1] is not views[0]
    assert views[1].closed == 1
    assert not Session.registry.has()


def test_close_from_another_thread_with_sqlalchemy(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session.execute(sa.text("SELECT 1"))  # checks out a connection
        ok(start_response)
        return iter([b"a"])

    mw = ScopedSessionMiddleware(app, Session)
    response = mw(make_environ(), Server().start_response)
    assert list(response) == [b"a"]
    assert db.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    closer = threading.Thread(target=response.close)  # type: ignore[attr-defined]
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    assert_no_leaks(db)
    assert not Session.registry.has()


# -- backstops for servers that never call close() ----------------------------------


def test_an_unclosed_response_that_is_collected_ends_its_unit_with_a_resource_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    Session = rec.Session

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session()
        ok(start_response)
        return iter([b"a"])

    response = ScopedSessionMiddleware(app, Session)(make_environ("/lost"), Server().start_response)
    assert list(response) == [b"a"]
    with (
        pytest.warns(ResourceWarning, match=r"GET /lost was garbage collected without close"),
        caplog.at_level(logging.WARNING, logger="scoped_session"),
    ):
        del response  # CPython finalizes it here: nothing else refers to it
    # Logged too, saying what to do: a ResourceWarning is hidden by default.
    [record] = [r for r in caplog.records if "garbage collected" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "call close() on the response" in record.getMessage()
    assert [s.closed for s in rec.made] == [1]
    assert not Session.registry.has()
    assert Session.stats().reaped == 1  # closed by a backstop


def test_a_new_request_never_ends_or_joins_an_earlier_unclosed_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    Session = rec.Session
    views: list[TrivialSession] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        views.append(Session())
        ok(start_response)
        return iter([b"a"])

    mw = ScopedSessionMiddleware(app, Session)
    first = mw(make_environ("/not-closed-yet"), Server().start_response)
    assert list(first) == [b"a"]  # read, not closed yet: it may still be running elsewhere
    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        Server().run(mw)
    assert views[1] is not views[0]  # a fresh session, not joined to the earlier unit
    assert views[1].closed == 1
    assert views[0].closed == 0  # left to its own response
    assert caplog.records == []
    first.close()  # type: ignore[attr-defined]
    assert views[0].closed == 1
    assert Session.stats()[1:] == (2, 2, 0)  # created, removed, reaped
    assert not Session.registry.has()


@pytest.mark.parametrize("end", ["closed", "collected", "body raises", "app raises", "list"])
@pytest.mark.parametrize("commit", [False, True])
def test_a_finished_request_is_not_kept_alive(end: str, commit: bool) -> None:
    rec = Recorder()
    Session = rec.Session

    def body() -> t.Iterator[bytes]:
        yield b"a"
        if end == "body raises":
            raise RuntimeError("the body failed")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        Session()
        ok(start_response)
        if end == "app raises":
            raise RuntimeError("the app failed")
        return [b"a"] if end == "list" else body()

    class Environ(dict[str, t.Any]):
        """A dict that can be weakly referenced."""

    def serve(environ: WSGIEnvironment) -> None:
        response = mw(environ, Server().start_response)
        chunks = iter(response)
        assert next(chunks) == b"a"
        if end == "body raises":
            next(chunks)
        elif end != "collected":
            assert list(chunks) == []
            close = getattr(response, "close", None)
            if close is not None:
                close()

    mw = ScopedSessionMiddleware(app, Session, commit=commit)
    environ = Environ(make_environ("/streamed"))
    gone = weakref.ref(environ)
    failed = False
    with pytest.warns(ResourceWarning) if end == "collected" else contextlib.nullcontext():
        try:
            serve(environ)
        except RuntimeError:  # its traceback, which holds the request, goes with it
            failed = True
    assert failed == ("raises" in end)
    del environ
    # Reference counting alone frees it, however it ended: nothing of the
    # middleware or the scope keeps the finished request (its cell, which
    # names it) until this thread's next one.
    assert gone() is None
    assert rec.made[0].closed == 1
    assert Session.stats().live == 0


def test_remove_all_and_stats_reach_a_request_still_streaming() -> None:
    rec = Recorder()
    Session = rec.Session

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session()
        ok(start_response)
        return iter([b"a", b"b"])

    response = ScopedSessionMiddleware(app, Session)(make_environ(), Server().start_response)
    chunks = iter(response)
    assert next(chunks) == b"a"
    assert Session.stats().live == 1
    assert Session.remove_all() == 1  # shutdown, mid-stream
    assert rec.made[0].closed == 1
    assert list(chunks) == [b"b"]
    response.close()  # type: ignore[attr-defined]
    assert rec.made[0].closed == 1  # taken by remove_all(): not closed twice
    assert Session.stats() == (0, 1, 1, 0)


def test_a_requests_cell_has_every_slot_set() -> None:
    # The thread scope makes a request's cell without Cell.__init__ (a call
    # less per request): a slot added to Cell must be set there too.
    from scoped_session._cells import Cell

    seen: list[Cell] = []
    Session = Recorder().Session

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen.append(Session._slot.cell)
        ok(start_response)
        return [b""]

    Server().run(ScopedSessionMiddleware(app, Session))
    [cell] = seen
    assert type(cell) is Cell  # no finalizer: its response is the backstop
    for name in Cell.__slots__:
        if name != "__weakref__":
            getattr(cell, name)  # raises AttributeError for a slot never set


def test_two_greenlets_on_one_thread_never_end_each_others_request() -> None:
    greenlet = pytest.importorskip("greenlet")
    rec = Recorder(scope="context")
    Session = rec.Session
    seen: dict[str, TrivialSession] = {}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        name = environ["PATH_INFO"]
        seen[name] = Session()
        ok(start_response)

        def body() -> t.Iterator[bytes]:
            yield b"1"
            # Let the other request start on this same OS thread mid-stream.
            greenlet.getcurrent().parent.switch()
            assert Session() is seen[name]  # still this request's own session
            yield b"2"

        return body()

    mw = ScopedSessionMiddleware(app, Session)
    out: dict[str, bytes] = {}

    def serve(path: str) -> None:
        response = mw(make_environ(path), Server().start_response)
        try:
            out[path] = b"".join(response)
        finally:
            response.close()  # type: ignore[attr-defined]

    a = greenlet.greenlet(serve)
    b = greenlet.greenlet(serve)
    a.switch("/a")  # runs until its body's first chunk, then comes back here
    b.switch("/b")  # a second request on the same thread while /a still streams
    assert seen["/a"].closed == 0  # /b's request ended nothing of /a's
    a.switch()
    b.switch()
    assert out == {"/a": b"12", "/b": b"12"}
    assert [s.closed for s in rec.made] == [1, 1]
    assert seen["/a"] is not seen["/b"]


def test_no_stale_warning_when_the_server_closes(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    Session = rec.Session

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session()
        ok(start_response)
        return iter([b"a", b"b"])

    mw = ScopedSessionMiddleware(app, Session)
    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        for _ in range(20):
            assert Server().run(mw) == b"ab"
    assert caplog.records == []
    assert [s.closed for s in rec.made] == [1] * 20


# -- wsgi.file_wrapper --------------------------------------------------------------


@pytest.mark.parametrize("commit", [False, True])
def test_a_server_file_wrapper_is_returned_untouched_and_ends_the_unit(
    db: Database, tmp_path: Path, commit: bool
) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    path = tmp_path / "payload.bin"
    path.write_bytes(b"0123456789" * 1000)
    wrappers: list[object] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        Session.add(Note(text="file"))
        Session.flush()
        start_response("200 OK", [("Content-Length", str(path.stat().st_size))])
        wrapper = environ["wsgi.file_wrapper"](path.open("rb"), 4096)
        wrappers.append(wrapper)
        return wrapper  # type: ignore[no-any-return]

    committed_at_status: list[list[str]] = []
    server = Server(on_status=lambda status: committed_at_status.append(notes(db.engine)))
    environ = make_environ(extra={"wsgi.file_wrapper": wsgiref.util.FileWrapper})
    mw = ScopedSessionMiddleware(app, Session, commit=commit)
    body = mw(environ, server.start_response)
    assert body is wrappers[0]  # the server's own type: its sendfile path stays
    assert_no_leaks(db)  # ended before the file is sent
    assert b"".join(body) == path.read_bytes()
    body.close()  # type: ignore[attr-defined]
    assert committed_at_status == [["file"] if commit else []]
    assert notes(db.engine) == (["file"] if commit else [])


def test_a_werkzeug_file_wrapper_without_server_support_ends_at_close(tmp_path: Path) -> None:
    rec = Recorder()
    Session = rec.Session
    path = tmp_path / "payload.bin"
    path.write_bytes(b"abc" * 10000)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        Session()
        ok(start_response)
        return wrap_file(environ, path.open("rb"))

    environ = make_environ()
    environ.pop("wsgi.file_wrapper", None)
    server = Server()
    assert server.run(ScopedSessionMiddleware(app, Session), environ) == path.read_bytes()
    assert [s.closed for s in rec.made] == [1]


# -- commit=True --------------------------------------------------------------------


def note_app(
    Session: ScopedSession[SASession], status: str = "200 OK", stream: bool = False
) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        Session.add(Note(text=environ["PATH_INFO"].strip("/")))
        start_response(status, [("Content-Type", "text/plain")])
        if stream:
            return iter([b"a", b"b"])
        return [b"done"]

    return app


@pytest.mark.parametrize("stream", [False, True], ids=["list", "stream"])
def test_commit_happens_before_the_status_reaches_the_server(db: Database, stream: bool) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    seen: list[list[str]] = []
    server = Server(on_status=lambda status: seen.append(notes(db.engine)))
    server.run(
        ScopedSessionMiddleware(note_app(Session, stream=stream), Session, commit=True),
        make_environ("/n1"),
    )
    assert server.status == "200 OK"
    assert seen == [["n1"]]
    assert notes(db.engine) == ["n1"]
    assert_no_leaks(db)


@pytest.mark.parametrize("status", ["404 Not Found", "500 Internal Server Error", "302 Found"])
@pytest.mark.parametrize("stream", [False, True], ids=["list", "stream"])
def test_a_status_of_400_or_more_rolls_back(db: Database, status: str, stream: bool) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    server = Server()
    server.run(
        ScopedSessionMiddleware(note_app(Session, status, stream), Session, commit=True),
        make_environ("/n1"),
    )
    assert server.status == status
    assert notes(db.engine) == ([] if status[0] in "45" else ["n1"])
    assert_no_leaks(db)


@pytest.mark.parametrize("answer", [True, False])
def test_the_veto_decides(db: Database, answer: bool) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    calls: list[tuple[str, str, list[tuple[str, str]]]] = []

    def veto(environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]) -> bool:
        calls.append((environ["PATH_INFO"], status, headers))
        return answer

    Server().run(
        ScopedSessionMiddleware(note_app(Session), Session, commit=True, veto=veto),
        make_environ("/n1"),
    )
    assert calls == [("/n1", "200 OK", [("Content-Type", "text/plain")])]
    assert notes(db.engine) == (["n1"] if answer else [])
    assert_no_leaks(db)


def test_the_veto_is_not_asked_about_an_error_status(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    calls: list[str] = []

    def veto(environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]) -> bool:
        calls.append(status)
        return True

    Server().run(
        ScopedSessionMiddleware(
            note_app(Session, "400 Bad Request"), Session, commit=True, veto=veto
        )
    )
    assert calls == []
    assert notes(db.engine) == []


@pytest.mark.parametrize("where", ["view", "first chunk"])
def test_an_exception_rolls_back(db: Database, where: str) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session.add(Note(text="lost"))
        Session.flush()
        if where == "view":
            raise LookupError("failed")

        def body() -> t.Iterator[bytes]:
            ok(start_response)
            raise LookupError("failed")
            yield b""

        return body()

    server = Server()
    with pytest.raises(LookupError):
        server.run(ScopedSessionMiddleware(app, Session, commit=True))
    assert server.status is None  # nothing reached the server
    assert notes(db.engine) == []
    assert_no_leaks(db)


@pytest.mark.parametrize("stream", [False, True], ids=["list", "stream"])
def test_a_failed_commit_propagates_before_any_status_and_is_logged(
    db: Database, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        Session.add_all([Note(text="same"), Note(text="same")])  # unique: fails at commit
        ok(start_response)
        return iter([b"a"]) if stream else [b"a"]

    server = Server()
    with (
        caplog.at_level(logging.ERROR, logger="scoped_session"),
        pytest.raises(sa.exc.IntegrityError),
    ):
        server.run(
            ScopedSessionMiddleware(app, Session, commit=True), make_environ("/save", "POST")
        )
    assert server.status is None  # no 2xx: the server answers 500 on its own
    assert server.written == []
    errors = [r for r in caplog.records if r.name == "scoped_session"]
    assert errors
    assert all("POST /save" in r.getMessage() for r in errors)
    assert all(r.exc_info is not None for r in errors)
    assert notes(db.engine) == []
    assert_no_leaks(db)
    assert not Session.registry.has()


def test_writes_made_while_a_body_streams_are_committed_at_close(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    during: list[list[str]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        view_session = Session()
        Session.add(Note(text="view"))
        ok(start_response)

        def body() -> t.Iterator[bytes]:
            yield b"a"
            during.append(notes(db.engine))  # the view's write is committed already
            assert Session() is view_session
            Session.add(Note(text="stream"))
            Session.flush()
            yield b"b"

        return body()

    server = Server()
    body = ScopedSessionMiddleware(app, Session, commit=True)(make_environ(), server.start_response)
    assert list(body) == [b"a", b"b"]
    assert notes(db.engine) == ["view"]  # read to the end, not closed yet
    body.close()  # type: ignore[attr-defined]
    assert during == [["view"]]
    assert notes(db.engine) == ["stream", "view"]
    assert_no_leaks(db)


def test_a_stream_that_writes_nothing_is_committed_once(db: Database) -> None:
    # At close() only a session that began a transaction again is committed:
    # an idle one would begin and commit an empty one, and run its commit
    # events a second time.
    class CountingSession(SASession):
        pass

    commits: list[object] = []
    sa.event.listen(CountingSession, "after_commit", commits.append)
    Session = ScopedSession(sessionmaker(db.engine, class_=CountingSession))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session.add(Note(text="view"))
        ok(start_response)
        return iter([b"a", b"b"])

    assert Server().run(ScopedSessionMiddleware(app, Session, commit=True)) == b"ab"
    assert len(commits) == 1
    assert notes(db.engine) == ["view"]
    assert_no_leaks(db)


def test_a_change_to_a_loaded_object_while_streaming_is_committed(db: Database) -> None:
    # With expire_on_commit=False the stream changes an object without a query:
    # SQLAlchemy begins a transaction on the change, so close() commits it.
    Session = ScopedSession(sessionmaker(db.engine, expire_on_commit=False))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        note = Note(text="view")
        Session.add(note)
        ok(start_response)

        def body() -> t.Iterator[bytes]:
            yield b"a"  # commits the view's note
            note.text = "edited"
            yield b"b"

        return body()

    assert Server().run(ScopedSessionMiddleware(app, Session, commit=True)) == b"ab"
    assert notes(db.engine) == ["edited"]
    assert_no_leaks(db)


def test_a_disconnect_mid_stream_rolls_back_what_the_stream_wrote(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session.add(Note(text="view"))
        ok(start_response)

        def body() -> t.Iterator[bytes]:
            for i in range(1000):
                yield b"x"  # the first chunk commits what the view wrote
                Session.add(Note(text=f"stream-{i}"))
                Session.flush()

        return body()

    body = ScopedSessionMiddleware(app, Session, commit=True)(
        make_environ(), Server().start_response
    )
    iterator = iter(body)
    next(iterator)
    next(iterator)
    body.close()  # type: ignore[attr-defined]
    assert notes(db.engine) == ["view"]
    assert_no_leaks(db)


def test_a_failed_commit_at_close_is_raised_from_close_and_logged(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session.add(Note(text="view"))
        ok(start_response)

        def body() -> t.Iterator[bytes]:
            yield b"a"
            Session.add_all([Note(text="dup"), Note(text="dup")])

        return body()

    server = Server()
    with (
        caplog.at_level(logging.ERROR, logger="scoped_session"),
        pytest.raises(sa.exc.IntegrityError),
    ):
        server.run(ScopedSessionMiddleware(app, Session, commit=True), make_environ("/tail"))
    assert server.status == "200 OK"
    assert any("GET /tail" in r.getMessage() for r in caplog.records)
    assert notes(db.engine) == ["view"]
    assert_no_leaks(db)


def test_start_response_with_exc_info_replaces_the_held_status_and_rolls_back(
    db: Database,
) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        Session.add(Note(text="n"))
        ok(start_response)
        try:
            raise LookupError("handled by the app")
        except LookupError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"sorry"]

    server = Server()
    assert server.run(ScopedSessionMiddleware(app, Session, commit=True)) == b"sorry"
    assert server.status == "500 Internal Server Error"
    assert notes(db.engine) == []
    assert_no_leaks(db)


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    Session = ScopedSession(TrivialSession)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        ok(start_response)
        ok(start_response)
        return [b""]

    with pytest.raises(AssertionError, match="second time"):
        Server().run(ScopedSessionMiddleware(app, Session, commit=True))
    assert not Session.registry.has()


def test_the_write_callable_commits_before_the_status_goes_out(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))
    seen: list[list[str]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        Session.add(Note(text="w"))
        write = start_response("200 OK", [])
        write(b"legacy ")
        return [b"write"]

    server = Server(on_status=lambda status: seen.append(notes(db.engine)))
    assert server.run(ScopedSessionMiddleware(app, Session, commit=True)) == b"legacy write"
    assert seen == [["w"]]
    assert_no_leaks(db)


def test_an_empty_streamed_body_commits(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        Session.add(Note(text="empty"))
        ok(start_response)
        return iter(())

    server = Server()
    assert server.run(ScopedSessionMiddleware(app, Session, commit=True)) == b""
    assert server.status == "200 OK"
    assert notes(db.engine) == ["empty"]
    assert_no_leaks(db)


# -- several sessions ----------------------------------------------------------------


class FailingClose(TrivialSession):
    def close(self) -> None:
        super().close()
        raise OSError("close failed")


class FailingCommit(TrivialSession):
    def commit(self) -> None:
        raise OSError("commit failed")


def two_session_app(*sessions: ScopedSession[TrivialSession]) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        for scoped in sessions:
            scoped()
        ok(start_response)
        return [b"ok"]

    return app


def test_every_session_gets_its_own_unit() -> None:
    a, b = Recorder(), Recorder()
    Server().run(
        ScopedSessionMiddleware(two_session_app(a.Session, b.Session), a.Session, b.Session)
    )
    assert [s.closed for s in a.made + b.made] == [1, 1]


def test_every_session_is_ended_when_one_close_fails(caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = Recorder(FailingClose), Recorder(), Recorder(FailingClose)
    mw = ScopedSessionMiddleware(
        two_session_app(a.Session, b.Session, c.Session), a.Session, b.Session, c.Session
    )
    with (
        caplog.at_level(logging.ERROR, logger="scoped_session"),
        pytest.raises(BaseExceptionGroup) as info,
    ):
        Server().run(mw)
    assert len(info.value.exceptions) == 2
    assert [s.closed for s in a.made + b.made + c.made] == [1, 1, 1]
    assert not any(r.registry.has() for r in (a.Session, b.Session, c.Session))
    assert len([r for r in caplog.records if "GET /" in r.getMessage()]) == 2


def test_the_requests_own_error_is_never_hidden_by_a_failing_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = Recorder(FailingClose), Recorder()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        a.Session()
        b.Session()
        raise LookupError("the view's own error")

    with (
        caplog.at_level(logging.ERROR, logger="scoped_session"),
        pytest.raises(LookupError, match="own error"),
    ):
        Server().run(ScopedSessionMiddleware(app, a.Session, b.Session))
    assert [s.closed for s in a.made + b.made] == [1, 1]
    assert any("close failed" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.parametrize("stream", [False, True], ids=["list", "stream"])
def test_after_a_failed_commit_the_other_sessions_roll_back(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Recorder(FailingCommit), Recorder()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        a.Session()
        b.Session()
        ok(start_response)
        return iter([b"x"]) if stream else [b"x"]

    server = Server()
    with (
        caplog.at_level(logging.ERROR, logger="scoped_session"),
        pytest.raises(OSError, match="commit failed"),
    ):
        server.run(ScopedSessionMiddleware(app, a.Session, b.Session, commit=True))
    assert server.status is None
    assert b.made[0].committed == 0
    assert [s.closed for s in a.made + b.made] == [1, 1]


@needs_sqlalchemy
def test_two_databases_commit_together(tmp_path: Path) -> None:
    engines = [sa.create_engine(f"sqlite:///{tmp_path / f'db{i}.db'}") for i in range(2)]
    for engine in engines:
        Note.metadata.create_all(engine)
    first = ScopedSession(sessionmaker(engines[0]))
    second = ScopedSession(sessionmaker(engines[1]))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        first.add(Note(text="one"))
        second.add(Note(text="two"))
        ok(start_response)
        return [b""]

    Server().run(ScopedSessionMiddleware(app, first, second, commit=True))
    assert [notes(e) for e in engines] == [["one"], ["two"]]
    for engine in engines:
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        engine.dispose()


# -- scopes and nesting ---------------------------------------------------------------


def test_a_context_scoped_session_works_the_same() -> None:
    made: list[TrivialSession] = []

    def factory() -> TrivialSession:
        made.append(TrivialSession())
        return made[-1]

    Session = ScopedSession(factory, scope="context")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        view = Session()
        ok(start_response)

        def body() -> t.Iterator[bytes]:
            assert Session() is view
            yield b"x"

        return body()

    mw = ScopedSessionMiddleware(app, Session)
    assert Server().run(mw) == b"x"
    assert Server().run(mw) == b"x"
    assert [s.closed for s in made] == [1, 1]


def test_a_wrapped_app_inside_another_joins_the_outer_unit() -> None:
    rec = Recorder()
    Session = rec.Session
    seen: list[TrivialSession] = []

    def inner(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen.append(Session())
        ok(start_response)
        return [b"inner"]

    inner_mw = ScopedSessionMiddleware(inner, Session)

    def outer(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        seen.append(Session())
        return inner_mw(environ, start_response)

    assert Server().run(ScopedSessionMiddleware(outer, Session)) == b"inner"
    assert seen[0] is seen[1]
    assert [s.closed for s in rec.made] == [1]


def test_a_werkzeug_app_through_the_test_client(db: Database) -> None:
    Session = ScopedSession(sessionmaker(db.engine))

    @Request.application
    def app(request: Request) -> Response:
        if request.method == "POST":
            Session.add(Note(text=request.form["text"]))
            return Response("saved", 201)

        def lines() -> t.Iterator[str]:
            for note in Session.scalars(sa.select(Note).order_by(Note.text)):
                yield note.text + "\n"

        return Response(lines(), mimetype="text/plain")

    client = Client(ScopedSessionMiddleware(app, Session, commit=True))
    for text in ("b", "a"):
        with client.post("/", data={"text": text}) as response:
            assert response.status_code == 201
    with client.get("/") as response:
        assert response.get_data() == b"a\nb\n"
    assert_no_leaks(db)


# -- the example -------------------------------------------------------------------------


@needs_sqlalchemy
def test_the_example_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("wsgi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    # SQLAlchemy resolves the model's annotations through sys.modules.
    monkeypatch.setitem(sys.modules, spec.name, example)
    spec.loader.exec_module(example)
    app, engine = example.make_app(f"sqlite:///{tmp_path / 'notes.db'}")
    client = Client(app)
    try:
        with client.post("/notes", data={"text": "first"}) as response:
            assert response.status_code == 303
        with client.post("/notes", data={"text": ""}) as response:
            assert response.status_code == 400
        with client.get("/notes") as response:
            assert response.status_code == 200
            assert response.get_data(as_text=True) == "first\n"
        with client.get("/") as response:
            assert b"first" in response.get_data()
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()


def test_a_flask_scoped_session_is_refused() -> None:
    flask_module = pytest.importorskip("scoped_session.flask")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        return iter([])

    Session = flask_module.FlaskScopedSession(TrivialSession)
    with pytest.raises(
        TypeError, match=r"ScopedSessionMiddleware\(\) got a FlaskScopedSession as session"
    ):
        ScopedSessionMiddleware(app, Session)
    with pytest.raises(TypeError, match="Pass a ScopedSession of its own as session"):
        ScopedSessionMiddleware(app, ScopedSession(TrivialSession), Session)
