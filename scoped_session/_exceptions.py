"""Errors and warnings raised by scoped_session.

::

    RuntimeError
     └── ScopedSessionError        base of every error this library raises
          ├── SessionAlreadyPresent  Session(**kw) when a session already exists
          │                          (also sqlalchemy.exc.InvalidRequestError)
          ├── NoScopeError           no scope is active (a Flask app context, a
          │                          unit of work in strict mode)
          └── ConcurrentUseError     two asyncio tasks used one session at once
                                     (AsyncScopedSession(strict=True))

    UserWarning
     └── ScopedSessionWarning      configure() while sessions exist
                                   (also sqlalchemy.exc.SAWarning)

Code written for SQLAlchemy's ``scoped_session`` catches
``sqlalchemy.exc.InvalidRequestError`` and filters ``SAWarning``: what this library
raises in the same places is also of those classes, whenever SQLAlchemy is
imported (code that names them has imported it). SQLAlchemy is never imported
here: a process that has not imported it gets the plain classes.
"""

from __future__ import annotations

import sys
import typing as t

__all__ = [
    "ConcurrentUseError",
    "NoScopeError",
    "ScopedSessionError",
    "ScopedSessionWarning",
    "SessionAlreadyPresent",
    "already_present",
    "compatible",
]


class ScopedSessionError(RuntimeError):
    """Base class of the errors raised by scoped_session."""


class SessionAlreadyPresent(ScopedSessionError):
    """``Session(**kw)`` was called while the caller already has a session."""


class NoScopeError(ScopedSessionError):
    """A session was asked for where no scope is active."""


class ConcurrentUseError(ScopedSessionError):
    """A session was reached by one task while another task was using it
    (``AsyncScopedSession(strict=True)``)."""


class ScopedSessionWarning(UserWarning):
    """Something worked, but probably not as meant (``configure()`` while sessions
    exist)."""


_compatible: dict[tuple[type[t.Any], str], type[t.Any]] = {}

C = t.TypeVar("C", bound=type[t.Any])


def compatible(cls: C, sqlalchemy_name: str) -> C:
    """``cls``, or a subclass of it that is also ``sqlalchemy.exc.<sqlalchemy_name>``
    once SQLAlchemy is imported."""
    exc = sys.modules.get("sqlalchemy.exc")
    if exc is None:
        return cls
    key = (cls, sqlalchemy_name)
    found = _compatible.get(key)
    if found is None:
        base = getattr(exc, sqlalchemy_name)
        found = _compatible[key] = type(
            cls.__name__, (cls, base), {"__module__": cls.__module__, "__doc__": cls.__doc__}
        )
    return t.cast("C", found)


def already_present() -> SessionAlreadyPresent:
    """The error for ``Session(**kw)`` when the caller has a session (its message
    begins as SQLAlchemy's does)."""
    return compatible(SessionAlreadyPresent, "InvalidRequestError")(
        "Scoped session is already present; no new arguments may be specified."
        " Keyword arguments apply only when the session is made: call remove()"
        " first to start a new session with them."
    )
