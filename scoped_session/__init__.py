"""One session per thread, request or job; always closed at the end; never shared.

::

    from scoped_session import ScopedSession

    Session = ScopedSession(sessionmaker(engine))
"""

from __future__ import annotations

from ._exceptions import NoScopeError, ScopedSessionError, SessionAlreadyPresent
from ._proxy import QueryProperty, ScopedSession, SessionStats, UnitOfWork, scoped_session

__all__ = [
    "NoScopeError",
    "QueryProperty",
    "ScopedSession",
    "ScopedSessionError",
    "SessionAlreadyPresent",
    "SessionStats",
    "UnitOfWork",
    "scoped_session",
]
