"""Celery wiring: a unit of work per task.

::

    from celery import Celery
    from scoped_session import ScopedSession
    from scoped_session.celery import init_celery

    Session = ScopedSession(sessionmaker(engine))
    app = Celery("jobs", broker="redis://")
    init_celery(app, Session)

    @app.task
    def add_note(text):
        Session.add(Note(text=text))    # this task's own session
        Session.commit()

Each task run by a worker (any pool: prefork, threads, solo) gets a unit of work
that starts in ``task_prerun`` and ends in ``task_postrun``: on success, on
failure and on retry, the session is closed (rolled back unless committed).
A task run eagerly (``task_always_eager``, ``task.apply()``) inside an open unit
of work joins it: it uses the caller's session, which the caller ends.

Commit in the task body, as above. ``commit=True`` commits in ``task_postrun``
after a task that succeeded; by then Celery has already stored the result and
sent the task's callbacks, so a failed commit is only logged. Use it only where
that is acceptable.

Sessions inherited by a prefork pool process are dropped (never closed) in
``worker_process_init``. For the engine's pooled connections call
:func:`scoped_session.worker.dispose_engines_after_fork` before the worker
forks.
"""

from __future__ import annotations

import logging
import os
import typing as t

from celery import Celery, signals  # type: ignore[import-untyped]

from ._arguments import check_flag, registries
from ._exceptions import ScopedSessionError
from ._proxy import ScopedSession
from ._registry import forget_all
from ._units import UnitOfWork, end_units

__all__ = ["init_celery"]

logger = logging.getLogger("scoped_session")

_SUCCESS = "SUCCESS"


class _Wiring:
    """The signal handlers of one ``init_celery()`` call.

    The handlers are bound methods connected weakly: the wiring lives as long
    as its app (which holds it), and the global signals never keep either alive.
    """

    def __init__(
        self, app: Celery, sessions: tuple[ScopedSession[t.Any], ...], commit: bool
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.commit = commit
        # Where a task's units are kept on its request: one name per wiring, so
        # two wirings on one app never end each other's units.
        self.attr = f"_scoped_session_units_{id(self):x}"
        self.pid = os.getpid()

    def connect(self) -> None:
        signals.task_prerun.connect(self.task_prerun)
        signals.task_postrun.connect(self.task_postrun)
        signals.worker_process_init.connect(self.worker_process_init)

    def task_prerun(self, sender: t.Any = None, task: t.Any = None, **kw: t.Any) -> None:
        if task is None or task.app is not self.app:
            return
        units: list[UnitOfWork[t.Any]] = []
        for scoped in self.sessions:
            units.append(UnitOfWork(scoped, self.commit, f"the task {task.name}").start())
        # The request is per task run and per thread, and nested eager runs
        # (a retry run eagerly) push their own: no global map to leak from.
        setattr(task.request, self.attr, units)

    def task_postrun(
        self, sender: t.Any = None, task: t.Any = None, state: str | None = None, **kw: t.Any
    ) -> None:
        if task is None or task.app is not self.app:
            return
        request = task.request
        units: list[UnitOfWork[t.Any]] | None = getattr(request, self.attr, None)
        if units is None:
            return
        delattr(request, self.attr)
        # Celery logs what a signal handler raises; the task's state is final.
        end_units(units, commit=self.commit and state == _SUCCESS, where=f"the task {task.name}")

    def worker_process_init(self, **kw: t.Any) -> None:
        # The core drops inherited sessions in an os.fork() hook already; this
        # covers a pool process made without one. The signal carries no app,
        # so only a process other than the wiring one is taken for a child.
        if os.getpid() == self.pid:
            return
        for scoped in self.sessions:
            forget_all(scoped)


def init_celery(
    celery_app: Celery,
    session: ScopedSession[t.Any],
    *more: ScopedSession[t.Any],
    commit: bool = False,
) -> None:
    """Give every task of ``celery_app`` a unit of work per ``ScopedSession``.

    :param celery_app: the :class:`celery.Celery` application.
    :param session: the ``ScopedSession`` (more may follow).
    :param commit: commit after a task that succeeded (see the module
        documentation for why committing in the task body is preferable).
    """
    if not isinstance(celery_app, Celery):
        raise TypeError(
            "init_celery() takes the Celery application first, then the"
            f" ScopedSession(s); got an object of type {type(celery_app).__name__}."
        )
    sessions: tuple[ScopedSession[t.Any], ...] = registries(
        (session, *more), "init_celery()", ScopedSession
    )
    check_flag(commit, "commit")
    wirings: list[_Wiring] = celery_app.__dict__.setdefault("_scoped_session_wirings", [])
    for wiring in wirings:
        for scoped in sessions:
            if scoped in wiring.sessions:
                raise ScopedSessionError(
                    "This ScopedSession is already wired to this Celery app; call"
                    " init_celery() once per app and ScopedSession."
                )
    wiring = _Wiring(celery_app, sessions, commit)
    wirings.append(wiring)
    wiring.connect()
