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

import typing as t

from ._arguments import check_flag, registries
from ._cells import Cell
from ._ending import end_units
from ._proxy import ScopedSession
from ._registry import open_unit
from ._wsgi_response import (
    CommittingResponse,
    Gate,
    Request,
    Response,
    Veto,
    close_quietly,
    roll_back,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ScopedSessionMiddleware"]

Units = tuple[Cell, ...]


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
        where = Request((environ, "the request "))
        single = self._single
        units = (
            (open_unit(single, where, True),)
            if single is not None
            else _start(self.sessions, where)
        )
        if self.commit:
            return self._call_committing(environ, start_response, units, where)
        try:
            body = self.app(environ, start_response)
        except BaseException as exc:
            roll_back(units, where, exc)
            raise
        kind = type(body)
        if kind is list or kind is tuple or kind is environ.get("wsgi.file_wrapper"):
            # Finished before it was returned: nothing of the app runs later.
            try:
                end_units(units, commit=False, where=where)
            except BaseException:
                close_quietly(body)
                raise
            return body
        try:
            response = Response(body, iter(body).__next__, units, where)
        except BaseException as exc:
            close_quietly(body)
            roll_back(units, where, exc)
            raise
        return response

    def _call_committing(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        units: Units,
        where: Request,
    ) -> t.Iterable[bytes]:
        gate = Gate(self.veto, environ, start_response, units, where)
        try:
            body = self.app(environ, gate.start_response)
        except BaseException as exc:
            roll_back(units, where, exc)
            raise
        try:
            kind = type(body)
            if gate.status is not None and (
                kind is list or kind is tuple or kind is environ.get("wsgi.file_wrapper")
            ):
                # A finished body: commit (or roll back) and end now, then let
                # the status through.
                end_units(units, commit=gate.decide(), where=where)
                gate.send()
                return body
            response = CommittingResponse(body, iter(body).__next__, units, where, gate)
        except BaseException as exc:
            close_quietly(body)
            roll_back(units, where, exc)
            raise
        return response


def _start(sessions: tuple[ScopedSession[t.Any], ...], where: Request) -> Units:
    started: list[Cell] = []
    try:
        for scoped in sessions:
            started.append(open_unit(scoped, where, request=True))
    except BaseException as exc:
        roll_back(tuple(started), where, exc)
        raise
    return tuple(started)
