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
body ran to its end.
"""

from __future__ import annotations

import logging
import threading
import typing as t
import warnings

from ._proxy import ScopedSession, UnitOfWork

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ScopedSessionMiddleware"]

logger = logging.getLogger("scoped_session")

Veto = t.Callable[["WSGIEnvironment", str, list[tuple[str, str]]], object]
_Units = tuple[UnitOfWork[t.Any], ...]


class _ThreadRecord(threading.local):
    #: The last streamed response begun on this thread: its ``_open`` flag, its
    #: units and its environ. Still open when the thread takes its next request
    #: means the server never closed it.
    pending: tuple[list[bool], _Units, WSGIEnvironment] | None = None


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
        sessions = (session, *more_sessions)
        for scoped in sessions:
            if not isinstance(scoped, ScopedSession):
                raise TypeError(
                    "ScopedSessionMiddleware() takes ScopedSession objects after the"
                    f" application; got an object of type {type(scoped).__name__}. Wrap"
                    " the factory first: Session = ScopedSession(sessionmaker(engine))."
                )
        if len(set(map(id, sessions))) != len(sessions):
            raise ValueError(
                "The same ScopedSession was passed to ScopedSessionMiddleware() twice;"
                " pass each one once."
            )
        if not isinstance(commit, bool):
            raise TypeError(f"commit must be True or False, not {type(commit).__name__}.")
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
        self._local = _ThreadRecord()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.app!r} sessions={len(self.sessions)}>"

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        record = self._local
        pending = record.pending
        if pending is not None and pending[0]:
            _end_stale(pending)
        units = _start(self.sessions, environ)
        if self.commit:
            return self._call_committing(environ, start_response, units)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            _roll_back(units, environ)
            raise
        kind = type(body)
        if kind is list or kind is tuple or kind is environ.get("wsgi.file_wrapper"):
            # Finished before it was returned: nothing of the app runs later.
            try:
                _end_or_raise(units, False, environ)
            except BaseException:
                _close_quietly(body)
                raise
            return body
        try:
            response = _Response(body, iter(body).__next__, units, environ)
        except BaseException:
            _close_quietly(body)
            _roll_back(units, environ)
            raise
        record.pending = (response._open, units, environ)
        return response

    def _call_committing(
        self, environ: WSGIEnvironment, start_response: StartResponse, units: _Units
    ) -> t.Iterable[bytes]:
        gate = _Gate(self.veto, environ, start_response, units)
        try:
            body = self.app(environ, gate.start_response)
        except BaseException:
            _roll_back(units, environ)
            raise
        try:
            kind = type(body)
            if gate.status is not None and (
                kind is list or kind is tuple or kind is environ.get("wsgi.file_wrapper")
            ):
                # A finished body: commit (or roll back) and end now, then let
                # the status through.
                _end_or_raise(units, gate.decide(), environ)
                gate.send()
                return body
            response = _CommittingResponse(body, iter(body).__next__, units, environ, gate)
        except BaseException:
            _close_quietly(body)
            _roll_back(units, environ)
            raise
        self._local.pending = (response._open, units, environ)
        return response


def _start(sessions: tuple[ScopedSession[t.Any], ...], environ: WSGIEnvironment) -> _Units:
    # The environ labels each unit: a reap warning names its request.
    if len(sessions) == 1:
        return (UnitOfWork(sessions[0], False, environ).start(),)
    started: list[UnitOfWork[t.Any]] = []
    try:
        for scoped in sessions:
            started.append(UnitOfWork(scoped, False, environ).start())
    except BaseException:
        _end_all(tuple(started), False, None)
        raise
    return tuple(started)


def _where(environ: WSGIEnvironment | None) -> str:
    if environ is None:
        return "a request"
    return f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '')}"


def _end_all(
    units: _Units, commit: bool, environ: WSGIEnvironment | None, reaped: bool = False
) -> list[BaseException]:
    """End every unit, committing while ``commit`` holds: after a failed commit
    the rest roll back; a close() that fails after its commit stops nothing.
    Every failure is logged with the request's method and path and returned.
    ``reaped``: a backstop ends them (counted as reaped)."""
    failures: list[BaseException] = []
    for unit in units:
        try:
            unit.end(commit=commit, reaped=reaped)
        except BaseException as exc:
            if commit and not unit.committed:
                logger.error(
                    "Committing the database session failed for %s; it was rolled back.",
                    _where(environ),
                    exc_info=exc,
                )
                commit = False
            else:
                logger.error(
                    "Closing the database session failed for %s.", _where(environ), exc_info=exc
                )
            failures.append(exc)
    return failures


def _end_or_raise(
    units: _Units, commit: bool, environ: WSGIEnvironment, reaped: bool = False
) -> None:
    """End every unit; raise the failure (or a group of them) when any failed."""
    failures = _end_all(units, commit, environ, reaped)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise BaseExceptionGroup(f"ending {len(failures)} database sessions failed", failures)


def _roll_back(units: _Units, environ: WSGIEnvironment) -> None:
    """Roll back and end every unit after the request failed; their failures
    are logged, never raised, so that the request's own error propagates."""
    _end_all(units, False, environ)


def _end_stale(pending: tuple[list[bool], _Units, WSGIEnvironment]) -> None:
    _, units, environ = pending
    stale = tuple(unit for unit in units if unit.active)
    if not stale:
        return
    logger.warning(
        "The response to %s was never closed: the WSGI server did not call close() on"
        " it, so its database session stayed open until this thread's next request."
        " Closed it now (rolled back). Use a server that calls close() (PEP 3333).",
        _where(environ),
    )
    _end_all(stale, False, environ, reaped=True)


def _close_quietly(body: object) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.error("Closing the response iterable failed.", exc_info=True)


class _Response:
    """The response iterable of a streamed body: ends the request's units when
    the server closes it, or at once when the body raises before its first
    chunk."""

    __slots__ = ("_body", "_environ", "_next", "_open", "_units")

    def __init__(
        self,
        body: t.Iterable[bytes],
        next_chunk: t.Callable[[], bytes],
        units: _Units,
        environ: WSGIEnvironment,
    ) -> None:
        self._body = body
        self._next = next_chunk
        self._units = units
        self._environ = environ
        # Popped exactly once, by whichever of close(), a failure or the
        # finalizer gets there first (list.pop is atomic).
        self._open = [True]

    def __iter__(self) -> _Response:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = self._next()
        except StopIteration:
            raise
        except BaseException:
            self._fail()
            raise
        # Past the first chunk the status is out and the server closes the
        # response on an error; chunks then pass without a handler.
        self.__class__ = _Streaming
        return chunk

    def _fail(self) -> None:
        """The body raised: close it and roll back now, not at ``close()``."""
        try:
            self._open.pop()
        except IndexError:
            return
        _close_quietly(self._body)
        _roll_back(self._units, self._environ)

    def close(self) -> None:
        """Close the app's iterable, then end the request's units.

        The server calls this, from any thread; calling it again does nothing.
        """
        try:
            self._open.pop()
        except IndexError:
            return
        self._close(self._commit_at_close())

    def _commit_at_close(self) -> bool:
        return False

    def _close(self, commit: bool, reaped: bool = False) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            try:
                close()
            except BaseException:
                _roll_back(self._units, self._environ)
                raise
        _end_or_raise(self._units, commit, self._environ, reaped)

    def __del__(self) -> None:
        if not self._open:
            return
        try:
            self._open.pop()
        except IndexError:
            return
        try:
            if any(unit.active for unit in self._units):
                warnings.warn(
                    f"The response to {_where(self._environ)} was garbage collected"
                    " without close(); its database sessions were closed now (rolled"
                    " back). A WSGI server must call close() on the response iterable"
                    " (PEP 3333).",
                    ResourceWarning,
                    source=self,
                    stacklevel=1,
                )
        finally:
            try:
                self._close(False, reaped=True)
            except Exception:
                logger.error("Ending a collected response's unit of work failed.", exc_info=True)


class _Streaming(_Response):
    """A :class:`_Response` past its first chunk."""

    __slots__ = ()

    def __next__(self) -> bytes:
        return self._next()


class _CommittingResponse(_Response):
    """A streamed body under ``commit=True``: its first chunk commits (or rolls
    back) before the status goes out; ``close()`` commits what the stream wrote
    when it ran to its end."""

    __slots__ = ("_finished", "_gate")

    def __init__(
        self,
        body: t.Iterable[bytes],
        next_chunk: t.Callable[[], bytes],
        units: _Units,
        environ: WSGIEnvironment,
        gate: _Gate,
    ) -> None:
        self._gate = gate
        self._finished = False
        super().__init__(body, next_chunk, units, environ)

    def __next__(self) -> bytes:
        try:
            chunk = self._next()
        except StopIteration:
            self._finished = True
            if not self._gate.sent:
                self._flush()
            raise
        except BaseException:
            self._fail()
            raise
        if not self._gate.sent:
            self._flush()
        return chunk

    def _flush(self) -> None:
        try:
            self._gate.flush()
        except BaseException:
            self._fail()
            raise

    def _commit_at_close(self) -> bool:
        # A body the server stopped reading (the client left) did not finish
        # its work: what it wrote is rolled back.
        return self._finished and self._gate.decision is True


class _Gate:
    """Holds the app's status until the sessions are committed (``commit=True``)."""

    __slots__ = (
        "_environ",
        "_start_response",
        "_units",
        "_veto",
        "_write",
        "decision",
        "exc_info",
        "headers",
        "sent",
        "status",
    )

    def __init__(
        self,
        veto: Veto | None,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        units: _Units,
    ) -> None:
        self._veto = veto
        self._environ = environ
        self._start_response = start_response
        self._units = units
        self._write: t.Callable[[bytes], object] | None = None
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: OptExcInfo | None = None
        self.sent = False
        #: Whether the view's writes are committed: None until decided.
        self.decision: bool | None = None

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
            self.flush()
        if self._write is None:
            raise AssertionError("write() was called before start_response().")
        self._write(data)

    def decide(self) -> bool:
        """Whether to commit: a status below 400, no ``exc_info``, and the veto."""
        if self.decision is not None:
            return self.decision
        status = self.status
        ok = status is not None and self.exc_info is None and _status_code(status) < 400
        if ok and self._veto is not None:
            assert status is not None
            ok = bool(self._veto(self._environ, status, self.headers))
        self.decision = ok
        return ok

    def flush(self) -> None:
        """Commit (or not), then let the held status through to the server."""
        if self.decide():
            _commit_all(self._units, self._environ)
        self.send()

    def send(self) -> None:
        if self.sent or self.status is None:
            return
        self.sent = True
        if self.exc_info is not None:
            self._write = self._start_response(self.status, self.headers, self.exc_info)
        else:
            self._write = self._start_response(self.status, self.headers)


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except ValueError:
        return 500


def _commit_all(units: _Units, environ: WSGIEnvironment) -> None:
    """Commit each unit's session in order. A failure is logged and raised; the
    units stay open for the caller to roll back and end."""
    for unit in units:
        session = unit.session
        if session is None:
            continue
        try:
            session.commit()
        except BaseException:
            logger.error(
                "Committing the database session failed for %s; rolling back.",
                _where(environ),
                exc_info=True,
            )
            raise
