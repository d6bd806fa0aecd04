"""The app that test_greenlet_servers.py runs under gunicorn's gevent worker.

gunicorn imports ``app_from_env()`` from this module; the environment says which
integration to serve (``SS_GL_KIND``):

- ``thread``: ``ScopedSessionMiddleware`` over a thread-scoped ``ScopedSession``;
- ``context``: the same with ``ScopedSession(..., scope="context")``;
- ``flask``: a Flask app with ``FlaskScopedSession``.

The app is made once per process (``app_from_env()`` caches it): a gunicorn config
file that calls it at load, or ``--preload``, makes the registry and the engine in
the arbiter, before the worker monkey-patches; otherwise the worker makes them
after patching.

The driver is psycopg2 with psycogreen's wait callback, installed by the config's
``post_worker_init`` hook (:mod:`greenlet_gunicorn_conf`): it yields to the gevent
hub whenever psycopg2 waits, whatever was imported before the patching. psycopg 3
picks its wait function when it is imported: imported before the patching (by a
config file or ``--preload``), it keeps a C wait that blocks the whole worker.

Endpoints (the bodies are wsgi_server_app's, so that test_wsgi_servers.hit checks
them), each writing notes named by the request's ``id``:

====================  ==========================================================  =====
path                  what it does                                                rows
====================  ==========================================================  =====
``/plain``            writes ``plain-ID``, waits in ``pg_sleep``, returns a list  1
``/stream``           writes ``stream-ID``, streams 8 chunks with a query after   2
                      each, then writes ``streamtail-ID``
``/fail``             writes ``fail-ID``, flushes, raises                          0
``/stats``            waits until no request is in flight, reports this worker    -
====================  ==========================================================  =====

Every request records its session at its start, after each chunk and at its end
(:class:`Monitor`): a session that belonged to another request, a session that
changes within a request, and a session in flight for two requests at once are
all reported by ``/stats``, with the most requests, queries and sessions that were
in flight at once in this worker.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import typing as t
from urllib.parse import parse_qs

import sqlalchemy as sa
from helpers import Note
from sqlalchemy import event, orm
from wsgi_server_app import CHUNK

from scoped_session import ScopedSession
from scoped_session.worker import dispose_engines_after_fork
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ENV_URL = "SS_GL_URL"
ENV_APP_NAME = "SS_GL_APP_NAME"
ENV_SCHEMA = "SS_GL_SCHEMA"
ENV_KIND = "SS_GL_KIND"
KINDS = ("thread", "context", "flask")
CHUNKS = 8


def threading_patched() -> bool:
    """Whether gevent has patched ``threading`` (its ``local`` is gevent's)."""
    return threading.local.__module__.startswith("gevent")


#: Whether gevent had patched threading when this module was imported (``False``:
#: imported by a config file or ``--preload``, in the arbiter).
IMPORTED_PATCHED = threading_patched()
#: The key under which a session notes the request that got it.
OWNER = "greenlet_test_owner"
WAIT = 30.0


class Monitor:
    """This worker's record of its requests, their sessions and its database use.

    The server runs every greenlet of a worker in one OS thread, switching only
    where one waits: plain attributes need no lock.
    """

    def __init__(self) -> None:
        self.inflight = 0
        self.max_inflight = 0
        self.in_query = 0
        self.max_in_query = 0
        self.max_sessions = 0
        #: request id -> [id() of its session at its start, at its end]
        self.records: dict[str, list[int | None]] = {}
        #: id() -> (the session, its request) for the requests in flight; the
        #: session is held, so that its id() is not reused meanwhile.
        self.live: dict[int, tuple[object, str]] = {}
        #: [request, the request in flight that had the same session]
        self.overlaps: list[list[str]] = []
        self.problems: list[str] = []
        self._idle: threading.Event | None = None

    # -- requests, counted by the outermost WSGI layer ----------------------------------

    @property
    def idle(self) -> threading.Event:
        # Made in the worker's first request, after the patching: a gevent Event.
        if self._idle is None:
            self._idle = threading.Event()
            if not self.inflight:
                self._idle.set()
        return self._idle

    def enter(self) -> None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()

    # -- sessions, recorded by the views ---------------------------------------------

    def begin(self, request_id: str, session: orm.Session) -> None:
        owner = session.info.get(OWNER)
        if owner is not None:
            self.problems.append(f"{request_id} got the session of {owner}")
        session.info[OWNER] = request_id
        found = self.live.get(id(session))
        if found is not None:
            self.overlaps.append([request_id, found[1]])
        self.live[id(session)] = (session, request_id)
        self.max_sessions = max(self.max_sessions, len(self.live))
        self.records[request_id] = [id(session), None]

    def check(self, request_id: str, session: orm.Session, now: orm.Session) -> None:
        if now is not session:
            self.problems.append(f"{request_id} switched sessions")
        if now.info.get(OWNER) != request_id:
            self.problems.append(f"{request_id} has the session of {now.info.get(OWNER)}")

    def end(self, request_id: str, session: orm.Session, now: orm.Session) -> None:
        self.check(request_id, session, now)
        self.records[request_id][1] = id(now)
        self.live.pop(id(session), None)

    # -- queries, counted by engine events -------------------------------------------

    def watch(self, engine: sa.Engine) -> None:
        def before(*args: object) -> None:
            self.in_query += 1
            self.max_in_query = max(self.max_in_query, self.in_query)

        def after(*args: object) -> None:
            self.in_query -= 1

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        event.listen(engine, "handle_error", after)

    def report(self, engine: sa.Engine, kind: str) -> dict[str, t.Any]:
        return {
            "pid": os.getpid(),
            "kind": kind,
            "imported_patched": IMPORTED_PATCHED,
            "threading_patched": threading_patched(),
            "idle": not self.inflight,
            "checkedout": t.cast("sa.QueuePool", engine.pool).checkedout(),
            "max_inflight": self.max_inflight,
            "max_in_query": self.max_in_query,
            "max_sessions": self.max_sessions,
            "records": self.records,
            "overlaps": self.overlaps,
            "problems": self.problems,
        }


class _Counted:
    """A response body that tells the monitor when the server closed it."""

    def __init__(self, body: t.Iterable[bytes], monitor: Monitor) -> None:
        self.body = body
        self.monitor = monitor

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.monitor.leave()


def make_engine(url: str, app_name: str, schema: str) -> sa.Engine:
    """psycopg2, in the test's schema, its backends named ``app_name``. Fewer
    connections than greenlets: requests also wait for the pool."""
    engine = sa.create_engine(
        sa.make_url(url).set(drivername="postgresql+psycopg2"),
        connect_args={"application_name": app_name, "options": f"-csearch_path={schema}"},
        pool_size=4,
        max_overflow=4,
        pool_timeout=WAIT,
    )
    # The documented set-up for --preload; harmless when nothing connected before
    # the fork.
    dispose_engines_after_fork(engine)
    return engine


def _request_id(environ: WSGIEnvironment) -> str:
    return parse_qs(str(environ.get("QUERY_STRING", "")))["id"][0]


def make_wsgi_views(db: ScopedSession[orm.Session], monitor: Monitor) -> WSGIApplication:
    """The endpoints as a plain WSGI app, for ScopedSessionMiddleware."""

    def plain(request_id: str, start_response: StartResponse) -> t.Iterable[bytes]:
        session = db()
        monitor.begin(request_id, session)
        db.add(Note(text=f"plain-{request_id}"))
        db.execute(sa.text("SELECT pg_sleep(0.02)"))
        monitor.end(request_id, session, db())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]

    def stream(request_id: str, start_response: StartResponse) -> t.Iterable[bytes]:
        session = db()
        monitor.begin(request_id, session)
        db.add(Note(text=f"stream-{request_id}"))
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> t.Iterator[bytes]:
            for _ in range(CHUNKS):
                yield CHUNK
                db.execute(sa.text("SELECT 1"))
                monitor.check(request_id, session, db())
            db.add(Note(text=f"streamtail-{request_id}"))
            db.flush()
            monitor.end(request_id, session, db())
            yield b"end"

        return body()

    def fail(request_id: str, start_response: StartResponse) -> t.Iterable[bytes]:
        session = db()
        monitor.begin(request_id, session)
        db.add(Note(text=f"fail-{request_id}"))
        db.flush()
        monitor.end(request_id, session, db())
        raise RuntimeError("the view failed (on purpose)")

    routes = {"/plain": plain, "/stream": stream, "/fail": fail}

    def views(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        return routes[environ["PATH_INFO"]](_request_id(environ), start_response)

    return views


def make_flask_app(engine: sa.Engine, monitor: Monitor) -> WSGIApplication:
    """The endpoints as a Flask app with FlaskScopedSession (commit=True)."""
    from flask import Flask, Response, request, stream_with_context

    from scoped_session.flask import FlaskScopedSession

    app = Flask(__name__)
    db = FlaskScopedSession(orm.sessionmaker(engine), app, commit=True)

    @app.get("/plain")
    def plain() -> bytes:
        request_id = request.args["id"]
        session = db()
        monitor.begin(request_id, session)
        db.add(Note(text=f"plain-{request_id}"))
        db.execute(sa.text("SELECT pg_sleep(0.02)"))
        monitor.end(request_id, session, db())
        return b"plain"

    @app.get("/stream")
    def stream() -> Response:
        request_id = request.args["id"]
        session = db()
        monitor.begin(request_id, session)
        db.add(Note(text=f"stream-{request_id}"))

        def body() -> t.Iterator[bytes]:
            for _ in range(CHUNKS):
                yield CHUNK
                db.execute(sa.text("SELECT 1"))
                monitor.check(request_id, session, db())
            db.add(Note(text=f"streamtail-{request_id}"))
            db.flush()
            monitor.end(request_id, session, db())
            yield b"end"

        return Response(stream_with_context(body()), content_type="text/plain")

    @app.get("/fail")
    def fail() -> bytes:
        request_id = request.args["id"]
        session = db()
        monitor.begin(request_id, session)
        db.add(Note(text=f"fail-{request_id}"))
        db.flush()
        monitor.end(request_id, session, db())
        raise RuntimeError("the view failed (on purpose)")

    return app


def make_app(engine: sa.Engine, kind: str) -> WSGIApplication:
    """The app of ``kind`` (one of :data:`KINDS`) on ``engine``, with ``/stats``."""
    monitor = Monitor()
    monitor.watch(engine)
    if kind == "flask":
        inner = make_flask_app(engine, monitor)
    elif kind in ("thread", "context"):
        factory = orm.sessionmaker(engine)
        db = ScopedSession(factory) if kind == "thread" else ScopedSession(factory, scope=kind)
        inner = ScopedSessionMiddleware(make_wsgi_views(db, monitor), db, commit=True)
    else:
        raise ValueError(f"{ENV_KIND} is {kind!r}; one of {', '.join(KINDS)}")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        if environ["PATH_INFO"] == "/stats":
            monitor.idle.wait(WAIT)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(monitor.report(engine, kind)).encode()]
        monitor.enter()
        try:
            body = inner(environ, start_response)
        except BaseException:
            monitor.leave()
            raise
        return _Counted(body, monitor)

    return app


@functools.cache
def app_from_env() -> WSGIApplication:
    """For gunicorn: ``greenlet_server_app:app_from_env()``; made once a process."""
    engine = make_engine(os.environ[ENV_URL], os.environ[ENV_APP_NAME], os.environ[ENV_SCHEMA])
    return make_app(engine, os.environ[ENV_KIND])
