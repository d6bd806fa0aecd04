"""The registry core that ScopedSession and AsyncScopedSession share.

A :class:`Registry` keeps one session per scope (thread, context, key, task, Flask
application context) in the scope's cells: it finds the caller's session, makes
one on first use, takes it out again, counts, and forgets everything in a fork
child. What differs between sync and async (closing) lives in the subclasses;
where sessions live lives in the scopes (``_scopes.py``).

Integrations open units of work with :func:`open_unit` (one cell per registry and
request, job or task) and end them through ``_ending``; they touch nothing else of
a registry but its public members and :func:`take_loose`.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import typing as t
import warnings
import weakref

from . import _events
from ._arguments import check_registry, sqlalchemy_module
from ._cells import GIL, Cell, NoCell, Stats, describe, origin_text
from ._exceptions import NoScopeError, ScopedSessionWarning, already_present, compatible
from ._scopes import ContextScope, KeyedScope, Scope, ThreadScope

__all__ = [
    "Closeable",
    "Registry",
    "RegistryView",
    "SessionStats",
    "forget_all",
    "open_unit",
    "take_loose",
]


class Closeable(t.Protocol):
    def close(self) -> object: ...


S = t.TypeVar("S", bound=Closeable)

#: Every live registry, so that a fork child can make each forget its cells.
_instances: weakref.WeakSet[Registry[t.Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for registry in list(_instances):
        registry._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SessionStats(t.NamedTuple):
    """Counts of a registry's sessions (see :meth:`Registry.stats`)."""

    #: Sessions held right now, in every scope.
    live: int
    #: Sessions made by the factory.
    created: int
    #: Sessions closed by ``remove()``, ``remove_all()`` or the end of a unit.
    removed: int
    #: Sessions closed by a backstop: a thread or context that ended without
    #: ``remove()``, a response never closed, a stale unit of work.
    reaped: int


def _closes_async(cls: object) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, "close", None))


class Registry(t.Generic[S]):
    """Sessions per scope, made by ``session_factory`` on first use.

    :param session_factory: makes a new session, called with no arguments or with
        those given to ``Session(**kw)``.
    :param scopefunc: returns a hashable key for the caller's scope; a session is
        kept per key (SQLAlchemy-compatible). Exclusive with ``scope``.
    :param scope: a scope by name, or a :class:`~scoped_session._scopes.Scope`
        object (an integration's own).
    :param strict: make sessions only inside a unit of work.
    """

    #: Named in messages.
    _NAME = "ScopedSession"
    #: The scope names this registry takes, the first being the default.
    _SCOPES: tuple[str, ...] = ("thread", "context")
    #: Whether its sessions' close() is a coroutine function.
    _ASYNC = False

    session_factory: t.Callable[..., S]

    def __init__(
        self,
        session_factory: t.Callable[..., S],
        scopefunc: t.Callable[[], object] | None = None,
        *,
        scope: str | Scope | None = None,
        strict: bool = False,
    ) -> None:
        check_registry(
            self._NAME,
            session_factory,
            scopefunc,
            scope,
            strict,
            scope_names=self._SCOPES,
            factory_hint=self._factory_hint(),
            scope_help=self._scope_help(),
        )
        self._check_factory(session_factory)
        self.session_factory = session_factory
        self._strict = strict
        self._stats = Stats()
        if scopefunc is not None:
            scope = self._keyed_scope(scopefunc)
        elif scope is None or isinstance(scope, str):
            scope = self._make_scope(scope or self._SCOPES[0])
        self._scope: Scope = scope
        self._slot = scope.slot
        # Two threads can share a custom key: making its session must not race.
        self._create_lock = threading.RLock() if scope.shared else None
        #: The session classes seen, and whether one can flag itself as serving
        #: asyncio (checked at each session made).
        self._checked: dict[type[t.Any], bool] = {}
        _instances.add(self)
        if "sqlalchemy.orm" in sys.modules:
            # event.listen(Session, ...) reaches the factory's session class.
            _events.enable(Registry)

    @property
    def is_async(self) -> bool:
        """Whether this registry's sessions are async (their close() is awaited)."""
        return self._ASYNC

    @property
    def registry(self) -> RegistryView[S]:
        """The caller's slot, as on SQLAlchemy's ``scoped_session``: ``has()``,
        ``set(obj)``, ``clear()`` (forget without closing) and ``()`` (get or make).

        A view made per read: the registry keeps no reference to it, so that a
        dropped registry is freed at once, not at the next cyclic collection."""
        return RegistryView(self)

    # -- what subclasses say about themselves ---------------------------------

    def _factory_hint(self) -> str:
        return "sqlalchemy.orm.sessionmaker(bind=engine)"

    def _scope_help(self) -> str:
        return (
            "pass scope='thread' (a session per thread, the default) or"
            " scope='context' (per contextvars context: thread, asyncio task, greenlet)"
        )

    def _make_scope(self, name: str) -> Scope:
        return ContextScope() if name == "context" else ThreadScope()

    def _keyed_scope(self, scopefunc: t.Callable[[], object]) -> Scope:
        return KeyedScope(scopefunc)

    def _check_factory(self, factory: object) -> None:
        """Refuse a factory whose sessions this registry cannot close (an async
        registry given sync sessions, or the reverse), where it says its class: a
        sessionmaker's ``class_``, or the factory itself when it is a class."""
        cls = factory if isinstance(factory, type) else getattr(factory, "class_", None)
        if isinstance(cls, type) and _closes_async(cls) != self._ASYNC:
            raise TypeError(self._wrong_kind())

    def _wrong_kind(self) -> str:
        return (
            "ScopedSession got a factory of async sessions (their close() is a"
            " coroutine function), which it cannot await. Use"
            " scoped_session.asyncio.AsyncScopedSession(async_sessionmaker(engine))."
        )

    @classmethod
    def _session_class(cls) -> type[t.Any]:
        """SQLAlchemy's session class, for the class-level helpers (``object_session``,
        ``identity_key``): imported only when one is called."""
        orm = sqlalchemy_module(
            "sqlalchemy.orm", f"{cls.__name__}.object_session() or identity_key()"
        )
        return t.cast("type[t.Any]", orm.Session)

    # -- the caller's session ---------------------------------------------------

    def _current(self) -> S:
        """The caller's session, made on first use.

        The generated forwarders repeat this line rather than call it (a call is
        most of their cost). ``or`` is safe for a session that tests false: the
        factory is only called when the caller's cell holds nothing.
        """
        session: S = (shown := self._slot.cell).session or self._create({}, shown, 3)
        return session

    def __call__(self, **kw: t.Any) -> S:
        """Return the caller's session, made by the factory on first use.

        With keyword arguments the session is made with them; when the caller
        already has a session that raises :class:`SessionAlreadyPresent`.
        """
        shown = self._slot.cell
        if kw:
            return self._create(kw, shown)
        session: S = shown.session or self._create({}, shown)
        return session

    def _moved(self) -> None:
        """gevent or eventlet replaced ``threading.local`` after the slot was made:
        move to a slot of the patched class (see ``ThreadScope.moved``)."""
        scope = self._scope
        scope.moved()
        self._slot = scope.slot

    def _caller_cell(self, cell: Cell | NoCell) -> tuple[Cell | None, bool]:
        """The caller's live cell (or None), and whether the scope must check the
        caller's use of it with :meth:`Scope.claim`, from ``cell``, what the
        caller's slot shows (read once by the caller).

        A live cell found in the slot is the caller's own and needs no check (a
        task scope's slot shows a cell only to the one task that may use it
        unchecked). Otherwise a hooked scope looks the cell up itself, and so does
        any scope for a unit ended elsewhere. :meth:`_create` inlines this, and
        :meth:`_take` repeats the first case before calling it (a call is most of
        its cost).
        """
        if cell.is_cell and not cell.ended:
            live: t.Any = cell  # a Cell; not a cast, which is a call
            return live, False
        scope = self._scope
        if scope.hooked or cell.ended:
            return scope.resolve(), scope.hooked
        return None, False

    def _create(self, kw: dict[str, t.Any], shown: Cell | NoCell, depth: int = 2) -> S:
        """Make the caller's session (or return the one it has, when ``kw`` is
        empty): the slow path of every read, once per session.

        :param shown: what the caller's slot showed when the caller read it (its
            cell, or an empty stand-in), so that the slot is read once.
        :param depth: how many frames up the user's code is: 2 from a forwarder
            or ``__call__``, 3 through :meth:`_current`. A fixed depth, not a walk
            past the library's frames: each frame walked costs a frame object.
        """
        # One method, not a lock wrapper around another: this runs once per
        # request. The lock is there only where two threads can share a key.
        lock = self._create_lock
        if lock is not None:
            lock.acquire()
        try:
            scope = self._scope
            if scope.local_base is not None and scope.local_base is not threading.local:
                self._moved()
                shown = self._slot.cell
            elif lock is not None:
                shown = self._slot.cell  # another thread may have made the key's session
            cell: Cell | None
            if shown.is_cell and not shown.ended:
                cell, checked = shown, False  # type: ignore[assignment]  # a Cell
            elif shown.ended or scope.hooked:
                cell, checked = scope.resolve(), scope.hooked
            else:
                cell, checked = None, False  # the usual first use: nothing to look up
            if cell is not None and cell.session is not None:
                if kw:
                    raise already_present()
                found: S = cell.session
                if checked:
                    scope.claim(cell, found)
                return found
            implicit = cell is None or not cell.depth
            if implicit and self._strict:
                raise NoScopeError(
                    f"This {self._NAME} is strict: a session is made only inside a unit of"
                    " work, and the caller has none. Wrap the work in"
                    " 'with Session.scope():' (or @Session.scope()), or run it under an"
                    " integration that opens one."
                )
            if scope.admits:
                # The scope's arguments (a Flask app's engine); the caller's win.
                scoped_kw = scope.admit()
                if scoped_kw:
                    kw = {**scoped_kw, **kw} if kw else scoped_kw
            # Made before the registry is touched: a factory that raises leaves nothing.
            session = self.session_factory(**kw) if kw else self.session_factory()
            if session is None:
                raise TypeError(
                    "The session factory returned None; it must return a new session"
                    f" object (as {self._factory_hint()} does)."
                )
            kind = type(session)
            flagged = self._checked.get(kind)
            if flagged is None:
                if _closes_async(kind) != self._ASYNC:
                    _drop(session)
                    raise TypeError(self._wrong_kind())
                # Whether its sessions can say they serve asyncio (SQLAlchemy's).
                flagged = self._checked[kind] = not self._ASYNC and hasattr(kind, "_is_asyncio")
            if flagged and session._is_asyncio:  # type: ignore[attr-defined]
                # A sync Session that serves an AsyncSession (SQLAlchemy's flag): as
                # SQLAlchemy's scoped_session does, warn at each one made.
                warnings.warn(
                    "Using `scoped_session` with asyncio is deprecated and will raise an"
                    " error in a future version. Please use `async_scoped_session`"
                    " instead: scoped_session.asyncio.AsyncScopedSession("
                    "async_sessionmaker(engine)).",
                    compatible(ScopedSessionWarning, "SADeprecationWarning"),
                    stacklevel=3,
                )
            if cell is None:
                cell = scope.add_cell(self._stats, None, 0, scope.label() if scope.labels else None)
            elif checked:
                scope.claim(cell, None)
            if implicit and scope.records_origin:
                # Each session's own line: a thread's cell is reused after remove().
                frame = sys._getframe(depth)
                cell.origin = (frame.f_code, frame.f_lasti)
            cell.session = session
            self._stats.created += 1
            return session
        finally:
            if lock is not None:
                lock.release()

    def _take(self) -> S | None:
        """Take the caller's session out of its cell without closing it; a cell
        outside any unit of work is released."""
        shown = self._slot.cell
        if shown.is_cell and not shown.ended:
            cell: Cell | None = shown  # a Cell (the slot is typed loosely)
            checked = False
        else:
            cell, checked = self._caller_cell(shown)
        if cell is None:
            return None
        session: S | None
        if GIL:  # Cell.take(), inline: no other thread runs between the two lines
            session = cell.session
            cell.session = None
        else:  # pragma: no cover - free-threaded builds
            session = cell.take()
        scope = self._scope
        if session is not None and checked:
            scope.claim(cell, session)
        if not cell.depth and scope.releases:
            scope.release(cell)
        return session

    def _take_all(self) -> list[S]:
        """Take every session of every scope, counted as removed."""
        taken = (cell.take_to_close() for cell in self._scope.cells())
        return [session for session in taken if session is not None]

    def _reset(self) -> None:
        # Runs in a fork child: drop everything without closing. Cells that die
        # later see a foreign pid and keep their sessions away from close().
        self._scope.reset()
        self._slot = self._scope.slot
        self._stats = Stats()

    # -- bookkeeping --------------------------------------------------------------

    @property
    def scope_kind(self) -> str:
        """Where this registry's sessions live: ``"thread"``, ``"context"``,
        ``"scopefunc"``, or an integration's own (``"flask"``)."""
        return self._scope.kind

    def stats(self) -> SessionStats:
        """Counts of this registry's sessions: live now, and made, removed and
        reaped (closed by a backstop) so far in this process."""
        stats = self._stats
        live = sum(1 for cell in self._scope.cells() if cell.session is not None)
        return SessionStats(live, stats.created, stats.removed, stats.reaped)

    def loose_sessions(self) -> list[str]:
        """Describe each session of this registry held outside any unit of work,
        in every thread or scope: where it lives and the line that made it.

        Such a session is ended only by ``remove()`` or by its thread's end, which
        in a long-lived thread (a pool's worker, a server's thread) may never come:
        meanwhile it can hold a connection idle in a transaction. Call this from a
        health check or a test to find them without waiting for the thread to end.
        Sessions that an integration's scope always ends (Flask's application
        context) are not listed.
        """
        scope = self._scope
        if not scope.records_origin:
            return []
        return [
            f"{describe(cell.label)} holds a session{origin_text(cell.origin, ' made at {}')}"
            for cell in scope.cells()
            if cell.session is not None and not cell.depth and not cell.ended
        ]

    def configure(self, **kwargs: t.Any) -> None:
        """Reconfigure the session factory (``session_factory.configure(**kwargs)``).

        Warns (:class:`ScopedSessionWarning`, also SQLAlchemy's ``SAWarning``) when
        sessions already exist in any scope: they keep their old configuration.
        """
        configure = getattr(self.session_factory, "configure", None)
        if configure is None:
            raise TypeError(
                "configure() needs a session factory with a configure() method, such"
                f" as {self._factory_hint()}; this one has none. Make a new"
                f" {self._NAME} with a reconfigured factory instead."
            )
        if any(cell.session is not None for cell in self._scope.cells()):
            warnings.warn(
                "At least one scoped session is already present. configure() can not"
                " affect sessions that have already been created.",
                compatible(ScopedSessionWarning, "SAWarning"),
                stacklevel=2,
            )
        configure(**kwargs)

    def __repr__(self) -> str:
        # The factory's repr is left out: it can hold a database URL.
        return f"<{type(self).__name__} scope={self._scope.kind}>"


def _drop(session: object) -> None:
    """Let go of a session of the wrong kind without leaving a coroutine unawaited."""
    try:
        result = session.close()  # type: ignore[attr-defined]
        close = getattr(result, "close", None)
        if close is not None:
            close()
    except Exception:  # pragma: no cover - best effort on a session being refused
        pass


class RegistryView(t.Generic[S]):
    """``Session.registry``: the caller's slot, SQLAlchemy-compatible."""

    def __init__(self, registry: Registry[S]) -> None:
        self._registry = registry

    def __call__(self) -> S:
        """The caller's session, made on first use."""
        return self._registry._current()

    def has(self) -> bool:
        """Whether the caller has a session."""
        cell = self._registry._scope.resolve()
        return cell is not None and cell.session is not None

    def set(self, obj: S) -> None:
        """Make ``obj`` the caller's session; one already there is forgotten, not
        closed."""
        registry = self._registry
        scope = registry._scope
        cell = scope.resolve()
        if cell is None:
            cell = scope.add_cell(registry._stats, None, 0, scope.label())
        cell.session = obj

    def clear(self) -> None:
        """Forget the caller's session without closing it."""
        self._registry._take()


def forget_all(registry: Registry[t.Any]) -> None:
    """Drop every session of ``registry`` without closing it: for a process that
    inherited them (a pool process forked by a worker), where closing would talk
    on the parent's connections. ``os.fork()`` children do this by themselves."""
    registry._reset()


def open_unit(registry: Registry[t.Any], label: object = None, request: bool = False) -> Cell:
    """Open a unit of work on the caller's slot of ``registry`` and return its cell,
    the one object of the unit: end it once, from any thread, through ``_ending``
    (:func:`~scoped_session._ending.end_units`).

    Joins the caller's open unit (the same cell, one level deeper); otherwise a
    fresh cell shadows what the caller had, which comes back at the end.

    :param label: what the unit is for, named in warnings: a string, an object
        that formats itself, or a callable (its job).
    :param request: the unit of a request, which never joins a unit handed over to
        an earlier response (``Cell.handed``) still open on the same slot: that one
        is another request's, which its own response ends.
    """
    scope = registry._scope
    if scope.local_base is not None and scope.local_base is not threading.local:
        registry._moved()
    return scope.open(registry._stats, label, request)


def take_loose(registry: Registry[t.Any]) -> t.Any:
    """Take the caller's session if it was made outside any unit of work, counted
    as removed, for the caller to end: what a job left behind after its unit ended
    (a Celery task's handlers). A session of an open unit is left alone."""
    cell, _ = registry._caller_cell(registry._slot.cell)
    if cell is None or cell.depth:
        return None
    session = cell.take_to_close()
    registry._scope.release(cell)
    return session
