"""Errors raised by scoped_session.

::

    RuntimeError
     └── ScopedSessionError        base of every error this library raises
          ├── SessionAlreadyPresent  Session(**kw) when a session already exists
          ├── NoScopeError           no scope is active (a Flask app context, a
          │                          unit of work in strict mode)
          └── ConcurrentUseError     two asyncio tasks used one session at once
                                     (AsyncScopedSession(strict=True))
"""

from __future__ import annotations

__all__ = ["ConcurrentUseError", "NoScopeError", "ScopedSessionError", "SessionAlreadyPresent"]


class ScopedSessionError(RuntimeError):
    """Base class of the errors raised by scoped_session."""


class SessionAlreadyPresent(ScopedSessionError):
    """``Session(**kw)`` was called while the caller already has a session."""


class NoScopeError(ScopedSessionError):
    """A session was asked for where no scope is active."""


class ConcurrentUseError(ScopedSessionError):
    """A session was reached by one task while another task was using it
    (``AsyncScopedSession(strict=True)``)."""
