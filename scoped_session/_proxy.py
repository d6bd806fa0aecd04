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
generated from SQLAlchemy's ``Session`` by ``tools/generate_proxy.py``: each reads
the caller's session and calls it with the arguments as given, typed as SQLAlchemy's
``scoped_session`` types it.
"""

from __future__ import annotations

import typing as t

from ._arguments import check_flag
from ._ending import end_sessions
from ._registry import Closeable, Registry, SessionStats
from ._session_api import SessionProxy
from ._units import QueryProperty, UnitOfWork

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Query, QueryPropertyDescriptor

__all__ = ["QueryProperty", "ScopedSession", "SessionStats", "UnitOfWork", "scoped_session"]

S = t.TypeVar("S", bound=Closeable)
_T = t.TypeVar("_T", bound=t.Any)


class ScopedSession(Registry[S], SessionProxy):
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
