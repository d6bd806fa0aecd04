"""The Flask extension's scope: a cell per application context, and what it keeps
per app (whether requests commit, the app's engine). ``scoped_session.flask`` is
the public module; this one is its implementation."""

from __future__ import annotations

import itertools
import os
import sys
import typing as t
import weakref

from flask import Flask
from flask.ctx import AppContext
from flask.globals import app_ctx

from ._arguments import sqlalchemy_module
from ._cells import Cell, NoCell
from ._exceptions import NoScopeError, ScopedSessionError
from ._scopes import Scope

if t.TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "COMMIT_KEY",
    "DATABASE_URI_KEY",
    "ENGINE_OPTIONS_KEY",
    "NO_CONTEXT",
    "AppContextScope",
    "AppState",
    "app_context",
    "check_app",
    "check_bind",
    "configured_engine",
    "current_context",
]


#: Names the attributes that hold a FlaskScopedSession's cell and state on an
#: application context. A counter, not ``id()``: an id is reused once its object
#: is collected, a counter value never is.
_numbers = itertools.count()

#: The app config key that says whether requests commit, when the
#: FlaskScopedSession was made without ``commit``.
COMMIT_KEY = "SCOPED_SESSION_COMMIT"
#: The app config keys that make an app's engine when init_app() gets no ``bind``.
DATABASE_URI_KEY = "SCOPED_SESSION_DATABASE_URI"
ENGINE_OPTIONS_KEY = "SCOPED_SESSION_ENGINE_OPTIONS"

# The body of a streamed response runs after the request's context was popped,
# unless stream_with_context keeps it: the usual way to get here in a request.
NO_CONTEXT = (
    "No Flask application context is active. Push one with 'app.app_context()'"
    " or call this inside a request. In the generator of a streamed response,"
    " wrap it: Response(stream_with_context(generate())), so that it runs in"
    " the request's context and uses its session."
)


class AppState:
    """What a FlaskScopedSession keeps per app in ``app.extensions``: whether its
    requests commit, the app's engine (or connection), if it has one, and what
    runs when one of its contexts gets its first cell."""

    __slots__ = ("bind", "commit", "factory_kwargs", "started", "where")

    def __init__(self, commit: bool, bind: Engine | Connection | None, where: str) -> None:
        self.commit = commit
        self.bind = bind
        #: What the app's sessions are made with (see AppContextScope.admit).
        self.factory_kwargs: dict[str, t.Any] | None = None if bind is None else {"bind": bind}
        #: Called with a context of the app when it gets its first cell (the
        #: extension watches that request's response), or None.
        self.started: t.Callable[[AppContext], None] | None = None
        #: Names the app's contexts in logs.
        self.where = where


def check_app(app: object, call: str) -> Flask:
    """``app`` if it is a Flask app, else a TypeError that says what to pass."""
    if not isinstance(app, Flask):
        raise TypeError(
            f"{call} takes a Flask app, such as app = Flask(__name__); got an object"
            f" of type {type(app).__name__}."
        )
    return app


def check_bind(bind: object) -> Engine | Connection:
    """``bind`` if it is a SQLAlchemy Engine or Connection, else a TypeError."""
    # Without sqlalchemy.engine imported, nothing can be one of its engines.
    engine = sys.modules.get("sqlalchemy.engine")
    if engine is not None and isinstance(bind, engine.Engine | engine.Connection):
        return t.cast("Engine | Connection", bind)
    raise TypeError(
        "init_app() takes bind=engine, a SQLAlchemy Engine (or Connection) such as"
        f" sqlalchemy.create_engine(url); got an object of type {type(bind).__name__}."
        f" To bind the app by URL, set app.config[{DATABASE_URI_KEY!r}] and leave bind out."
    )


def configured_engine(app: Flask) -> Engine | None:
    """An engine made from ``app``'s config keys, disposed when the app is
    collected (Flask has no shutdown hook), or None when none is configured."""
    url = app.config.get(DATABASE_URI_KEY)
    if url is None:
        return None
    sa = sqlalchemy_module("sqlalchemy", f"the config key {DATABASE_URI_KEY}")
    # The URL itself is never in a message: it can hold a password.
    if not isinstance(url, str | sa.URL):
        raise TypeError(
            f"app.config[{DATABASE_URI_KEY!r}] must be a database URL, a string such as"
            f" 'sqlite:///app.db'; got an object of type {type(url).__name__}."
        )
    options = app.config.get(ENGINE_OPTIONS_KEY, {})
    if not isinstance(options, t.Mapping):
        raise TypeError(
            f"app.config[{ENGINE_OPTIONS_KEY!r}] must be a dict of keyword arguments for"
            " sqlalchemy.create_engine(), such as {'pool_size': 10}; got an object of"
            f" type {type(options).__name__}."
        )
    engine: Engine = sa.create_engine(url, **options)
    # The finalizer holds the engine, never the app.
    weakref.finalize(app, dispose, engine, os.getpid())
    return engine


def dispose(engine: Engine, pid: int) -> None:
    """Dispose of an engine the extension made. A fork child only drops the pool
    it inherited: closing its connections would talk on the parent's sockets."""
    engine.dispose(close=os.getpid() == pid)


#: The current application context, or RuntimeError outside one: werkzeug's
#: documented way to the object behind Flask's ``app_ctx`` proxy, looked up once.
#: Every use of a session reads it, and a lookup through the proxy costs more
#: than the call itself.
app_context: t.Callable[[], AppContext] = app_ctx._get_current_object  # type: ignore[attr-defined]


def current_context() -> AppContext | None:
    """The current application context, or None."""
    try:
        return app_context()
    except RuntimeError:  # outside any application context
        return None


class _FlaskSlot(NoCell):
    """The Flask scope's slot: ``cell`` is the cell on the current context, or the
    slot itself (which holds nothing) where there is none."""

    __slots__ = ("_attr",)

    def __init__(self, attr: str) -> None:
        self._attr = attr

    @property
    def cell(self) -> Cell | NoCell:
        # The proxy's hot path: one read of the context, no call of our own.
        try:
            return getattr(app_context(), self._attr, self)
        except RuntimeError:  # outside any application context
            return self


class AppContextScope(Scope):
    """A scope whose cell lives on the current Flask application context.

    The cell is an attribute of the ``AppContext`` object, so it lives and dies
    with that context; cells are also tracked weakly for ``remove_all()``.
    Sessions are made only in the contexts of the apps it was registered on.
    """

    kind = "flask"
    # The slot shows the context's cell exactly: no resolve() needed, and nothing
    # to claim (a context is one thread's at a time).
    admits = True
    # The context's end closes its session, always: nothing to warn about later.
    records_origin = False

    def __init__(self) -> None:
        #: Marks the apps whose contexts get sessions, in their ``extensions``
        #: (see :meth:`register`): the app keeps the mark, the scope no app.
        self.key = f"scoped_session.scope.{next(_numbers)}"
        super().__init__()

    def reset(self) -> None:
        super().reset()
        # Fresh attribute names: after os.fork() a context inherited from the
        # parent still carries the old attributes, which must now be invisible.
        number = next(_numbers)
        self.cell_attr = f"_scoped_session_cell_{number}"
        self.state_attr = f"_scoped_session_state_{number}"
        self.slot = _FlaskSlot(self.cell_attr)

    # Each of these runs once per session made (a request's first use of it), and
    # reads the context itself: it is not kept anywhere in between, where another
    # thread or a context pushed meanwhile could see it.

    def get(self) -> Cell | None:
        try:
            found = app_context().__dict__
        except RuntimeError:  # outside any application context
            return None
        cell: Cell | None = found.get(self.cell_attr)
        return cell

    def install(self, cell: Cell | None) -> None:
        try:
            context = app_context()
        except RuntimeError:
            if cell is None:
                return
            raise NoScopeError(NO_CONTEXT) from None
        found = context.__dict__
        if cell is None:
            found.pop(self.cell_attr, None)
            return
        self.tracked.add(cell)
        if self.cell_attr not in found:  # the context's first cell
            state: AppState | None = context.app.extensions.get(self.key)
            if state is not None and state.started is not None:
                state.started(context)
        found[self.cell_attr] = cell

    def admit(self) -> dict[str, t.Any] | None:
        # A session made outside any context, or in the context of an app nobody
        # ends contexts for, would never be closed.
        try:
            app = app_context().app
        except RuntimeError:
            raise NoScopeError(NO_CONTEXT) from None
        state: AppState | None = app.extensions.get(self.key)
        if state is None:
            raise ScopedSessionError(
                f"This FlaskScopedSession is not registered on the app {app.name!r}."
                " Call Session.init_app(app) where the app is created."
            )
        return state.factory_kwargs

    def register(self, app: Flask, state: AppState) -> None:
        """Let ``app``'s contexts get sessions, made as ``state`` says."""
        app.extensions[self.key] = state

    def state(self, app: Flask) -> AppState | None:
        """What ``app`` was registered with, or None."""
        state: AppState | None = app.extensions.get(self.key)
        return state

    def label(self) -> str:
        return "an application context"
