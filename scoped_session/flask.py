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

The scope is the application context object itself: each context carries its own
cell, so nothing keyed by ``id()`` can be handed to a later context.
"""

from __future__ import annotations

import functools
import itertools
import typing as t
from types import GeneratorType

from flask import Flask, Response
from flask.ctx import AppContext
from flask.globals import app_ctx

from ._cells import EMPTY, Cell, NoCell
from ._ending import end_sessions
from ._exceptions import NoScopeError, ScopedSessionError
from ._proxy import ScopedSession
from ._registry import Closeable
from ._scopes import Scope

__all__ = ["FlaskScopedSession"]


S = t.TypeVar("S", bound=Closeable)

#: The key of the per-app state in ``app.extensions``: a dict that maps each
#: FlaskScopedSession registered on the app to its settings.
EXTENSION_KEY = "scoped_session"

#: Names the attributes that hold a FlaskScopedSession's cell and state on an
#: application context. A counter, not ``id()``: an id is reused once its object
#: is collected, a counter value never is.
_numbers = itertools.count()

_NO_CONTEXT = (
    "No Flask application context is active. Push one with 'app.app_context()'"
    " or call this inside a request."
)


class _AppState:
    """What a FlaskScopedSession keeps per app in ``app.extensions``."""

    __slots__ = ("commit",)

    def __init__(self, commit: bool) -> None:
        self.commit = commit


class _Deferred:
    """A context whose end was handed to its streamed response.

    A teardown that runs while the body's generator is running comes from the
    body's end (exhausted, failed, or closed because the client went away):
    it ends the session. Flask 3.1 also pops the context once before the body
    runs (``stream_with_context`` pushes it again): that teardown leaves the
    session open. Flask 3.0 keeps the context pushed until the body is over.
    A body that never ran is ended by the response's ``close()``. ``commit``
    says whether the writes are to be committed; ``error`` is how the context
    was first left.
    """

    __slots__ = ("body", "commit", "error", "left")

    def __init__(self, body: GeneratorType[t.Any, t.Any, t.Any], commit: bool) -> None:
        self.body = body
        self.commit = commit
        self.error: BaseException | None = None
        self.left = False


def _context() -> AppContext | None:
    """The current application context, or None."""
    try:
        # werkzeug's documented way to the object behind a proxy.
        context: AppContext = app_ctx._get_current_object()  # type: ignore[attr-defined]
        return context
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
        return getattr(_context(), self._attr, self)


class AppContextScope(Scope):
    """A scope whose cell lives on the current Flask application context.

    The cell is an attribute of the ``AppContext`` object, so it lives and dies
    with that context; cells are also tracked weakly for ``remove_all()``.
    Sessions are made only in the contexts of the apps it was registered on.
    """

    kind = "flask"
    hooked = True
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

    def get(self) -> Cell | None:
        context = _context()
        if context is None:
            return None
        cell: Cell | None = context.__dict__.get(self.cell_attr)
        return cell

    def install(self, cell: Cell | None) -> None:
        context = _context()
        if cell is None:
            if context is not None:
                context.__dict__.pop(self.cell_attr, None)
            return
        if context is None:
            raise NoScopeError(_NO_CONTEXT)
        self.track(cell)
        setattr(context, self.cell_attr, cell)

    def check(self) -> None:
        # Before the factory runs: a session made outside any context, or in the
        # context of an app nobody ends contexts for, would never be closed.
        context = _context()
        if context is None:
            raise NoScopeError(_NO_CONTEXT)
        if self.key not in context.app.extensions:
            raise ScopedSessionError(
                f"This FlaskScopedSession is not registered on the app {context.app.name!r}."
                " Call Session.init_app(app) where the app is created."
            )

    def register(self, app: Flask) -> None:
        """Let ``app``'s contexts get sessions."""
        app.extensions[self.key] = True

    def label(self) -> str:
        return "an application context"

    def take(self, context: AppContext) -> list[t.Any]:
        """Take every session of ``context`` (its cell and the ones a unit left
        open there shadowed), counted as removed."""
        cell: Cell | None = context.__dict__.pop(self.cell_attr, None)
        return [] if cell is None else cell.sessions()


class FlaskScopedSession(ScopedSession[S]):
    """A scoped session whose scope is the current Flask application context.

    :param session_factory: makes a new session, usually a
        :class:`sqlalchemy.orm.sessionmaker`.
    :param app: register on this app now (same as calling :meth:`init_app`).
    :param commit: commit a request's session after a successful response
        (no exception, status below 400) before it is sent; otherwise it is
        rolled back. A streamed response (a generator body) is committed when
        its body has run to its end, as the body may still read results the
        view opened; a client that leaves mid-stream rolls it all back.
        ``None`` (the default) reads the app's ``SCOPED_SESSION_COMMIT``
        config key, ``False`` when unset. Contexts
        without a response (scripts, CLI commands) never commit on their own.
    """

    def __init__(
        self,
        session_factory: t.Callable[..., S],
        app: Flask | None = None,
        *,
        commit: bool | None = None,
    ) -> None:
        self._flask_scope = AppContextScope()
        super().__init__(session_factory, scope=self._flask_scope)
        self._commit_default = commit
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: its application contexts get sessions, and each
        is closed when its context (or streamed response) is over."""
        registered = app.extensions.setdefault(EXTENSION_KEY, {})
        if self in registered:
            raise ScopedSessionError(
                f"This FlaskScopedSession is already registered on the app {app.name!r};"
                " call init_app() once per app."
            )
        commit = self._commit_default
        if commit is None:
            commit = bool(app.config.get("SCOPED_SESSION_COMMIT", False))
        registered[self] = _AppState(commit)
        self._flask_scope.register(app)

        # Plain handlers, not signals: a signal with receivers costs every
        # request of every app several microseconds. after_request handlers run
        # in reverse order of registration, so the ones an app registers after
        # init_app() (the usual order) run before the commit.
        def after_request(response: Response) -> Response:
            return self._after_request(response, commit)

        app.after_request(after_request)
        app.teardown_appcontext(self._on_teardown)

    # -- the end of a context ----------------------------------------------------
    # A context's cell belongs to the context, as a thread's cell belongs to its
    # thread: it is made on first use and emptied when the context is over. A
    # Session.scope() inside a context is a unit of its own, as anywhere else.

    def _after_request(self, response: Response, commit: bool) -> Response:
        """Commit a successful response's session before it is sent; hand the
        end of the context to a streamed response's ``close()``."""
        context = _context()
        if context is None:
            return response
        scope = self._flask_scope
        commit = commit and response.status_code < 400
        # A generator body may run later in this context (stream_with_context
        # pushes it again), or read through results and objects of this
        # session. Other bodies cannot: an error page made by Flask, a file
        # (whose response's close() is not even called with direct_passthrough).
        if type(response.response) is GeneratorType and not response.direct_passthrough:
            # Its commit waits until the body has run to its end: committing now
            # would hand the session's connection back to the pool while the
            # body may still read a result the view opened on it, and another
            # request could get that connection meanwhile.
            deferred = _Deferred(response.response, commit)
            setattr(context, scope.state_attr, deferred)
            response.call_on_close(functools.partial(self._close_deferred, context, deferred))
            return response
        if commit:
            session = getattr(context.__dict__.get(scope.cell_attr, EMPTY), "session", None)
            if session is not None:
                # Raising here turns into a logged 500 response, by Flask.
                end_sessions([session], commit=True, close=False, where=_Where(context))
        return response

    def _close_deferred(self, context: AppContext, deferred: _Deferred) -> None:
        # Runs from the response's close(), on whichever thread the server
        # closes it; a body that ran has ended the context already.
        found = context.__dict__
        if found.get(self._flask_scope.state_attr) is deferred:
            del found[self._flask_scope.state_attr]
            self._end_context(context, deferred.error, commit=deferred.commit)

    def _on_teardown(self, exc: BaseException | None) -> None:
        """The application context is being popped: close its session, unless
        this is the pop before a streamed body runs."""
        context = _context()
        if context is None:
            return
        found = context.__dict__
        state_attr = self._flask_scope.state_attr
        deferred: _Deferred | None = found.get(state_attr)
        if deferred is None:
            self._end_context(context, exc, commit=False)
        elif not (deferred.left or deferred.body.gi_running):
            deferred.left = True
            deferred.error = exc
        else:
            # The body is over: exhausted, failed, or closed (GeneratorExit,
            # the client went away). Ending here does not depend on the
            # server calling close() after a complete body.
            del found[state_attr]
            error = exc if exc is not None else deferred.error
            self._end_context(context, error, commit=deferred.commit)

    def _end_context(
        self, context: AppContext, error: BaseException | None, *, commit: bool
    ) -> None:
        """Empty the context's cell by the policy: commit (when asked and ``error``
        is None), then close its session and any a unit left open there shadowed."""
        sessions = self._flask_scope.take(context)
        if sessions:
            end_sessions(sessions, commit=commit, error=error, where=_Where(context))


class _Where:
    """Names an application context in logs, formatted only when one is written."""

    __slots__ = ("context",)

    def __init__(self, context: AppContext) -> None:
        self.context = context

    def __str__(self) -> str:
        return f"an application context of the app {self.context.app.name!r}"
