"""WSGI middleware: a unit of work per request that ends when the response is over.

::

    from sqlalchemy.orm import sessionmaker
    from scoped_session import ScopedSession
    from scoped_session.wsgi import ScopedSessionMiddleware

    Session = ScopedSession(sessionmaker(engine))

    def app(environ, start_response):
        Session.add(Note(text="hi"))          # this request's session, made on first use
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"saved"]

    app = ScopedSessionMiddleware(app, Session, commit=True)

Each request gets a fresh session from every given :class:`~scoped_session.ScopedSession`
and keeps it until the response is really over: a streamed body uses the view's session
until the server calls ``close()`` on the response, from whatever thread it calls it. A
body the app has finished before returning (a list, a tuple, a ``wsgi.file_wrapper``
object) needs no session after that, so its unit ends when the app returns and the body
goes to the server untouched (a file keeps the server's ``sendfile`` path).

With ``commit=True`` the app's ``start_response`` is held until its first body chunk and
the session is committed before the status reaches the server: a failed commit
propagates (the server answers 500) and a 2xx status means the view's writes are
committed. Writes made while a streamed body runs are committed at ``close()`` when the
body ran to its end (a SQLAlchemy session that began no transaction since is only
closed).
"""

from __future__ import annotations

import logging
import sys
import threading
import typing as t
import warnings

from ._arguments import check_flag, registries
from ._cells import Cell
from ._ending import commit_units, end_sessions, end_units
from ._proxy import ScopedSession
from ._registry import open_unit

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ScopedSessionMiddleware"]

logger = logging.getLogger("scoped_session")
#: Makes the per-request objects without calling their class (see __call__).
_new = object.__new__

Veto = t.Callable[["WSGIEnvironment", str, list[tuple[str, str]]], object]
Units = tuple[Cell, ...]

#: A response's units are claimed by reading its slot and emptying it. With the
#: GIL no other thread runs between the two statements (no call, allocation or
#: check of the eval breaker, as in ``Cell.take``); a free-threaded build takes
#: this lock around them.
_claim_lock = None if getattr(sys, "_is_gil_enabled", lambda: True)() else threading.Lock()


class ScopedSessionMiddleware:
    """Give each request a unit of work on every given scoped session.

    A unit starts before the app runs and ends (commit if asked, close, forget)
    after the server calls ``close()`` on the response iterable, after the app's
    own iterable is closed; at once when the app raises, returns a finished
    body, or its body raises.

    :param app: the WSGI application to wrap.
    :param session: a :class:`~scoped_session.ScopedSession`; more may follow,
        each gets a unit of its own and each is ended even if another fails.
    :param commit: commit each session when nothing raised and the status is
        below 400 (and ``veto`` agrees), before the status reaches the server;
        otherwise roll back.
    :param veto: with ``commit=True``, called as ``veto(environ, status,
        headers)`` before committing; the sessions commit only when it returns
        a true value.
    """

    def __init__(
        self,
        app: WSGIApplication,
        session: ScopedSession[t.Any],
        /,
        *more_sessions: ScopedSession[t.Any],
        commit: bool = False,
        veto: Veto | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(
                "ScopedSessionMiddleware() takes the WSGI application first, then"
                f" the ScopedSession objects; got an object of type {type(app).__name__}"
                " as the application."
            )
        sessions: tuple[ScopedSession[t.Any], ...] = registries(
            (session, *more_sessions), "ScopedSessionMiddleware()", ScopedSession
        )
        check_flag(commit, "commit")
        if veto is not None:
            if not callable(veto):
                raise TypeError(
                    "veto must be a callable veto(environ, status, headers) that"
                    f" returns whether to commit; got an object of type {type(veto).__name__}."
                )
            if not commit:
                raise ValueError("veto only decides whether to commit: pass commit=True with it.")
        self.app = app
        self.sessions = sessions
        self.commit = commit
        self.veto = veto
        #: The common case, one registry: its unit is opened without a loop.
        self._single = sessions[0] if len(sessions) == 1 else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.app!r} sessions={len(self.sessions)}>"

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        # One label names the request everywhere: in its units (a reap warning)
        # and when they end (a failure's log); it is formatted only then.
        where = _new(Request)  # no __init__: every request makes one
        where.environ = environ
        single = self._single
        units = (
            (open_unit(single, where, True),)
            if single is not None
            else _start(self.sessions, where)
        )
        gate: CommittingResponse | None = None
        if self.commit:
            # Made without a call of Python code (no __init__), as the Response
            # below: every request with commit=True makes one.
            gate = _new(CommittingResponse)
            gate._veto = self.veto
            gate._start_response = start_response
            gate._cells = units
            gate._where = where
            gate._units = None  # not a response (yet): nothing for the finalizer
            gate._commits = False
            gate._write = None
            gate.status = None
            gate.sent = False
            gate.decision = None
            start_response = gate.start_response
        try:
            body = self.app(environ, start_response)
        except BaseException as exc:
            roll_back(units, where, exc)
            raise
        kind = type(body)
        try:
            if kind is list or kind is tuple or kind is environ.get("wsgi.file_wrapper"):
                # Finished before it was returned: nothing of the app runs later,
                # so its units end now (committed first, when decided so), and
                # then the status goes through.
                if gate is None:
                    end_units(units, commit=False, where=where)
                    return body
                if gate.status is not None:
                    gate.settle(end=True)
                    return body
                # No status yet: it comes as the body is read, as a stream's does.
            # Streamed: a later request on the same slot is one of its own, which
            # never joins or ends these units; the response ends them.
            if single is not None:
                units[0].handed = True
            else:
                for cell in units:
                    cell.handed = True
            response: Response | None = gate  # the gate becomes the response
            if response is None:
                # Made without a call of Python code (no __init__): every
                # streamed request makes one.
                response = _new(Response)
                response._where = where
                response._commits = False
            response._body = body
            response._units = units
            return response
        except BaseException as exc:
            close_quietly(body)
            roll_back(units, where, exc)
            raise


def _start(sessions: tuple[ScopedSession[t.Any], ...], where: Request) -> Units:
    started: list[Cell] = []
    try:
        for scoped in sessions:
            started.append(open_unit(scoped, where, request=True))
    except BaseException as exc:
        roll_back(tuple(started), where, exc)
        raise
    return tuple(started)


class Request:
    """Names a request in messages ("the request GET /notes"), formatted only
    when one is written. The middleware makes it without a call of Python code
    and sets ``environ``: every request makes one."""

    __slots__ = ("environ",)

    environ: WSGIEnvironment

    def __str__(self) -> str:
        return f"the request {self.line()}"

    def line(self) -> str:
        """The method and path: "GET /notes"."""
        environ = self.environ
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return f"{environ.get('REQUEST_METHOD', '?')} {path}"


def roll_back(units: Units, where: Request, error: BaseException) -> None:
    """Roll back and end every unit after the request failed with ``error``; their
    failures are logged, never raised, so that the request's own error propagates."""
    end_units(units, commit=False, error=error, where=where)


def close_quietly(body: object) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.error("Closing the response iterable failed.", exc_info=True)


class Response:
    """The response iterable of a streamed body: ends the request's units when
    the server closes it, or at once when the body raises. The middleware makes
    it and sets its slots itself (no ``__init__``)."""

    __slots__ = ("_body", "_commits", "_units", "_where")

    #: The units to end, until one of close(), a failure or the finalizer claims
    #: them (exactly once, see ``_claim_lock``): ``None`` after that, or before
    #: the response is handed to the server.
    _units: Units | None
    _body: t.Iterable[bytes]
    _where: Request
    #: Whether close() commits: the stream ran to its end and its view's writes
    #: were committed (``commit=True`` only).
    _commits: bool

    def __iter__(self) -> t.Iterator[bytes]:
        # A generator: the server resumes it without a method lookup, and the
        # end of the body stops it without a StopIteration object. Not "yield
        # from": a dropped iterator would close the app's iterator then, before
        # the server's close() and outside of it.
        try:
            for chunk in self._body:  # noqa: UP028
                yield chunk
        except GeneratorExit:  # the iterator was dropped: close() ends the units
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    def _claim(self) -> Units | None:
        """The units, to the first caller; ``None`` to any later one."""
        if _claim_lock is None:
            units = self._units
            self._units = None
            return units
        with _claim_lock:  # pragma: no cover - free-threaded builds
            units = self._units
            self._units = None
        return units  # pragma: no cover

    def _fail(self, error: BaseException) -> None:
        """The body raised: close it and roll back now, not at ``close()``."""
        units = self._claim()
        if units is not None:
            close_quietly(self._body)
            roll_back(units, self._where, error)

    def close(self) -> None:
        """Close the app's iterable, then end the request's units.

        The server calls this, from any thread; calling it again does nothing.
        """
        if _claim_lock is None:  # _claim(), inlined: every request ends here
            units = self._units
            self._units = None
        else:  # pragma: no cover - free-threaded builds
            units = self._claim()
        if units is None:
            return
        close = getattr(self._body, "close", None)
        if close is not None:
            try:
                close()
            except BaseException as exc:
                roll_back(units, self._where, exc)
                raise
        # What the stream wrote is committed when it ran to its end (and its
        # view's writes were committed), and only where it wrote something.
        end_units(units, commit=self._commits, where=self._where, if_begun=True)

    def __del__(self) -> None:
        # Nothing else refers to a dying response: no claim needed.
        units = self._units
        if units is None:
            return
        self._units = None
        try:
            if any(not cell.ended for cell in units):
                message = (
                    f"The response to {self._where.line()} was garbage collected"
                    " without close(); its database sessions were closed now (rolled"
                    " back). A WSGI server must call close() on the response iterable"
                    " (PEP 3333): use a server that does, or call close() on the"
                    " response where it is consumed."
                )
                # Logged as well: a ResourceWarning is hidden by default.
                logger.warning("%s", message)
                warnings.warn(message, ResourceWarning, source=self, stacklevel=1)
        finally:
            close_quietly(self._body)  # a failure is logged: the units end anyway
            try:
                end_units(units, commit=False, where=self._where, reaped=True)
            except Exception:
                logger.error("Ending a collected response's unit of work failed.", exc_info=True)


class CommittingResponse(Response):
    """``commit=True``: holds the app's status until the sessions are committed
    (its :meth:`start_response` is the one the app sees), and is the response
    iterable of a streamed body, whose first chunk commits (or rolls back)
    before the status goes out; ``close()`` commits what the stream wrote when
    it ran to its end. The middleware makes it (no ``__init__``) before the app
    runs; it becomes the response only for a streamed body, when the middleware
    gives it the body and the units."""

    __slots__ = (
        "_cells",
        "_start_response",
        "_veto",
        "_write",
        "decision",
        "exc_info",
        "headers",
        "sent",
        "status",
    )

    _veto: Veto | None
    _start_response: StartResponse
    #: The units, for the commit (``_units`` is set only once it is a response).
    _cells: Units
    _write: t.Callable[[bytes], object] | None
    status: str | None
    #: What the app gave start_response(): set together with ``status``.
    headers: list[tuple[str, str]]
    exc_info: OptExcInfo | None
    #: Whether the status went out to the server.
    sent: bool
    #: Whether the view's writes are committed: None until decided.
    decision: bool | None

    def __iter__(self) -> t.Iterator[bytes]:
        try:
            for chunk in self._body:
                if not self.sent:
                    self.settle()
                yield chunk
            if not self.sent:
                self.settle()
            # Ran to its end: close() commits what the stream wrote.
            self._commits = self.decision is True
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> t.Callable[[bytes], object]:
        """The ``start_response`` the app sees: records, sends nothing yet."""
        if exc_info is not None and exc_info[0] is None:
            exc_info = None
        if exc_info is not None:
            if self.sent:
                # Too late to change the status: the server re-raises the
                # app's error, as PEP 3333 asks.
                self._start_response(status, headers, exc_info)
        elif self.status is not None:
            raise AssertionError("start_response() was called a second time without exc_info.")
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: the status goes out first."""
        if not self.sent:
            self.settle()
        if self._write is None:
            raise AssertionError("write() was called before start_response().")
        self._write(data)

    def settle(self, end: bool = False) -> None:
        """Commit the sessions (or not), then let the held status through to the
        server, once; with ``end``, end the units as well.

        Whether to commit is decided once: a status below 400, no ``exc_info``,
        and the veto.
        """
        ok = self.decision
        if ok is None:
            status = self.status
            ok = status is not None and self.exc_info is None
            if ok:
                assert status is not None
                try:
                    ok = int(status[:3]) < 400
                except ValueError:
                    ok = False
                if ok and self._veto is not None:
                    ok = bool(self._veto(self._where.environ, status, self.headers))
            self.decision = ok
        cells = self._cells
        if end:
            end_units(cells, commit=ok, where=self._where)
        elif ok:
            if len(cells) == 1:  # one registry, the usual case: no walk of the cells
                session = cells[0].session
                if session is not None:
                    end_sessions((session,), commit=True, close=False, where=self._where)
            else:
                commit_units(cells, where=self._where)
        status = self.status
        if self.sent or status is None:
            return
        self.sent = True
        exc_info = self.exc_info
        if exc_info is not None:
            self._write = self._start_response(status, self.headers, exc_info)
        else:
            self._write = self._start_response(status, self.headers)
