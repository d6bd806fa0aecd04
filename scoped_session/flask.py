"""Flask integration: one session per application context, closed when it is over.

::

    from flask import Flask
    from sqlalchemy.orm import sessionmaker
    from scoped_session.flask import FlaskScopedSession

    Session = FlaskScopedSession(sessionmaker(engine), commit=True)
    app = Flask(__name__)
    Session.init_app(app)

    @app.post("/notes")
    def add_note():
        Session.add(Note(text=request.json["text"]))  # the request's session
        return {"ok": True}     # committed before the response is sent

A request's session is made on first use, committed (with ``commit=True``)
once the response is ready and successful, before it is sent (a streamed
response's once its body has run to its end), and closed when the request is
really over: at the end of the application context, or, for a response whose body is a
generator (``stream_with_context``), when that body is over or the server closes
the response, whichever comes first. A ``with app.app_context():`` block (in a
script, a CLI command, or nested in a request) gets a session of its own,
removed when the block ends.

``commit=True`` commits after a response, so it does nothing where there is
none: a CLI command, a ``with app.app_context():`` block. There, a unit of work
commits, on the app's engine as a request would::

    @app.cli.command("seed")
    @Session.scope(commit=True)         # committed when the command returns
    def seed():
        Session.add(Note(text="first"))

    with app.app_context(), Session.scope(commit=True):
        Session.add(Note(text="from a script"))

App factories: one FlaskScopedSession serves any number of apps, each with an
engine of its own, passed as ``bind`` or made from the app's config::

    Session = FlaskScopedSession(sessionmaker())   # no engine at import time

    def create_app(url):
        app = Flask(__name__)
        Session.init_app(app, bind=create_engine(url))
        # or: app.config["SCOPED_SESSION_DATABASE_URI"] = url; Session.init_app(app)
        return app

Each session made in a context of an app is then made with ``bind=`` that app's
engine, which ``Session.get_engine(app)`` (or ``Session.engine`` inside a context)
returns, for ``create_all()`` and tests.

Several databases in one app: ``binds`` maps the declarative base of the models of
each other database to its engine, as SQLAlchemy's ``Session(binds=...)`` does::

    Session.init_app(app, bind=engine, binds={AuthBase: auth_engine})
    # or: app.config["SCOPED_SESSION_BINDS"] = {AuthBase: "sqlite:///auth.db"}

``Session.get_engine(app, AuthBase)`` returns that engine, as does the bind's name,
``Session.get_engine(app, "auth")``, when ``AuthBase.metadata.info["bind_key"]`` is
``"auth"`` (which Flask-Migrate's multi-database template needs).

The scope is the application context object itself: each context carries its own
cell, so nothing keyed by ``id()`` can be handed to a later context.
"""

from __future__ import annotations

import functools
import typing as t
from types import GeneratorType

from flask import Flask, Response
from flask.ctx import AppContext

from ._arguments import check_flag
from ._ending import end_scope_cell, end_sessions
from ._exceptions import NoScopeError, ScopedSessionError
from ._flask_migrate import MigrateTarget
from ._flask_query import (
    Pagination,
    SessionLike,
    first_or_404,
    get_or_404,
    one_or_404,
    paginate,
)
from ._flask_scope import (
    COMMIT_KEY,
    DATABASE_URI_KEY,
    AppContextScope,
    AppState,
    bound_engine,
    check_app,
    check_bind,
    check_binds,
    configured_binds,
    configured_engine,
    current_context,
    current_context_or,
)
from ._proxy import ScopedSession
from ._registry import Closeable

if t.TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, TableClause

    from ._cells import Cell
    from ._flask_scope import BindKey

__all__ = [
    "FlaskScopedSession",
    "MigrateTarget",
    "Pagination",
    "SessionLike",
    "first_or_404",
    "get_or_404",
    "one_or_404",
    "paginate",
]


S = t.TypeVar("S", bound=Closeable)

#: The key of the per-app state in ``app.extensions``: a dict that maps each
#: FlaskScopedSession registered on the app to its settings.
EXTENSION_KEY = "scoped_session"


class _Deferred:
    """A context whose end was handed to its streamed response.

    A teardown that runs while the body's generator is running comes from the
    body's end (exhausted, failed, or closed because the client went away):
    it ends the session. Flask 3.1 also pops the context once before the body
    runs (``stream_with_context`` pushes it again): that teardown leaves the
    session open. Flask 3.0 keeps the context pushed until the body is over.
    A body that never ran is ended by the response's ``close()``, and rolled
    back. ``commit`` says whether the writes are to be committed once the body
    has run to its end; ``error`` is how the context was first left.
    """

    __slots__ = ("body", "commit", "error", "left")

    def __init__(self, body: GeneratorType[t.Any, t.Any, t.Any], commit: bool) -> None:
        self.body = body
        self.commit = commit
        self.error: BaseException | None = None
        self.left = False


class FlaskScopedSession(ScopedSession[S]):
    """A scoped session whose scope is the current Flask application context.

    One object serves any number of apps, each with its own engine if
    :meth:`init_app` gives it one. :meth:`configure` still reconfigures the
    session factory, for every app in the process: to bind each app to its own
    database, pass ``bind=`` to :meth:`init_app` (or set its config key).

    :param session_factory: makes a new session, usually a
        :class:`sqlalchemy.orm.sessionmaker`.
    :param app: register on this app now (same as calling :meth:`init_app`).
    :param commit: commit a request's session after a successful response
        (no exception, status below 400) before it is sent; otherwise it is
        rolled back. A streamed response (a generator body) is committed when
        its body has run to its end, as the body may still read results the
        view opened; a client that leaves mid-stream rolls it all back.
        ``None`` (the default) reads the app's ``SCOPED_SESSION_COMMIT``
        config key, ``False`` when unset. Contexts without a response (CLI
        commands, ``with app.app_context():`` blocks in scripts and tests)
        never commit on their own, whatever ``commit`` says: open a unit of
        work there, ``with Session.scope(commit=True):`` or the decorator
        ``@Session.scope(commit=True)`` under ``@app.cli.command()``, which
        commits when it ends without an exception.
    """

    def __init__(
        self,
        session_factory: t.Callable[..., S],
        app: Flask | None = None,
        *,
        commit: bool | None = None,
    ) -> None:
        if isinstance(session_factory, Flask):
            # A Flask app is callable (WSGI), so the registry would take it.
            raise TypeError(
                "FlaskScopedSession() takes the session factory first and the app"
                " second: FlaskScopedSession(sessionmaker(engine), app); got the Flask"
                f" app {session_factory.name!r} as the session factory."
            )
        if app is not None:
            check_app(app, "FlaskScopedSession(session_factory, app)")
        if commit is not None:
            check_flag(commit, "commit")
        self._flask_scope = AppContextScope()
        super().__init__(session_factory, scope=self._flask_scope)
        self._commit_default = commit
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        bind: Engine | Connection | None = None,
        binds: t.Mapping[type[t.Any] | TableClause, Engine | Connection] | None = None,
    ) -> None:
        """Register on ``app``: its application contexts get sessions, and each
        is closed when its context (or streamed response) is over.

        :param app: the Flask app, typically made by an app factory.
        :param bind: the app's SQLAlchemy engine (or connection): each session
            made in a context of this app is made with ``bind=`` it (so the
            factory must take ``bind``, as a sessionmaker does), which wins over
            the factory's own bind; ``Session(bind=...)`` wins over both. It
            stays yours to dispose.
            Without it, the app's ``SCOPED_SESSION_DATABASE_URI`` config key, if
            set, makes one with :func:`sqlalchemy.create_engine`, with the
            keyword arguments in ``SCOPED_SESSION_ENGINE_OPTIONS``; that engine
            is disposed when the app is garbage-collected. Neither: sessions are
            made as the session factory makes them.
        :param binds: the app's other databases, as SQLAlchemy's
            ``Session(binds=...)`` takes them: the declarative base of each
            database's models (or a mapped class, or a ``Table``) mapped to its
            engine, ``{AuthBase: auth_engine}``. Each session of the app is made
            with ``binds=`` them (instead of the factory's own), and queries and
            flushes of those models go to their engine; the rest to ``bind``.
            Without it, the ``SCOPED_SESSION_BINDS`` config key, if set, maps
            each base to a URL (or a dict of ``create_engine()`` options with the
            URL under ``"url"``) and makes the engines, disposed with the app.
        """
        check_app(app, "init_app()")
        if bind is not None:
            bind = check_bind(bind)
        checked = None if binds is None else check_binds(binds)
        registered = app.extensions.setdefault(EXTENSION_KEY, {})
        if self in registered:
            raise ScopedSessionError(
                f"This FlaskScopedSession is already registered on the app {app.name!r};"
                " call init_app() once per app."
            )
        commit = self._commit_default
        if commit is None:
            commit = check_flag(app.config.get(COMMIT_KEY, False), f"app.config[{COMMIT_KEY!r}]")
        if checked is None:
            checked = configured_binds(app)
        if bind is None:
            bind = configured_engine(app)
        state = registered[self] = AppState(commit, bind, _where(app), checked)
        self._flask_scope.register(app, state)

        # Plain functions, not signals: a signal with receivers costs every
        # request of every app several microseconds. Flask's dispatch of each
        # handler costs every request about a microsecond, so a request that
        # never uses the session runs only the teardown, which returns at once.
        # With commit, an app-wide after_request handler commits: they run in
        # reverse order of registration, so the ones an app registers after
        # init_app() (the usual order) run before the commit. Without it, only
        # a request that made a session watches its response, for a streamed
        # body, with after_this_request (the scope registers the same handler).
        handler = self._response_handler(state)
        if commit:
            app.after_request(handler)
        else:
            state.watch = handler
        app.teardown_appcontext(self._teardown_handler(state))

    def get_engine(
        self, app: Flask | None = None, bind_key: type[t.Any] | TableClause | str | None = None
    ) -> Engine:
        """The engine that ``app``'s sessions are bound to (the current app's by
        default), for ``metadata.create_all()``, ``drop_all()`` and tests.

        An app bound to a connection gives that connection's engine. Raises
        :class:`NoScopeError` outside an application context when no ``app`` is
        passed, and :class:`ScopedSessionError` for an app without an engine.

        :param bind_key: the engine of one of the app's ``binds`` instead: its key
            (``AuthBase``), a mapped class whose base is one, or the bind's name
            (``"auth"``, its metadata's ``info["bind_key"]``).
        """
        app, state = self._state("get_engine", app)
        if bind_key is not None:
            return bound_engine(state.binds, bind_key, app)
        if state.bind is None:
            raise ScopedSessionError(
                f"The app {app.name!r} has no engine of this FlaskScopedSession: its"
                " sessions are made as the session factory makes them. Give it one with"
                f" Session.init_app(app, bind=engine), or set app.config[{DATABASE_URI_KEY!r}]"
                " before init_app()."
            )
        return state.bind.engine

    def get_binds(self, app: Flask | None = None) -> dict[BindKey, Engine]:
        """The engines of ``app``'s binds (the current app's by default), by their
        keys: ``{AuthBase: auth_engine}``; empty for an app without binds."""
        return {key: bind.engine for key, bind in self._state("get_binds", app)[1].binds.items()}

    def _state(self, method: str, app: Flask | None) -> tuple[Flask, AppState]:
        """``app`` (the current one by default) and what it was registered with,
        for the public ``method``."""
        if app is None:
            context = current_context()
            if context is None:
                raise NoScopeError(
                    "No Flask application context is active, so there is no current app."
                    f" Pass the app, Session.{method}(app), or push a context with"
                    " 'app.app_context()'."
                )
            app = context.app
        else:
            check_app(app, f"{method}()")
        state = self._flask_scope.state(app)
        if state is None:
            raise ScopedSessionError(
                f"This FlaskScopedSession is not registered on the app {app.name!r}."
                " Call Session.init_app(app, bind=engine) where the app is created."
            )
        return app, state

    @property
    def engine(self) -> Engine:
        """The current app's engine: :meth:`get_engine` with no app."""
        return self.get_engine()

    # -- the end of a context ----------------------------------------------------
    # A context's cell belongs to the context, as a thread's cell belongs to its
    # thread: it is made on first use and emptied when the context is over. A
    # Session.scope() inside a context is a unit of its own, as anywhere else.

    def _response_handler(self, state: AppState) -> t.Callable[[Response], Response]:
        """The handler that sees the response of a request of the app ``state``
        belongs to. With commit, the app's after_request handler: it commits the
        request's session before the response is sent. Without, the one a
        request that made a session registers with after_this_request. Either
        hands the end of the context to a streamed body."""
        scope = self._flask_scope
        commit = state.commit

        def after_request(response: Response) -> Response:
            # A generator body may run later in this context (stream_with_context
            # pushes it again), or read through results and objects of this
            # session. Other bodies cannot: an error page made by Flask, a file
            # (whose response's close() is not even called with direct_passthrough).
            body = response.response
            if type(body) is GeneratorType and not response.direct_passthrough:
                self._streamed(state, response, body)
            elif commit:
                # The attribute name is read each time: a fork child's scope has
                # a new one.
                cell: Cell | None = getattr(current_context_or(None), scope.cell_attr, None)
                if cell is not None:
                    session = cell.session
                    if session is not None and response.status_code < 400:
                        # Raising here turns into a logged 500 response, by Flask.
                        end_sessions((session,), commit=True, close=False, where=state.where)
            return response

        return after_request

    def _streamed(
        self, state: AppState, response: Response, body: GeneratorType[t.Any, t.Any, t.Any]
    ) -> None:
        """The response of a request of the app ``state`` belongs to has a
        generator body: hand the end of its context to the body."""
        context = current_context()
        if context is None:
            return
        scope = self._flask_scope
        found = context.__dict__
        if (
            (state.commit or scope.cell_attr in found)
            and scope.state_attr not in found
            # Registered by a context of this app (not by another app's, nested
            # in the view, which is over already).
            and scope.state(context.app) is state
        ):
            self._defer(context, response, body, state.commit and response.status_code < 400)

    def _defer(
        self,
        context: AppContext,
        response: Response,
        body: GeneratorType[t.Any, t.Any, t.Any],
        commit: bool,
    ) -> None:
        """Hand the end of ``context`` to its streamed ``response``."""
        # Its commit waits until the body has run to its end: committing now
        # would hand the session's connection back to the pool while the body
        # may still read a result the view opened on it, and another request
        # could get that connection meanwhile.
        deferred = _Deferred(body, commit)
        setattr(context, self._flask_scope.state_attr, deferred)
        response.call_on_close(functools.partial(self._close_deferred, context, deferred))

    def _close_deferred(self, context: AppContext, deferred: _Deferred) -> None:
        # Runs from the response's close(), on whichever thread the server
        # closes it. A body that ran to its end (or failed) has ended the context
        # already; one still waiting here never did (the client went away before
        # it ran), so nothing is committed, as for a client that leaves mid-stream.
        found = context.__dict__
        if found.get(self._flask_scope.state_attr) is deferred:
            del found[self._flask_scope.state_attr]
            cell = found.pop(self._flask_scope.cell_attr, None)
            if cell is not None:
                end_scope_cell(cell, commit=False, error=deferred.error, where=_where(context.app))

    def _teardown_handler(self, state: AppState) -> t.Callable[[BaseException | None], None]:
        """The app's teardown_appcontext handler: the application context is
        being popped, so close its session, unless this is the pop before a
        streamed body runs."""
        scope = self._flask_scope

        def teardown(exc: BaseException | None) -> None:
            # Every context of the app runs this: one read of the context.
            context = current_context_or(None)
            if context is None:  # pragma: no cover - Flask tears down a pushed context
                return
            found = context.__dict__
            if scope.cell_attr not in found:  # the context never used a session
                return
            deferred: _Deferred | None = found.get(scope.state_attr)
            if deferred is None:
                end_scope_cell(
                    found.pop(scope.cell_attr), commit=False, error=exc, where=state.where
                )
            elif not (deferred.left or deferred.body.gi_running):
                deferred.left = True
                deferred.error = exc
            else:
                # The body is over: exhausted, failed, or closed (GeneratorExit,
                # the client went away). Ending here does not depend on the
                # server calling close() after a complete body.
                del found[scope.state_attr]
                error = exc if exc is not None else deferred.error
                end_scope_cell(
                    found.pop(scope.cell_attr),
                    commit=deferred.commit,
                    error=error,
                    where=state.where,
                )

        return teardown


def _where(app: Flask) -> str:
    """Names ``app``'s application contexts in logs."""
    return f"an application context of the app {app.name!r}"
