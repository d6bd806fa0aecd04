"""ScopedSession: the registry, the proxy, and units of work.

::

    from sqlalchemy.orm import sessionmaker
    from scoped_session import ScopedSession

    Session = ScopedSession(sessionmaker(engine))

    def handler():
        with Session.scope(commit=True):      # a unit of work
            Session.add(Note(text="hi"))      # the caller's session, made on first use
        # committed, closed and forgotten here, also if the block raised
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import typing as t
import warnings
import weakref
from operator import attrgetter

from ._exceptions import ScopedSessionError, SessionAlreadyPresent
from ._scopes import Cell, ContextScope, KeyedScope, Scope, Stats, ThreadScope

__all__ = ["QueryProperty", "ScopedSession", "UnitOfWork", "scoped_session"]

logger = logging.getLogger("scoped_session")


class _Closeable(t.Protocol):
    def close(self) -> object: ...


S = t.TypeVar("S", bound=_Closeable)
F = t.TypeVar("F", bound=t.Callable[..., t.Any])

_SCOPES = ("thread", "context")

#: Every live ScopedSession, so that a fork child can make each forget its cells.
_instances: weakref.WeakSet[ScopedSession[t.Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for scoped in list(_instances):
        scoped._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_all(sessions: t.Iterable[_Closeable], what: str) -> int:
    """Close every session; log each failure; raise the first (or a group)."""
    closed = 0
    errors: list[Exception] = []
    for session in sessions:
        try:
            session.close()
        except Exception as exc:
            logger.error("Closing a session failed during %s.", what, exc_info=True)
            errors.append(exc)
        else:
            closed += 1
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup(f"closing {len(errors)} sessions failed during {what}", errors)
    return closed


def _forward(name: str) -> t.Any:
    """A read-only attribute forwarded to the caller's session.

    The getter is an ``attrgetter``: the lookup stays in C, and for a method it
    returns the session's own bound method, so arguments reach it exactly as
    given. When the caller has no session yet the getter raises
    ``AttributeError`` and Python falls back to ``__getattr__``, which makes one.
    """
    return property(attrgetter(f"_slot.cell.session.{name}"), doc=f"The session's ``{name}``.")


def _forward_settable(name: str) -> t.Any:
    def fset(self: ScopedSession[t.Any], value: object) -> None:
        setattr(self(), name, value)

    return property(
        attrgetter(f"_slot.cell.session.{name}"), fset, doc=f"The session's ``{name}``."
    )


class ScopedSession(t.Generic[S]):
    """A registry of sessions, one per thread, context or custom key, and a proxy
    to the caller's session.

    :param session_factory: makes a new session; called with no arguments, or
        with the keyword arguments given to ``Session(**kw)``. Usually a
        :class:`sqlalchemy.orm.sessionmaker`.
    :param scopefunc: returns a hashable key for the caller's scope; a session
        is kept per key (SQLAlchemy-compatible). Exclusive with ``scope``.
    :param scope: ``"thread"`` (the default): a session per OS thread;
        ``"context"``: a session per :mod:`contextvars` context (thread, asyncio
        task, greenlet).
    """

    session_factory: t.Callable[..., S]

    def __init__(
        self,
        session_factory: t.Callable[..., S],
        scopefunc: t.Callable[[], object] | None = None,
        *,
        scope: str | None = None,
    ) -> None:
        if not callable(session_factory):
            raise TypeError(
                "ScopedSession() needs a session factory: a callable that returns a"
                " new session, such as sqlalchemy.orm.sessionmaker(bind=engine);"
                f" got an object of type {type(session_factory).__name__}."
            )
        if scopefunc is not None and scope is not None:
            raise TypeError(
                "Pass either scopefunc (a custom key) or scope='thread'/'context', not both."
            )
        if scopefunc is not None and not callable(scopefunc):
            raise TypeError(
                "scopefunc must be a callable that returns a hashable key for the"
                f" current scope; got an object of type {type(scopefunc).__name__}."
                " For a built-in scope pass scope='thread' or scope='context'."
            )
        if scope is not None and scope not in _SCOPES:
            raise ValueError(
                f"Unknown scope {scope!r}: pass scope='thread' (a session per thread,"
                " the default) or scope='context' (per contextvars context: thread,"
                " asyncio task, greenlet), or a scopefunc for a custom key."
            )
        self.session_factory = session_factory
        self._stats = Stats()
        self.registry = _Registry(self)
        if scopefunc is not None:
            self._use_scope(KeyedScope(scopefunc))
        elif scope == "context":
            self._use_scope(ContextScope())
        else:
            self._use_scope(ThreadScope())
        _instances.add(self)

    def _use_scope(self, scope: Scope) -> None:
        """Make ``scope`` decide where sessions live (integrations with a scope
        of their own, like Flask's application context, call this)."""
        self._scope = scope
        self._slot = scope.slot
        # Two threads can share a custom key; the slow path must not race there.
        self._create_lock = threading.RLock() if isinstance(scope, KeyedScope) else None

    # -- the caller's session -------------------------------------------------

    def __call__(self, **kw: t.Any) -> S:
        """Return the caller's session, made by the factory on first use.

        With keyword arguments the session is made with them; when the caller
        already has a session that raises :class:`SessionAlreadyPresent`.
        """
        if kw:
            return self._create(kw)
        try:
            return self._slot.cell.session  # type: ignore[no-any-return]
        except AttributeError:
            return self._create(kw)

    def _resolve(self) -> Cell | None:
        """The caller's live cell, skipping units ended from another thread."""
        scope = self._scope
        cell = current = scope.get()
        while cell is not None and cell.ended:
            cell = cell.prev
        if cell is not current:
            scope.install(cell)
        return cell

    def _create(self, kw: dict[str, t.Any]) -> S:
        lock = self._create_lock
        if lock is None:
            return self._create_unlocked(kw)
        with lock:
            return self._create_unlocked(kw)

    def _create_unlocked(self, kw: dict[str, t.Any]) -> S:
        cell = self._resolve()
        if cell is not None:
            try:
                session: S = cell.session
            except AttributeError:
                pass
            else:
                if kw:
                    raise SessionAlreadyPresent(
                        "A scoped session is already present; keyword arguments"
                        " apply only when the session is made. Call remove() first"
                        " to start a new session with them."
                    )
                return session
        # Make the session before touching the registry: a factory that raises
        # leaves nothing behind.
        session = self.session_factory(**kw)
        if cell is None:
            cell = Cell(self._stats)
            self._scope.install(cell)
        cell.session = session
        self._stats.created += 1
        return session

    def remove(self) -> None:
        """Close the caller's session, if any, and forget it.

        The session is forgotten first, so it is gone even when ``close()``
        raises; that error propagates. Inside a unit of work the unit stays open
        and the next use makes a new session, which the unit will end.
        """
        session = self._forget()
        if session is not None:
            self._stats.removed += 1
            session.close()

    def _forget(self) -> S | None:
        """Take the caller's session out of its cell and return it (or None).

        A cell outside any unit of work is released with it; a unit's cell stays.
        """
        cell = self._resolve()
        if cell is None:
            return None
        session: S | None = cell.take()
        if cell.depth == 0:
            self._scope.release(cell)
        return session

    def remove_all(self) -> int:
        """Close and forget every session of this registry, in every thread and
        scope (for shutdown). Returns how many were closed.

        Every session is closed even if some fail; each failure is logged, and
        the first (or an ``ExceptionGroup`` of all) is raised.
        """
        taken = [s for s in (cell.take() for cell in self._scope.cells()) if s is not None]
        self._stats.removed += len(taken)
        return _close_all(taken, "remove_all()")

    def configure(self, **kwargs: t.Any) -> None:
        """Reconfigure the session factory (``session_factory.configure(**kwargs)``).

        Warns when sessions already exist in any scope: they keep their old
        configuration.
        """
        configure = getattr(self.session_factory, "configure", None)
        if configure is None:
            raise TypeError(
                "configure() needs a session factory with a configure() method,"
                " such as sqlalchemy.orm.sessionmaker; this one has none. Make a"
                " new ScopedSession with a reconfigured factory instead."
            )
        if self._has_any():
            warnings.warn(
                "At least one scoped session is already present; configure() does"
                " not affect sessions that already exist.",
                UserWarning,
                stacklevel=2,
            )
        configure(**kwargs)

    def _has_any(self) -> bool:
        return any(hasattr(cell, "session") for cell in self._scope.cells())

    def scope(self, commit: bool = False) -> UnitOfWork[S]:
        """A unit of work: a context manager and a decorator.

        The caller gets a fresh session for the unit (made on first use); at the
        end of the outermost unit it is committed (when ``commit`` is true and
        nothing raised), closed and forgotten. A unit opened inside another one
        joins it and ends nothing.

        ::

            with Session.scope(commit=True) as session:
                session.add(obj)

            @Session.scope(commit=True)
            def job(): ...
        """
        if callable(commit):
            raise TypeError(
                "scope() takes commit=True/False, not a function: decorate with"
                " @Session.scope() (with parentheses)."
            )
        return UnitOfWork(self, commit=commit)

    def _forget_inherited(self) -> None:
        # Runs in a fork child: drop everything without closing. Cells that die
        # later see a foreign pid and keep their sessions away from close().
        self._scope.reset()
        self._stats = Stats()
        self._use_scope(self._scope)

    def query_property(self, query_cls: type[t.Any] | None = None) -> QueryProperty:
        """A class attribute that returns a query for the class against the
        caller's session (like SQLAlchemy's ``scoped_session.query_property``)."""
        return QueryProperty(self, query_cls)

    def __repr__(self) -> str:
        # The factory's repr is left out: it can hold a database URL.
        return f"<{type(self).__name__} scope={self._scope.kind}>"

    # -- the proxy ------------------------------------------------------------
    # The methods that take no arguments are written out: one attribute chain
    # (C for the thread and context scopes) and one call. Everything else is
    # forwarded as the session's own bound method, so arguments reach it
    # exactly as given.

    def close(self) -> None:
        """Close the caller's session; it stays registered and can be reused."""
        try:
            session = self._slot.cell.session
        except AttributeError:
            session = self._create({})
        return session.close()  # type: ignore[no-any-return]

    def commit(self) -> None:
        """Commit the caller's session's transaction."""
        try:
            session = self._slot.cell.session
        except AttributeError:
            session = self._create({})
        return session.commit()  # type: ignore[no-any-return]

    def rollback(self) -> None:
        """Roll back the caller's session's transaction."""
        try:
            session = self._slot.cell.session
        except AttributeError:
            session = self._create({})
        return session.rollback()  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Reset the caller's session, ending its transaction."""
        try:
            session = self._slot.cell.session
        except AttributeError:
            session = self._create({})
        return session.reset()  # type: ignore[no-any-return]

    def expunge_all(self) -> None:
        """Remove every object from the caller's session."""
        try:
            session = self._slot.cell.session
        except AttributeError:
            session = self._create({})
        return session.expunge_all()  # type: ignore[no-any-return]

    def expire_all(self) -> None:
        """Expire every object in the caller's session."""
        try:
            session = self._slot.cell.session
        except AttributeError:
            session = self._create({})
        return session.expire_all()  # type: ignore[no-any-return]

    def __contains__(self, instance: object) -> bool:
        return instance in self()  # type: ignore[operator]

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter(self())  # type: ignore[call-overload,no-any-return]

    if t.TYPE_CHECKING:

        def __getattr__(self, name: str) -> t.Any: ...

        bind: t.Any
        autoflush: bool
        identity_map: t.Any

    else:
        add = _forward("add")
        add_all = _forward("add_all")
        begin = _forward("begin")
        begin_nested = _forward("begin_nested")
        bind_mapper = _forward("bind_mapper")
        bind_table = _forward("bind_table")
        bulk_insert_mappings = _forward("bulk_insert_mappings")
        bulk_save_objects = _forward("bulk_save_objects")
        bulk_update_mappings = _forward("bulk_update_mappings")
        connection = _forward("connection")
        delete = _forward("delete")
        delete_all = _forward("delete_all")
        deleted = _forward("deleted")
        dirty = _forward("dirty")
        enable_relationship_loading = _forward("enable_relationship_loading")
        execute = _forward("execute")
        expire = _forward("expire")
        expunge = _forward("expunge")
        flush = _forward("flush")
        get = _forward("get")
        get_bind = _forward("get_bind")
        get_nested_transaction = _forward("get_nested_transaction")
        get_one = _forward("get_one")
        get_transaction = _forward("get_transaction")
        identity_key = _forward("identity_key")
        in_nested_transaction = _forward("in_nested_transaction")
        in_transaction = _forward("in_transaction")
        info = _forward("info")
        invalidate = _forward("invalidate")
        is_active = _forward("is_active")
        is_modified = _forward("is_modified")
        merge = _forward("merge")
        merge_all = _forward("merge_all")
        new = _forward("new")
        no_autoflush = _forward("no_autoflush")
        object_session = _forward("object_session")
        prepare = _forward("prepare")
        query = _forward("query")
        refresh = _forward("refresh")
        scalar = _forward("scalar")
        scalars = _forward("scalars")

        bind = _forward_settable("bind")
        autoflush = _forward_settable("autoflush")
        identity_map = _forward_settable("identity_map")

        def __getattr__(self, name: str) -> t.Any:
            # Reached for names not written out above, and for those when the
            # caller has no session yet (their getter raised AttributeError).
            if name.startswith("_"):
                raise AttributeError(name)
            return getattr(self(), name)


scoped_session = ScopedSession


class _Registry(t.Generic[S]):
    """``Session.registry``: the caller's slot, SQLAlchemy-compatible."""

    def __init__(self, scoped: ScopedSession[S]) -> None:
        self._scoped = scoped

    def __call__(self) -> S:
        """The caller's session, made on first use."""
        return self._scoped()

    def has(self) -> bool:
        """Whether the caller has a session."""
        cell = self._scoped._resolve()
        return cell is not None and hasattr(cell, "session")

    def set(self, obj: S) -> None:
        """Make ``obj`` the caller's session; one already there is forgotten,
        not closed."""
        scoped = self._scoped
        cell = scoped._resolve()
        if cell is None:
            cell = Cell(scoped._stats)
            scoped._scope.install(cell)
        cell.session = obj

    def clear(self) -> None:
        """Forget the caller's session without closing it."""
        self._scoped._forget()


class UnitOfWork(t.Generic[S]):
    """A begin/end pair on the caller's cell: see :meth:`ScopedSession.scope`.

    Integrations use :meth:`start` and :meth:`end` directly. ``end()`` may be
    called from any thread (a WSGI server can close a response anywhere): it
    ends this unit, not the calling thread's, and calling it again does nothing.
    """

    def __init__(self, scoped: ScopedSession[S], commit: bool = False) -> None:
        self._scoped = scoped
        self.commit = commit
        self._cell: Cell | None = None
        self.joined = False
        # Popped exactly once by end(), whichever thread gets there first.
        self._open: list[bool] = []

    def start(self) -> UnitOfWork[S]:
        """Open the unit in the caller's scope; join an open one."""
        if self._cell is not None:
            raise ScopedSessionError(
                "This unit of work was already started; call Session.scope() for a new one."
            )
        scoped = self._scoped
        outer = scoped._resolve()
        if outer is not None and outer.depth:
            outer.depth += 1
            self._cell = outer
            self.joined = True
        else:
            # A session made outside any unit is shadowed, not adopted: the unit
            # starts fresh and the old session comes back when the unit ends.
            self._cell = Cell(scoped._stats, prev=outer, depth=1)
            scoped._scope.install(self._cell)
        self._open.append(True)
        return self

    @property
    def active(self) -> bool:
        """Whether the unit was started and not yet ended."""
        return bool(self._open)

    @property
    def session(self) -> S | None:
        """The unit's session if one was made, without making one."""
        return getattr(self._cell, "session", None)

    def end(self, error: BaseException | None = None, *, commit: bool | None = None) -> None:
        """End the unit: commit (when asked and ``error`` is None), close, forget.

        A joined unit only leaves. A failed commit or close is logged and raised,
        unless ``error`` (the work's own exception) is given: that one is never
        hidden, and the caller re-raises it.

        :param error: the exception the unit's work raised, if any.
        :param commit: overrides the unit's ``commit`` flag.
        """
        try:
            self._open.pop()
        except IndexError:
            return
        cell = self._cell
        assert cell is not None
        if self.joined:
            cell.depth -= 1
            return
        # Closed to newcomers before the commit runs: a unit started meanwhile on
        # the owner's thread must get a fresh cell, not join this dying one.
        cell.depth = 0
        cell.ended = True
        if commit is None:
            commit = self.commit
        failure: BaseException | None = None
        session = getattr(cell, "session", None)
        try:
            if session is not None and commit and error is None:
                session.commit()
        except BaseException as exc:
            failure = exc
        finally:
            session = cell.take()
            self._finish(cell)
            if session is not None:
                self._scoped._stats.removed += 1
                try:
                    session.close()
                except Exception as exc:
                    if failure is None and error is None:
                        failure = exc
                    else:
                        logger.error("Closing a session failed after an error.", exc_info=True)
        if failure is not None:
            if error is not None:
                logger.error("Ending a unit of work failed.", exc_info=failure)
            else:
                raise failure

    def _finish(self, cell: Cell) -> None:
        cell.depth = 0
        cell.ended = True
        scope = self._scoped._scope
        # On the owner's thread/context give the shadowed cell back at once;
        # elsewhere the owner's next lookup does it (see ScopedSession._resolve).
        if scope.get() is cell:
            scope.install(cell.prev)
            cell.prev = None

    def __enter__(self) -> S:
        self.start()
        return self._scoped()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.end(exc)

    def __call__(self, func: F) -> F:
        """Use the unit as a decorator: each call runs in a unit of its own."""
        scoped, commit = self._scoped, self.commit

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                unit = UnitOfWork(scoped, commit).start()
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    unit.end(exc)
                    raise
                unit.end()
                return result

            return t.cast("F", async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            unit = UnitOfWork(scoped, commit).start()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                unit.end(exc)
                raise
            unit.end()
            return result

        return t.cast("F", wrapper)


class QueryProperty:
    """The descriptor made by :meth:`ScopedSession.query_property`."""

    def __init__(self, scoped: ScopedSession[t.Any], query_cls: type[t.Any] | None) -> None:
        self._scoped = scoped
        self._query_cls = query_cls

    def __get__(self, instance: object, owner: type[t.Any]) -> t.Any:
        from sqlalchemy import inspect as sa_inspect  # only users of this need SQLAlchemy

        mapper = sa_inspect(owner, raiseerr=False)
        if mapper is None:
            raise ScopedSessionError(
                f"query_property() is on {owner.__name__}, which is not mapped by"
                " SQLAlchemy; put it on a mapped class (or its declarative base)."
            )
        session = self._scoped()
        if self._query_cls is not None:
            return self._query_cls(mapper, session=session)
        return session.query(mapper)
