"""One session per thread, request or job; always closed at the end; never shared.

::

    from scoped_session import ScopedSession

    Session = ScopedSession(sessionmaker(engine))
"""

from __future__ import annotations

import typing as t

from ._exceptions import (
    ConcurrentUseError,
    NoScopeError,
    ScopedSessionError,
    ScopedSessionWarning,
    SessionAlreadyPresent,
)
from ._proxy import QueryProperty, ScopedSession, SessionStats, UnitOfWork, scoped_session

if t.TYPE_CHECKING:
    from .asyncio import AsyncScopedSession, AsyncUnitOfWork

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

__all__ = [
    "AsyncScopedSession",
    "AsyncUnitOfWork",
    "ConcurrentUseError",
    "NoScopeError",
    "QueryProperty",
    "ScopedSession",
    "ScopedSessionError",
    "ScopedSessionWarning",
    "SessionAlreadyPresent",
    "SessionStats",
    "UnitOfWork",
    "__version__",
    "scoped_session",
]


def __getattr__(name: str) -> object:
    # The asyncio module is imported on first use: importing asyncio costs a
    # WSGI-only application tens of milliseconds.
    if name in ("AsyncScopedSession", "AsyncUnitOfWork"):
        from . import asyncio as _asyncio

        return getattr(_asyncio, name)
    raise AttributeError(f"module 'scoped_session' has no attribute {name!r}")
