"""The Flask extension's scope: a cell per application context, and what it keeps
per app (whether requests commit, the app's engine and its binds).
``scoped_session.flask`` is the public module; this one is its implementation."""

from __future__ import annotations

import itertools
import os
import sys
import typing as t
import weakref

from flask import Flask, after_this_request
from flask import globals as flask_globals
from flask.ctx import AppContext

from ._arguments import sqlalchemy_module
from ._cells import Cell, NoCell
from ._exceptions import NoScopeError, ScopedSessionError
from ._scopes import Scope

if t.TYPE_CHECKING:
    from flask import Response
    from sqlalchemy import Connection, Engine, MetaData, TableClause

    #: What a bind is keyed by, as in SQLAlchemy's ``Session(binds=...)``: a class
    #: (a declarative base, or a mapped class) or a table.
    BindKey: t.TypeAlias = type[t.Any] | TableClause
    Binds: t.TypeAlias = dict[BindKey, Engine | Connection]

__all__ = [
    "BINDS_KEY",
    "COMMIT_KEY",
    "DATABASE_URI_KEY",
    "ENGINE_OPTIONS_KEY",
    "NO_CONTEXT",
    "AppContextScope",
    "AppState",
    "current_context_or",
    "bind_metadata",
    "bind_name",
    "bound_engine",
    "check_app",
    "check_bind",
    "check_binds",
    "configured_binds",
    "configured_engine",
    "current_context",
    "describe_key",
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
#: The app config key that makes the app's binds when init_app() gets no ``binds``.
BINDS_KEY = "SCOPED_SESSION_BINDS"

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
    requests commit, the app's engine (or connection) and binds, if it has them,
    and the handler that watches the response of a request that made a session."""

    __slots__ = ("bind", "binds", "commit", "factory_kwargs", "watch", "where")

    def __init__(
        self,
        commit: bool,
        bind: Engine | Connection | None,
        where: str,
        binds: Binds | None = None,
    ) -> None:
        self.commit = commit
        self.bind = bind
        self.binds: Binds = binds or {}
        kwargs: dict[str, t.Any] = {}
        if bind is not None:
            kwargs["bind"] = bind
        if binds:
            kwargs["binds"] = binds
        #: What the app's sessions are made with (see AppContextScope.admit).
        self.factory_kwargs: dict[str, t.Any] | None = kwargs or None
        #: Registered with ``after_this_request`` when a context of the app gets
        #: its first cell in a request (the extension watches that request's
        #: response), or None. One function per app, not one per request.
        self.watch: t.Callable[[Response], Response] | None = None
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


def check_bind(bind: object, what: str = "bind=engine") -> Engine | Connection:
    """``bind`` if it is a SQLAlchemy Engine or Connection, else a TypeError."""
    # Without sqlalchemy.engine imported, nothing can be one of its engines.
    engine = sys.modules.get("sqlalchemy.engine")
    if engine is not None and isinstance(bind, engine.Engine | engine.Connection):
        return t.cast("Engine | Connection", bind)
    key = BINDS_KEY if what.startswith("binds") else DATABASE_URI_KEY
    raise TypeError(
        f"init_app() takes {what}, a SQLAlchemy Engine (or Connection) such as"
        f" sqlalchemy.create_engine(url); got an object of type {type(bind).__name__}."
        f" To bind the app by URL, set app.config[{key!r}] and leave it out."
    )


def check_binds(binds: object) -> Binds:
    """``binds`` as a dict if it maps bind keys to engines (or connections), else
    a TypeError that says what to pass."""
    if not isinstance(binds, t.Mapping):
        raise TypeError(
            "init_app() takes binds={Base: engine}, a dict that maps the declarative"
            " base of the models of each other database to its SQLAlchemy Engine; got"
            f" an object of type {type(binds).__name__}."
        )
    checked: Binds = {}
    for key, bind in binds.items():
        key = check_bind_key(key, "init_app(binds=...)")
        checked[key] = check_bind(bind, f"binds={{{describe_key(key)}: engine}}")
    return checked


def check_bind_key(key: object, where: str) -> BindKey:
    """``key`` if SQLAlchemy's ``Session(binds=...)`` takes it: a class or a table."""
    sa = sqlalchemy_module("sqlalchemy", where)
    if isinstance(key, type | sa.TableClause):
        return t.cast("BindKey", key)
    if isinstance(key, str):
        raise TypeError(
            f"{where} keys each database by what SQLAlchemy's Session(binds=...) takes:"
            " the declarative base of the models that live there (or a mapped class,"
            f" or a Table), such as {{AuthBase: ...}}; got the string {key!r}. A bind"
            " gets its name (for Flask-Migrate and get_engine(app, name)) from its"
            " base's metadata: class AuthBase(DeclarativeBase): metadata ="
            f" MetaData(info={{'bind_key': {key!r}}})."
        )
    raise TypeError(
        f"{where} keys each database by the declarative base of the models that live"
        " there (or a mapped class, or a Table), such as {AuthBase: ...}; got a key of"
        f" type {type(key).__name__}."
    )


def describe_key(key: object) -> str:
    """Names a bind key in messages (never its engine: a URL can hold a password)."""
    if isinstance(key, type):
        return key.__name__
    name = getattr(key, "name", None)
    return f"Table {name!r}" if isinstance(name, str) else type(key).__name__


def bind_metadata(key: BindKey) -> MetaData | None:
    """The MetaData of the tables a bind key stands for, if it has one."""
    sa = sqlalchemy_module("sqlalchemy", "binds")
    metadata = getattr(key, "metadata", None)
    return metadata if isinstance(metadata, sa.MetaData) else None


def bind_name(key: BindKey) -> str | None:
    """A bind's name: ``info["bind_key"]`` of its metadata, as Flask-SQLAlchemy 3
    marks the metadata of each of its binds."""
    metadata = bind_metadata(key)
    name = None if metadata is None else metadata.info.get("bind_key")
    return name if isinstance(name, str) else None


def bound_engine(binds: Binds, key: object, app: Flask) -> Engine:
    """The engine of ``app``'s bind ``key``: a key of its binds, a class whose base
    is one (as SQLAlchemy looks a mapped class up), or a bind's name."""
    if isinstance(key, str):
        found = [bind for each, bind in binds.items() if bind_name(each) == key]
        if len(found) == 1:
            return found[0].engine
    elif isinstance(key, type):
        for cls in key.__mro__:
            if cls in binds:
                return binds[cls].engine
    elif key in binds:
        return binds[t.cast("BindKey", key)].engine
    names = ", ".join(
        describe_key(each) + (f" ({bind_name(each)!r})" if bind_name(each) else "")
        for each in binds
    )
    name = repr(key) if isinstance(key, str) else describe_key(key)
    raise ScopedSessionError(
        f"The app {app.name!r} has no bind {name} of this FlaskScopedSession; its binds:"
        f" {names or 'none'}. Give it one with Session.init_app(app, binds={{Base: engine}})"
        f" or app.config[{BINDS_KEY!r}] = {{Base: url}}, where Base is the declarative base"
        " of the models of that database (its name is its metadata's info['bind_key'])."
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
    engine: Engine = sa.create_engine(url, **engine_options(app))
    # The finalizer holds the engine, never the app.
    weakref.finalize(app, dispose, engine, os.getpid())
    return engine


def engine_options(app: Flask) -> dict[str, t.Any]:
    """The keyword arguments for ``create_engine()`` in ``app``'s config."""
    options = app.config.get(ENGINE_OPTIONS_KEY, {})
    if not isinstance(options, t.Mapping):
        raise TypeError(
            f"app.config[{ENGINE_OPTIONS_KEY!r}] must be a dict of keyword arguments for"
            " sqlalchemy.create_engine(), such as {'pool_size': 10}; got an object of"
            f" type {type(options).__name__}."
        )
    return dict(options)


def configured_binds(app: Flask) -> Binds | None:
    """The engines of ``app``'s ``SCOPED_SESSION_BINDS`` config key (each made with
    the ``SCOPED_SESSION_ENGINE_OPTIONS``, and the options of its own), disposed
    when the app is collected; None when the key is not set."""
    config = app.config.get(BINDS_KEY)
    if config is None:
        return None
    where = f"app.config[{BINDS_KEY!r}]"
    if not isinstance(config, t.Mapping):
        raise TypeError(
            f"{where} must be a dict that maps the declarative base of the models of each"
            " other database to its URL, such as {AuthBase: 'sqlite:///auth.db'}; got an"
            f" object of type {type(config).__name__}."
        )
    sa = sqlalchemy_module("sqlalchemy", f"the config key {BINDS_KEY}")
    defaults = engine_options(app)
    wanted: list[tuple[BindKey, t.Any, dict[str, t.Any]]] = []
    # Everything is checked before any engine is made; no URL is ever in a message.
    for key, value in config.items():
        key = check_bind_key(key, where)
        options = dict(defaults)
        url = value
        if isinstance(value, t.Mapping):
            options.update(value)
            url = options.pop("url", None)
        if not isinstance(url, str | sa.URL):
            raise TypeError(
                f"{where}[{describe_key(key)}] must be a database URL, a string such as"
                " 'sqlite:///auth.db', or a dict of keyword arguments for"
                " sqlalchemy.create_engine() with the URL under 'url'; got an object of"
                f" type {type(value).__name__}."
            )
        wanted.append((key, url, options))
    made: list[Engine] = []
    try:
        for _, url, options in wanted:
            made.append(sa.create_engine(url, **options))
    except BaseException:
        for engine in made:
            engine.dispose()
        raise
    for engine in made:
        weakref.finalize(app, dispose, engine, os.getpid())
    return {key: engine for (key, _, _), engine in zip(wanted, made, strict=True)}


def dispose(engine: Engine, pid: int) -> None:
    """Dispose of an engine the extension made. A fork child only drops the pool
    it inherited: closing its connections would talk on the parent's sockets."""
    engine.dispose(close=os.getpid() == pid)


#: The current application context, or ``default`` outside one. Every use of a
#: session and every end of a context reads it: the context variable behind
#: Flask's ``app_ctx`` proxy is read directly where Flask has it (``_cv_app``,
#: Flask 2.3 to 3.1), as werkzeug's ``app_ctx._get_current_object()`` costs two
#: Python calls, and an exception outside a context. Elsewhere that call stands in.
current_context_or: t.Callable[[t.Any], t.Any]
_cv_app = getattr(flask_globals, "_cv_app", None)
if _cv_app is not None:
    current_context_or = _cv_app.get
else:  # pragma: no cover - a Flask without the variable

    def current_context_or(default: t.Any) -> t.Any:
        try:
            return flask_globals.app_ctx._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:  # outside any application context
            return default


def current_context() -> AppContext | None:
    """The current application context, or None."""
    context: AppContext | None = current_context_or(None)
    return context


_ref = weakref.ref


class _FlaskSlot(NoCell):
    """The Flask scope's slot: ``cell`` is the cell on the current context, or the
    slot itself (which holds nothing) where there is none."""

    __slots__ = ("_attr",)

    def __init__(self, attr: str) -> None:
        self._attr = attr

    @property
    def cell(self) -> Cell | NoCell:
        # The proxy's hot path: one read of the context, no call of our own.
        # Outside any context the read gives the slot itself, which has no
        # such attribute either.
        return getattr(current_context_or(self), self._attr, self)


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
        context = current_context_or(None)
        if context is None:  # outside any application context
            return None
        cell: Cell | None = context.__dict__.get(self.cell_attr)
        return cell

    def install(self, cell: Cell | None) -> None:
        context = current_context_or(None)
        if context is None:
            if cell is None:
                return
            raise NoScopeError(NO_CONTEXT)
        found = context.__dict__
        if cell is None:
            found.pop(self.cell_attr, None)
            return
        tracked = self.tracked  # CellTracker.add(), inline: a call less per request
        tracked.refs.add(_ref(cell, tracked.discard))
        if self.cell_attr not in found:  # the context's first cell
            state: AppState | None = context.app.extensions.get(self.key)
            if state is not None and state.watch is not None:
                # A request's response is watched (for a streamed body) by the
                # app's one handler, which finds the context itself.
                try:  # noqa: SIM105 - suppress() would cost every request a context manager
                    after_this_request(state.watch)
                except RuntimeError:  # not in a request: a CLI command, a script
                    pass
        found[self.cell_attr] = cell

    def admit(self) -> dict[str, t.Any] | None:
        # A session made outside any context, or in the context of an app nobody
        # ends contexts for, would never be closed.
        context = current_context_or(None)
        if context is None:
            raise NoScopeError(NO_CONTEXT)
        app = context.app
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

    # A context's end closes its cell's session: no label is ever shown.
    labels = False
