"""The WSGI app that test_wsgi_servers.py runs under real servers.

In-process servers call :func:`make_app`; gunicorn imports ``make_app_from_env()``
from this module and reads the database from the environment.

Every endpoint writes notes whose text starts with the endpoint's name and the
request's ``id``, so that the test can count exactly what each kind committed:

====================  ===================================================  ==========
path                  what it does                                         committed
====================  ===================================================  ==========
``/plain``            writes a note, returns a list                        1
``/stream``           writes a note, streams, writes a second at the end   2
``/disconnect``       writes a note, streams until the client has gone,    1
                      writing (and flushing) while it streams
``/fail``             writes a note, raises before any status              0
``/fail-stream``      writes a note, streams a chunk, writes, raises       1
``/commit-fail``      writes two notes with the same text (unique column)  0
``/file``             writes a note, returns ``wsgi.file_wrapper``         1
``/stats``            waits until no response is open, reports the pool    -
====================  ===================================================  ==========
"""

from __future__ import annotations

import json
import os
import threading
import typing as t
from urllib.parse import parse_qs

import sqlalchemy as sa
from helpers import Note, make_sqlite_engine
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.wsgi import wrap_file

from scoped_session import ScopedSession
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

CHUNK = b"x" * 16384
#: A disconnected client is noticed long before this (64 MiB, far beyond any
#: socket buffer); reaching it would commit the stream's note and fail the count.
MAX_CHUNKS = 4096
FILE_PAYLOAD = bytes(range(256)) * 64

ENV_URL = "SS_SERVER_APP_URL"
ENV_APP_NAME = "SS_SERVER_APP_NAME"
ENV_SCHEMA = "SS_SERVER_APP_SCHEMA"
ENV_PAYLOAD = "SS_SERVER_APP_PAYLOAD"


def make_engine(url: str, app_name: str = "", schema: str = "") -> sa.Engine:
    """An engine fit for many threads: SQLite in WAL mode with a long busy
    timeout; PostgreSQL in the test's schema, its backends named ``app_name``."""
    if url.startswith("sqlite"):
        return make_sqlite_engine(url, wal=True)
    return sa.create_engine(
        sa.make_url(url).set(drivername="postgresql+psycopg"),
        connect_args={"application_name": app_name, "options": f"-csearch_path={schema}"},
        pool_size=8,
        max_overflow=12,
        pool_timeout=30,
    )


class InFlight:
    """Counts streamed responses that are not yet closed, so that a test can
    wait for the server to finish its work instead of guessing."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self._cond = threading.Condition()
        self._count = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        with self._cond:
            self._count += 1
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done()
            raise
        kind = type(body)
        if kind is list or kind is environ.get("wsgi.file_wrapper"):
            # ScopedSessionMiddleware ended these before returning them; the
            # file wrapper is passed on as it is, for the server's fast path.
            self._done()
            return body
        return _Closing(body, self._done)

    def _done(self) -> None:
        with self._cond:
            self._count -= 1
            if not self._count:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


class _Closing:
    def __init__(self, body: t.Iterable[bytes], done: t.Callable[[], None]) -> None:
        self._body = body
        self._done = done

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


def make_app(engine: sa.Engine, payload_path: str) -> tuple[WSGIApplication, InFlight]:
    """The test app on ``engine``: the WSGI app to serve, and its in-flight counter."""
    db: ScopedSession[Session] = ScopedSession(sessionmaker(engine))

    def note(prefix: str, environ: WSGIEnvironment) -> None:
        request_id = parse_qs(environ.get("QUERY_STRING", ""))["id"][0]
        db.add(Note(text=f"{prefix}-{request_id}"))

    def plain(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("plain", environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]

    def stream(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("stream", environ)
        view_session = db()
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> t.Iterator[bytes]:
            for _ in range(8):
                yield CHUNK
            if db() is not view_session:
                raise AssertionError("the body runs on another session than its view")
            note("streamtail", environ)
            db.flush()
            yield b"end"

        return body()

    def disconnect(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("disc", environ)
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> t.Iterator[bytes]:
            yield CHUNK  # commits the view's note before the status goes out
            note("disctail", environ)
            db.flush()
            for _ in range(MAX_CHUNKS):
                yield CHUNK

        return body()

    def fail(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("fail", environ)
        db.flush()
        raise RuntimeError("the view failed (on purpose)")

    def fail_stream(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("failstream", environ)
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> t.Iterator[bytes]:
            yield CHUNK
            note("failstreamtail", environ)
            db.flush()
            raise RuntimeError("the body failed (on purpose)")

        return body()

    def commit_fail(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("cfail", environ)
        note("cfail", environ)  # the same text twice: the commit fails
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"never sent"]

    def file(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        note("file", environ)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", "16384")],
        )
        # werkzeug's server has no wsgi.file_wrapper: wrap_file falls back to
        # werkzeug's own FileWrapper, an ordinary iterable.
        return wrap_file(environ, open(payload_path, "rb"), 4096)

    routes: dict[str, WSGIApplication] = {
        "/plain": plain,
        "/stream": stream,
        "/disconnect": disconnect,
        "/fail": fail,
        "/fail-stream": fail_stream,
        "/commit-fail": commit_fail,
        "/file": file,
    }

    def dispatch(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        return routes[environ["PATH_INFO"]](environ, start_response)

    inflight = InFlight(ScopedSessionMiddleware(dispatch, db, commit=True))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        if environ["PATH_INFO"] == "/stats":
            idle = inflight.wait_idle(30)
            stats = {"idle": idle, "checkedout": engine.pool.checkedout()}  # type: ignore[attr-defined]
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(stats).encode()]
        return inflight(environ, start_response)  # type: ignore[no-any-return]

    return app, inflight


def make_app_from_env() -> WSGIApplication:
    """For gunicorn: ``wsgi_server_app:make_app_from_env()``."""
    engine = make_engine(
        os.environ[ENV_URL], os.environ.get(ENV_APP_NAME, ""), os.environ.get(ENV_SCHEMA, "")
    )
    app, _ = make_app(engine, os.environ[ENV_PAYLOAD])
    return app
