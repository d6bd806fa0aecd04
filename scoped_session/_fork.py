"""Connection pools after ``os.fork()``: each child gets its own.

Sessions need nothing for a fork (a registry starts empty in a fork child); an
engine's pooled connections do: a child must never use the parent's sockets.
:func:`dispose_engines_after_fork` is re-exported by ``scoped_session.worker``.
"""

from __future__ import annotations

import logging
import os
import threading
import typing as t
import weakref

__all__ = ["dispose_engines_after_fork"]

logger = logging.getLogger("scoped_session")


class _Disposable(t.Protocol):
    def dispose(self, close: bool = ...) -> None: ...


#: Engines whose pools a fork child replaces. Weak: registering an engine does
#: not keep it alive, and a disposed-of engine simply drops out.
_fork_engines: weakref.WeakSet[_Disposable] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_registered = False


def _dispose_in_child() -> None:
    # Runs in the child right after fork, with one thread: no lock (a parent
    # thread may have held it at fork time), and every engine is tried.
    for engine in list(_fork_engines):
        try:
            engine.dispose(close=False)
        except Exception:
            logger.error("Disposing of an engine's pool after fork failed.", exc_info=True)


def dispose_engines_after_fork(*engines: _Disposable) -> None:
    """Give each engine a fresh connection pool in every forked child.

    Call it in the parent before forking (gunicorn ``--preload``, ``os.fork()``,
    multiprocessing's ``"fork"`` start method, Celery's prefork pool). In each
    child it calls ``engine.dispose(close=False)``: the child forgets the
    pooled connections it inherited *without closing them* (closing would talk
    on the parent's sockets) and opens its own. The parent's connections keep
    working. The engines are held weakly; registering twice is harmless.

    Sessions need nothing: a :class:`~scoped_session.ScopedSession` already
    starts empty in a fork child.

    :param engines: SQLAlchemy ``Engine`` objects (anything with
        ``dispose(close=False)``).
    """
    global _fork_hook_registered
    for engine in engines:
        if hasattr(engine, "sync_engine"):
            raise TypeError(
                "dispose_engines_after_fork() takes synchronous engines; for an"
                " AsyncEngine pass its .sync_engine."
            )
        if not callable(getattr(engine, "dispose", None)):
            raise TypeError(
                "dispose_engines_after_fork() takes SQLAlchemy engines (objects with"
                f" dispose(close=False)); got an object of type {type(engine).__name__}."
            )
    with _fork_hook_lock:
        _fork_engines.update(engines)
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_dispose_in_child)
            _fork_hook_registered = True
