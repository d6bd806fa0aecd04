"""The app that the load run and the fault tests serve under real servers.

In-process servers call :func:`make_app`; gunicorn imports ``make_app_from_env()``
from this module and reads its settings from the environment.

Two integrations of the same endpoints are mounted side by side: ``/w/...`` is a
plain WSGI app under ``ScopedSessionMiddleware(commit=True)``, ``/f/...`` a Flask
app with ``FlaskScopedSession(commit=True)`` (left out when Flask is not
installed). Both use one ``sessionmaker`` whose sessions are :class:`LoadSession`:

- every session is tagged on creation with its owner, ``(pid, thread name,
  request or job)``, and every use of it (an execute, a flush, a transaction
  begun, a commit) is checked against the caller: a use by anyone else is a
  *violation*, counted and described;
- every session made and closed is counted, and live ones are held weakly, so
  that a session nobody closed or nobody released shows up;
- a view can make its session's ``commit()`` or ``close()`` raise.

Keys are handed out by the server from one counter per process (``key_base``
up); a response that committed rows names their keys, so the caller can check
that the table holds exactly those.

=======================  =========================================================  ======
endpoint                 what it does                                               status
=======================  =========================================================  ======
``read``                 counts the rows                                            200
``write``                inserts a row; body: its key                               200
``slow``                 ``pg_sleep(0.05)``, then inserts a row; body: its key      200
``stream``               inserts a row, streams, inserts another at the end;        200
                         body: first key, filler, second key (both committed)
``disconnect``           inserts a row (first line: its key), then inserts and      200
                         flushes another while it streams far more than anyone
                         reads: under ``/w`` the first is committed (before the
                         status went out), under ``/f`` neither (a Flask
                         streamed response commits when its body has run to
                         its end)
``raise``                inserts and flushes a row, then raises                     500
``dup``                  inserts a row and one with the key that exists from the    500
                         start: the commit fails, nothing is written
``commit-fault``         inserts a row; its session's ``commit()`` raises           500
``close-fault``          reads; its session's ``close()`` raises                    500
``kill``                 inserts and flushes a row, then its backend is killed      500
                         (``pg_terminate_backend``); the next query fails
``enqueue?job=ok``       submits a background job that inserts a row (committed);   200
                         ``job=raise`` raises after a flush, ``job=dup`` fails to
                         commit; body: the job's key
=======================  =========================================================  ======

``/_stats`` (outside both) waits until every response is closed and every job
is done, then reports the process's figures as JSON.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import functools
import gc
import importlib.util
import itertools
import json
import os
import socket
import sys
import threading
import typing as t
import weakref
from concurrent.futures import Future
from urllib.parse import parse_qs

import sqlalchemy as sa
from sqlalchemy import event, orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from scoped_session import ScopedSession
from scoped_session.worker import ScopedThreadPoolExecutor
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ENV_URL = "SS_LOAD_URL"
ENV_APP_NAME = "SS_LOAD_APP_NAME"
ENV_SCHEMA = "SS_LOAD_SCHEMA"
ENV_KEY_BASE = "SS_LOAD_KEY_BASE"
ENV_POOL = "SS_LOAD_POOL"  # "pool_size,max_overflow"

#: A key that is in the table from the start: inserting it again fails.
TAKEN = 0
FILLER = b"." * 8192
STREAM_FILLERS = 8
#: A client that went away is noticed long before this (64 MiB); reaching it
#: would commit the stream's second row, which nobody was told about.
DISCONNECT_CHUNK = b"~" * 16384
DISCONNECT_MAX_CHUNKS = 4096
SLOW_SECONDS = 0.05
WAIT = 60.0  # seconds: the bound on every wait in the app


class LoadBase(DeclarativeBase):
    pass


class Row(LoadBase):
    __tablename__ = "load_rows"

    key: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(16))


class InjectedFault(Exception):
    """Raised on purpose by a view, a job, or a session's commit()/close()."""


# -- ownership -------------------------------------------------------------------------

#: The request or job the current thread works for ("req-12", "job-40017").
_working_for: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "load_working_for", default=None
)

Owner = tuple[int, str, str | None]


def work_for(label: str) -> None:
    """Name what the current thread works for from now on (a job, in a test)."""
    _working_for.set(label)


def current_owner() -> Owner:
    return (os.getpid(), threading.current_thread().name, _working_for.get())


class Tracker:
    """Every session the app made, who used it, and the faults it injected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.created = 0
        self.closed = 0
        self.uses = 0
        self.violations = 0
        self.samples: list[str] = []  # the first few violations, described
        self.faults: collections.Counter[str] = collections.Counter()
        #: Exceptions that reached the outermost middleware, by class name.
        self.errors: collections.Counter[str] = collections.Counter()
        #: Threads that served requests since the last report (drained by it).
        self.request_threads: set[str] = set()
        self._alive: weakref.WeakSet[LoadSession] = weakref.WeakSet()

    def made(self, session: LoadSession) -> None:
        with self._lock:
            self.created += 1
            self._alive.add(session)
        self.used(session)  # made outside any request or job is a violation too

    def closed_first_time(self) -> None:
        with self._lock:
            self.closed += 1

    def used(self, session: LoadSession) -> None:
        owner, now = session.info["owner"], current_owner()
        with self._lock:
            self.uses += 1
            if owner != now or now[2] is None:
                self.violations += 1
                if len(self.samples) < 10:
                    self.samples.append(f"made for {owner}, used by {now}")

    def error(self, name: str) -> None:
        with self._lock:
            self.errors[name] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def drain_threads(self) -> list[str]:
        with self._lock:
            names, self.request_threads = self.request_threads, set()
        return sorted(names)

    def alive(self) -> int:
        gc.collect()
        with self._lock:
            return len(self._alive)


class LoadSession(orm.Session):
    """A real SQLAlchemy session that knows its owner and can fail on purpose.

    ``info["fail_commit"]`` makes the next ``commit()`` raise before it does
    anything (the transaction is then rolled back by ``close()``);
    ``info["fail_close"]`` makes the next ``close()`` raise after it has closed.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.info["owner"] = current_owner()
        self.tracker.made(self)

    @property
    def tracker(self) -> Tracker:
        tracker: Tracker = self.info["tracker"]
        return tracker

    def commit(self) -> None:
        if self.info.pop("fail_commit", False):
            self.tracker.fault("commit")
            raise InjectedFault("commit() failed (injected)")
        super().commit()

    def close(self) -> None:
        super().close()
        if not self.info.get("closed"):
            self.info["closed"] = True
            self.tracker.closed_first_time()
        if self.info.pop("fail_close", False):
            self.tracker.fault("close")
            raise InjectedFault("close() failed (injected)")


def _on_execute(state: orm.ORMExecuteState) -> None:
    t.cast("LoadSession", state.session).tracker.used(t.cast("LoadSession", state.session))


def _on_session(session: LoadSession, *args: object) -> None:
    session.tracker.used(session)


event.listen(LoadSession, "do_orm_execute", _on_execute)
for _name in ("before_flush", "after_begin", "before_commit"):
    event.listen(LoadSession, _name, _on_session)


# -- jobs ------------------------------------------------------------------------------


def _job(Session: ScopedSession[LoadSession], key: int, kind: str) -> None:
    # Not reset at the end: the executor commits and closes the job's session
    # after this returns, on this thread, still for this job.
    work_for(f"job-{key}")
    Session.add(Row(key=key, kind="job"))
    if kind == "raise":
        Session.flush()
        raise InjectedFault("the job failed (on purpose)")
    if kind == "dup":
        Session.add(Row(key=TAKEN, kind="job-dup"))  # the commit fails


class Jobs:
    """Background jobs on a ScopedThreadPoolExecutor, and what became of them."""

    def __init__(self, Session: ScopedSession[LoadSession], keys: t.Iterator[int]) -> None:
        self.Session = Session
        self._keys = keys
        self.pool = ScopedThreadPoolExecutor(
            Session, max_workers=2, commit=True, thread_name_prefix="load-job"
        )
        self._cond = threading.Condition()
        self.pending = 0
        self.ok: list[int] = []  # keys of jobs that committed, until drained
        self.failed: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []

    def submit(self, kind: str) -> int:
        if kind not in ("ok", "raise", "dup"):
            raise ValueError(f"unknown job kind {kind!r}")
        key = next(self._keys)
        with self._cond:
            self.pending += 1
        future = self.pool.submit(_job, self.Session, key, kind)
        future.add_done_callback(functools.partial(self._done, key, kind))
        return key

    def _done(self, key: int, kind: str, future: Future[None]) -> None:
        exc = future.exception()
        with self._cond:
            if exc is None and kind == "ok":
                self.ok.append(key)
            elif (kind == "raise" and isinstance(exc, InjectedFault)) or (
                kind == "dup" and isinstance(exc, sa.exc.IntegrityError)
            ):
                self.failed[kind] += 1
            else:
                self.unexpected.append(f"job {key} ({kind}) ended with {exc!r}")
            self.pending -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.pending == 0, timeout)

    def drain(self) -> list[int]:
        with self._cond:
            ok, self.ok = self.ok, []
        return ok


# -- the views -------------------------------------------------------------------------

Killer = t.Callable[[int, str | None], None]


class Work:
    """What the endpoints do with the request's session, framework aside."""

    def __init__(self, Session: ScopedSession[LoadSession], app: LoadApp, postgres: bool) -> None:
        self.Session = Session
        self.app = app
        self.postgres = postgres

    def key(self) -> int:
        return next(self.app.keys)

    def read(self) -> bytes:
        count = self.Session.scalars(sa.select(sa.func.count()).select_from(Row)).one()
        return b"%d" % count

    def write(self, kind: str) -> int:
        key = self.key()
        self.Session.add(Row(key=key, kind=kind))
        return key

    def slow(self) -> int:
        if self.postgres:
            self.Session.execute(sa.text("SELECT pg_sleep(:s)"), {"s": SLOW_SECONDS})
        return self.write("slow")

    def fail(self) -> t.NoReturn:
        self.write("raise")
        self.Session.flush()
        self.app.tracker.fault("view")
        raise InjectedFault("the view failed (on purpose)")

    def dup(self) -> None:
        self.write("dup")
        self.Session.add(Row(key=TAKEN, kind="dup"))

    def commit_fault(self) -> int:
        key = self.write("commit-fault")
        self.Session.info["fail_commit"] = True
        return key

    def close_fault(self) -> bytes:
        count = self.read()
        self.Session.info["fail_close"] = True
        return count

    def kill(self, ctl: str | None) -> t.NoReturn:
        if not self.postgres:
            raise LookupError("kill needs PostgreSQL")
        self.write("kill")
        self.Session.flush()
        pid = self.Session.scalar(sa.text("SELECT pg_backend_pid()"))
        self.app.kill_backend(int(pid), ctl)
        try:
            self.Session.scalar(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            if exc.connection_invalidated:
                self.app.tracker.fault("kill")
            raise
        raise AssertionError(f"backend {pid} survived pg_terminate_backend")

    def enqueue(self, kind: str) -> int:
        return self.app.jobs.submit(kind)


def _query(environ: WSGIEnvironment, name: str) -> str | None:
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return values[0] if values else None


def _text(start_response: StartResponse, body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def make_wsgi_part(work: Work) -> WSGIApplication:
    """The endpoints as a plain WSGI app under ScopedSessionMiddleware."""
    Session = work.Session

    def stream(start_response: StartResponse) -> t.Iterator[bytes]:
        first = work.write("stream")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream_body(Session, work, first)

    def disconnect(start_response: StartResponse) -> t.Iterator[bytes]:
        first = work.write("disc")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _disconnect_body(Session, work, first)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        kind = environ.get("PATH_INFO", "").strip("/")
        if kind == "read":
            return _text(start_response, work.read())
        if kind == "write":
            return _text(start_response, b"%d" % work.write("write"))
        if kind == "slow":
            return _text(start_response, b"%d" % work.slow())
        if kind == "commit-fault":
            return _text(start_response, b"%d" % work.commit_fault())
        if kind == "stream":
            return stream(start_response)
        if kind == "disconnect":
            return disconnect(start_response)
        if kind == "raise":
            work.fail()
        if kind == "dup":
            work.dup()
            return _text(start_response, b"never sent")
        if kind == "close-fault":
            return _text(start_response, work.close_fault())
        if kind == "kill":
            work.kill(_query(environ, "ctl"))
        if kind == "enqueue":
            return _text(start_response, b"%d" % work.enqueue(_query(environ, "job") or "ok"))
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such endpoint"]

    return ScopedSessionMiddleware(app, Session, commit=True)


def _stream_body(Session: ScopedSession[LoadSession], work: Work, first: int) -> t.Iterator[bytes]:
    view_session = Session()
    yield b"%d\n" % first
    for _ in range(STREAM_FILLERS):
        yield FILLER
    if Session() is not view_session:
        raise AssertionError("the body runs on another session than its view")
    last = work.write("streamtail")
    Session.flush()
    yield b"\n%d" % last


def _disconnect_body(
    Session: ScopedSession[LoadSession], work: Work, first: int
) -> t.Iterator[bytes]:
    yield b"%d\n" % first  # the view's row is committed before this goes out
    work.write("disctail")
    Session.flush()  # holds a transaction open while the client goes away
    for _ in range(DISCONNECT_MAX_CHUNKS):
        yield DISCONNECT_CHUNK


def make_flask_part(
    factory: orm.sessionmaker[LoadSession],
    work_for: t.Callable[[ScopedSession[LoadSession]], Work],
) -> tuple[WSGIApplication, ScopedSession[LoadSession]]:
    """The same endpoints as a Flask app with FlaskScopedSession."""
    from flask import Flask, Response, request, stream_with_context

    from scoped_session.flask import FlaskScopedSession

    app = Flask("load_app")
    Session: FlaskScopedSession[LoadSession] = FlaskScopedSession(factory, app, commit=True)
    work = work_for(Session)

    @app.get("/read")
    def read() -> bytes:
        return work.read()

    @app.get("/write")
    def write() -> bytes:
        return b"%d" % work.write("write")

    @app.get("/slow")
    def slow() -> bytes:
        return b"%d" % work.slow()

    @app.get("/commit-fault")
    def commit_fault() -> bytes:
        return b"%d" % work.commit_fault()

    @app.get("/stream")
    def stream() -> Response:
        first = work.write("stream")
        return Response(stream_with_context(_stream_body(Session, work, first)))

    @app.get("/disconnect")
    def disconnect() -> Response:
        first = work.write("disc")
        return Response(stream_with_context(_disconnect_body(Session, work, first)))

    @app.get("/raise")
    def fail() -> bytes:
        work.fail()

    @app.get("/dup")
    def dup() -> bytes:
        work.dup()
        return b"never sent"

    @app.get("/close-fault")
    def close_fault() -> bytes:
        return work.close_fault()

    @app.get("/kill")
    def kill() -> bytes:
        work.kill(request.args.get("ctl"))

    @app.get("/enqueue")
    def enqueue() -> bytes:
        return b"%d" % work.enqueue(request.args.get("job", "ok"))

    return app, Session


# -- the app ---------------------------------------------------------------------------


class _InFlight:
    """Responses begun and not yet closed, so that a caller can wait for quiet."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def enter(self) -> None:
        with self._cond:
            self.count += 1

    def leave(self) -> None:
        with self._cond:
            self.count -= 1
            if not self.count:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count == 0, timeout)


_ERROR_BODY = b"internal server error"
_ERROR_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_ERROR_BODY)))]


class _Owned:
    """The outermost middleware: names each request the owner of everything that
    runs for it (the app call, each chunk, close()), and counts it in flight."""

    def __init__(self, app: WSGIApplication, tracker: Tracker, inflight: _InFlight) -> None:
        self.app = app
        self.tracker = tracker
        self.inflight = inflight
        self._serials = itertools.count(1)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        label = f"req-{next(self._serials)}"
        self.tracker.request_threads.add(threading.current_thread().name)
        self.inflight.enter()
        token = _working_for.set(label)
        try:
            body = self.app(environ, start_response)
        except Exception as exc:
            # Answered here, as an error-reporting middleware would: once the
            # response is closed nothing holds the traceback (and through its
            # frames a session), so a quiet server has no session left alive.
            self.tracker.error(type(exc).__name__)
            start_response("500 Internal Server Error", _ERROR_HEADERS, sys.exc_info())
            body = [_ERROR_BODY]
        except BaseException:
            self.inflight.leave()
            raise
        finally:
            _working_for.reset(token)
        return _OwnedBody(body, label, self.inflight)


class _OwnedBody:
    def __init__(self, body: t.Iterable[bytes], label: str, inflight: _InFlight) -> None:
        self._body = body
        self._next = iter(body).__next__
        self._label = label
        self._inflight = inflight
        self._closed = False

    def __iter__(self) -> _OwnedBody:
        return self

    def __next__(self) -> bytes:
        token = _working_for.set(self._label)
        try:
            return self._next()
        finally:
            _working_for.reset(token)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        token = _working_for.set(self._label)
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            _working_for.reset(token)
            self._inflight.leave()


def resident_in_use_kb() -> int:
    """This process's resident set size after handing glibc's free heap pages
    back to the system (malloc_trim; elsewhere plain RSS): what stays is
    memory in use, not the allocator's reserve."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    return rss_kb()


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``: ten ``size_t`` counters."""

    _fields_ = [
        ("arena", ctypes.c_size_t),
        ("ordblks", ctypes.c_size_t),
        ("smblks", ctypes.c_size_t),
        ("hblks", ctypes.c_size_t),
        ("hblkhd", ctypes.c_size_t),  # bytes in chunks mapped on their own
        ("usmblks", ctypes.c_size_t),
        ("fsmblks", ctypes.c_size_t),
        ("uordblks", ctypes.c_size_t),  # bytes handed out from the arenas
        ("fordblks", ctypes.c_size_t),
        ("keepcost", ctypes.c_size_t),
    ]


def heap_in_use_kb() -> int | None:
    """What this process's C allocator has handed out and not had back, mapped
    chunks included (glibc 2.33+; None elsewhere). Unlike resident memory it
    does not move with fragmentation or with what the allocator keeps."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd) // 1024


def rss_kb(pid: int | str = "self") -> int:
    """The resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError("no VmRSS line")


class LoadApp:
    """Everything one process serves, and its figures.

    :param engine: the app's engine.
    :param key_base: the first key this process hands out.
    :param admin_engine: a PostgreSQL engine for ``kill`` without a controller.
    :param flask: mount the Flask part (when Flask is installed).
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        key_base: int,
        admin_engine: sa.Engine | None = None,
        flask: bool = True,
    ) -> None:
        self.engine = engine
        self.admin_engine = admin_engine
        self.keys = itertools.count(key_base)
        self.tracker = Tracker()
        self.inflight = _InFlight()
        self.postgres = engine.dialect.name == "postgresql"
        factory = orm.sessionmaker(engine, class_=LoadSession, info={"tracker": self.tracker})

        def work_for(Session: ScopedSession[LoadSession]) -> Work:
            return Work(Session, self, self.postgres)

        self.Session: ScopedSession[LoadSession] = ScopedSession(factory)
        self.jobs = Jobs(self.Session, self.keys)
        self.scoped: dict[str, ScopedSession[LoadSession]] = {"wsgi": self.Session}
        mounts: dict[str, WSGIApplication] = {"/w": make_wsgi_part(work_for(self.Session))}
        if flask and importlib.util.find_spec("flask") is not None:
            flask_app, flask_session = make_flask_part(factory, work_for)
            mounts["/f"] = flask_app
            self.scoped["flask"] = flask_session
        self.prefixes = sorted(mounts)
        served = _Owned(DispatcherMiddleware(_not_found, mounts), self.tracker, self.inflight)
        self._served = served

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_stats":
            body = json.dumps(self.stats()).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self._served(environ, start_response)

    def kill_backend(self, pid: int, ctl: str | None) -> None:
        """Terminate the backend ``pid``: hand it to the controller listening on
        port ``ctl`` (a test), or do it on the admin engine."""
        if ctl is not None:
            with socket.create_connection(("127.0.0.1", int(ctl)), timeout=WAIT) as sock:
                sock.sendall(b"%d\n" % pid)
                if sock.makefile("rb").readline() != b"killed\n":
                    raise AssertionError("the controller did not kill the backend")
            return
        if self.admin_engine is None:
            raise LookupError("kill needs an admin engine or a controller")
        with self.admin_engine.connect() as conn:
            done = conn.scalar(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
        if not done:
            raise AssertionError(f"backend {pid} was not terminated")

    def stats(self) -> dict[str, t.Any]:
        """Wait for quiet (no response open, no job pending), then report."""
        idle = self.inflight.wait_idle(WAIT) and self.jobs.wait_idle(WAIT)
        tracker = self.tracker
        with tracker._lock:
            faults = dict(tracker.faults)
            errors = dict(tracker.errors)
            samples = list(tracker.samples)
        return {
            "pid": os.getpid(),
            "idle": idle,
            "in_flight": self.inflight.count,
            "checkedout": t.cast("sa.QueuePool", self.engine.pool).checkedout(),
            "sessions": {
                "created": tracker.created,
                "closed": tracker.closed,
                "alive": tracker.alive(),
            },
            "uses": tracker.uses,
            "violations": tracker.violations,
            "violation_samples": samples,
            "faults": faults,
            "errors": errors,
            "scoped": {name: scoped.stats()._asdict() for name, scoped in self.scoped.items()},
            "jobs": {
                "ok": self.jobs.drain(),
                "failed": dict(self.jobs.failed),
                "unexpected": list(self.jobs.unexpected),
            },
            "request_threads": tracker.drain_threads(),
            "next_key": next(self.keys),  # no row ever has it: a bound for this round
            "rss_kb": resident_in_use_kb(),
            "heap_kb": heap_in_use_kb(),
            # After the collection in tracker.alive(): Python's own heap, which
            # native allocator fragmentation does not blur.
            "py_blocks": sys.getallocatedblocks(),
        }

    def close(self) -> None:
        self.jobs.pool.shutdown(wait=True)


def _not_found(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"mount: /w or /f"]


# -- engines and setup -----------------------------------------------------------------


def make_engine(
    url: str, app_name: str = "", schema: str = "", pool: tuple[int, int] = (6, 6)
) -> sa.Engine:
    """An engine fit for many threads: PostgreSQL in ``schema``, its backends
    named ``app_name``; SQLite in WAL mode with a long busy timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def wal(dbapi_connection: t.Any, record: object) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        return engine
    return sa.create_engine(
        sa.make_url(url).set(drivername="postgresql+psycopg"),
        connect_args={"application_name": app_name, "options": f"-csearch_path={schema}"},
        pool_size=pool[0],
        max_overflow=pool[1],
        pool_timeout=WAIT,
    )


def make_admin_engine(url: str, app_name: str) -> sa.Engine:
    """A small autocommit engine that terminates backends for ``kill``."""
    return sa.create_engine(
        sa.make_url(url).set(drivername="postgresql+psycopg"),
        connect_args={"application_name": app_name},
        isolation_level="AUTOCOMMIT",
        pool_size=1,
        max_overflow=1,
        pool_timeout=WAIT,
    )


def create_tables(engine: sa.Engine) -> None:
    LoadBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Row).values(key=TAKEN, kind="taken"))


def make_app(
    engine: sa.Engine,
    *,
    key_base: int,
    admin_engine: sa.Engine | None = None,
    flask: bool = True,
) -> LoadApp:
    return LoadApp(engine, key_base=key_base, admin_engine=admin_engine, flask=flask)


def make_app_from_env() -> WSGIApplication:
    """For gunicorn: ``load_app:make_app_from_env()``."""
    url = os.environ[ENV_URL]
    app_name = os.environ.get(ENV_APP_NAME, "")
    size, overflow = (int(n) for n in os.environ.get(ENV_POOL, "6,6").split(","))
    engine = make_engine(url, app_name, os.environ.get(ENV_SCHEMA, ""), (size, overflow))
    admin = None if url.startswith("sqlite") else make_admin_engine(url, app_name + "-admin")
    return make_app(engine, key_base=int(os.environ[ENV_KEY_BASE]), admin_engine=admin)
