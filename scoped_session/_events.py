"""SQLAlchemy's session events on a registry.

``event.listen(Session, "before_commit", fn)`` on SQLAlchemy's ``scoped_session``
listens on its factory's session class, so that every session it makes gets the
listener. SQLAlchemy knows only its own registry; this module tells its event
system about ours, through an events class whose one job is to name the target:
the factory's session class. Nothing is imported from SQLAlchemy until a registry
is made in a process that has imported it (a ``sessionmaker`` factory means it
has).
"""

from __future__ import annotations

import threading
import typing as t

__all__ = ["enable"]

_enabled = False
_lock = threading.Lock()


def enable(registry_class: type[t.Any]) -> None:
    """Let ``event.listen``, ``event.contains`` and ``event.remove`` take an instance
    of ``registry_class`` (once per process)."""
    global _enabled
    if _enabled:
        return
    with _lock:
        if _enabled:
            return
        from sqlalchemy import exc
        from sqlalchemy.orm import Session
        from sqlalchemy.orm.events import SessionEvents

        def accept(cls: type[t.Any], target: object, identifier: str) -> type[t.Any] | None:
            if not isinstance(target, registry_class):
                return None
            session_class = getattr(target.session_factory, "class_", None)
            if isinstance(session_class, type) and issubclass(session_class, Session):
                return session_class
            if target.is_async:
                return None  # as SQLAlchemy's async_scoped_session: no such event
            raise exc.ArgumentError(
                # Begins as SQLAlchemy's own message, which its tests match.
                "Session event listen on a scoped_session requires that its creation"
                " callable is associated with the Session class. Give the ScopedSession"
                " a factory that says its class, such as sqlalchemy.orm.sessionmaker(...),"
                " or listen on the session class itself."
            )

        # An events class is registered for the event names it defines: the
        # session's, each the same function. _dispatch_target None: it must not
        # replace Session.dispatch with its own.
        names = {
            name: value
            for name, value in vars(SessionEvents).items()
            if not name.startswith("_") and name != "dispatch" and callable(value)
        }
        type(
            "RegistrySessionEvents",
            (SessionEvents,),
            {**names, "_dispatch_target": None, "_accept_with": classmethod(accept)},
        )
        _enabled = True
