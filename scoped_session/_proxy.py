"""ScopedSession: a registry of sessions and a typed proxy to the caller's session.

::

    from sqlalchemy.orm import sessionmaker
    from scoped_session import ScopedSession

    Session = ScopedSession(sessionmaker(engine))

    def handler():
        with Session.scope(commit=True):      # a unit of work
            Session.add(Note(text="hi"))      # the caller's session, made on first use
        # committed, closed and forgotten here, also if the block raised

The proxy's members (``add``, ``execute``, ``get`` ...) come from ``_session_api.py``,
generated from SQLAlchemy's own ``scoped_session`` by ``tools/generate_proxy.py``, one
module per SQLAlchemy line: each reads the caller's session and calls it as
SQLAlchemy's proxy does, with its explicit parameters and defaults. Type checkers see
the installed SQLAlchemy's own proxy class. No other name is forwarded: reach a
session's other members with ``Session()``.
"""

from __future__ import annotations

import functools
import inspect
import typing as t

from ._arguments import check_flag, sqlalchemy_module
from ._cells import Cell
from ._ending import end_sessions
from ._exceptions import ScopedSessionError
from ._registry import Closeable, Registry, SessionStats, open_unit
from ._session_api import SessionProxy

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Query, QueryPropertyDescriptor

__all__ = [
    "QueryProperty",
    "ScopedSession",
    "SessionStats",
    "UnitBase",
    "UnitOfWork",
    "scoped_session",
]

S = t.TypeVar("S", bound=Closeable)
_T = t.TypeVar("_T", bound=t.Any)
F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class UnitBase(t.Generic[S]):
    """A unit of work as ``Session.scope()`` hands it out: a begin/end pair on the
    caller's slot, whose one object of bookkeeping is its cell (made by
    :meth:`start`). What sync and async units share."""

    __slots__ = ("_cell", "_registry", "commit", "committed", "joined", "label")

    def __init__(
        self, registry: Registry[t.Any], commit: bool = False, label: object = None
    ) -> None:
        # commit is checked where users pass it (Session.scope(), integrations).
        self._registry = registry
        self.commit = commit
        #: What the unit is for, named in warnings and logs.
        self.label = label
        self._cell: Cell | None = None
        #: Whether the unit joined one already open in the caller's scope.
        self.joined = False
        #: Whether end() committed the unit's session.
        self.committed = False

    def start(self) -> t.Self:
        """Open the unit in the caller's scope; join an open one."""
        if self._cell is not None:
            raise ScopedSessionError(
                "This unit of work was already started; call Session.scope() for a new one."
            )
        self._cell = cell = open_unit(self._registry, self.label)
        self.joined = cell.depth > 1
        return self

    @property
    def active(self) -> bool:
        """Whether the unit was started and not yet ended."""
        cell = self._cell
        return cell is not None and not cell.ended and cell.depth > 0

    @property
    def session(self) -> S | None:
        """The unit's session if one was made, without making one."""
        cell = self._cell
        session: S | None = None if cell is None else cell.session
        return session

    @property
    def where(self) -> object:
        """What the unit is for, for logs (its label, or a description)."""
        return self.label if self.label is not None else "a unit of work"

    def _detach(self) -> tuple[bool, t.Any]:
        """End the unit's bookkeeping once: whether this call ended it, and its
        session to end."""
        cell = self._cell
        if cell is None or cell.ended:
            return False, None
        if self.joined:
            self._cell = None  # a joined unit leaves once
            cell.detach()
            return False, None
        return True, cell.detach()


class UnitOfWork(UnitBase[S]):
    """A unit of work of a sync registry: see ``ScopedSession.scope()``.

    ``end()`` may be called from any thread: it ends this unit, not the calling
    thread's, and calling it again does nothing.
    """

    __slots__ = ()

    def end(self, error: BaseException | None = None, *, commit: bool | None = None) -> None:
        """End the unit: commit (when asked and ``error`` is None), close, forget.

        A joined unit only leaves. Failures follow ``_ending``'s policy: raised,
        unless ``error`` (the work's own exception) is given; then only logged.

        :param error: the exception the unit's work raised, if any.
        :param commit: overrides the unit's ``commit`` flag.
        """
        ended, session = self._detach()
        if not ended or session is None:
            return
        wanted = self.commit if commit is None else commit
        committed = end_sessions((session,), commit=wanted, error=error, where=self.where)
        self.committed = committed > 0

    def __enter__(self) -> S:
        self.start()
        return t.cast("S", self._registry._current())

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.end(exc)

    if not t.TYPE_CHECKING:
        # At run time only: type checkers keep reporting 'async with' on a sync
        # unit as the error it is.
        async def __aenter__(self) -> t.NoReturn:
            raise TypeError(
                "A ScopedSession's unit of work is entered with 'with Session.scope():'."
                " For asyncio sessions make the registry with"
                " scoped_session.asyncio.AsyncScopedSession(async_sessionmaker(engine))"
                " and use 'async with Session.scope():'."
            )

        async def __aexit__(self, *exc_info: object) -> None:  # pragma: no cover
            pass

    def __call__(self, func: F) -> F:
        """Use the unit as a decorator: each call runs in a unit of its own."""
        registry, commit, label = self._registry, self.commit, self.label

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                unit: UnitOfWork[t.Any] = UnitOfWork(registry, commit, label).start()
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
            unit: UnitOfWork[t.Any] = UnitOfWork(registry, commit, label).start()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                unit.end(exc)
                raise
            unit.end()
            return result

        return t.cast("F", wrapper)


class QueryProperty:
    """The descriptor made by ``ScopedSession.query_property()``."""

    def __init__(self, registry: Registry[t.Any], query_cls: type[t.Any] | None) -> None:
        self._registry = registry
        self._query_cls = query_cls

    def __get__(self, instance: object, owner: type[t.Any]) -> t.Any:
        sqlalchemy = sqlalchemy_module("sqlalchemy", "query_property()")
        mapper = sqlalchemy.inspect(owner, raiseerr=False)
        if mapper is None:
            raise ScopedSessionError(
                f"query_property() is on {owner.__name__}, which is not mapped by"
                " SQLAlchemy; put it on a mapped class (or its declarative base)."
            )
        session = self._registry._current()
        if self._query_cls is not None:
            return self._query_cls(mapper, session=session)
        return session.query(mapper)


class ScopedSession(Registry[S], SessionProxy):  # type: ignore[misc]
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
    :param strict: make sessions only inside a unit of work (``Session.scope()``
        or an integration's): use of the proxy anywhere else raises
        :class:`NoScopeError` instead of making a session nobody will remove.
    """

    def remove(self) -> None:
        """Close the caller's session, if any, and forget it.

        The session is forgotten first, so it is gone even when ``close()``
        raises; that error propagates. Inside a unit of work the unit stays open
        and the next use makes a new session, which the unit will end.
        """
        session = self._take()
        if session is not None:
            self._stats.removed += 1
            session.close()

    def remove_all(self) -> int:
        """Close and forget every session of this registry, in every thread and
        scope (for shutdown). Returns how many were closed.

        Every session is closed even if some fail; each failure is logged, and the
        failure (or a group of them) is raised.
        """
        sessions = self._take_all()
        end_sessions(sessions, where="remove_all()")
        return len(sessions)

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
        check_flag(commit, "commit")
        return UnitOfWork(self, commit)

    def query_property(self, query_cls: type[Query[_T]] | None = None) -> QueryPropertyDescriptor:
        """A class attribute that returns a query for the class against the
        caller's session (like SQLAlchemy's ``scoped_session.query_property``)."""
        return t.cast("QueryPropertyDescriptor", QueryProperty(self, query_cls))


#: SQLAlchemy's name, for a drop-in import.
scoped_session = ScopedSession
