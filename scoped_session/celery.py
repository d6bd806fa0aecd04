"""Celery wiring: a unit of work per task.

::

    from celery import Celery
    from scoped_session import ScopedSession
    from scoped_session.celery import init_celery
    from scoped_session.worker import dispose_engines_after_fork

    Session = ScopedSession(sessionmaker(engine))
    dispose_engines_after_fork(engine)  # prefork: each pool process connects anew
    app = Celery("jobs", broker="redis://")
    init_celery(app, Session, commit=True)

    @app.task
    def add_note(text):
        Session.add(Note(text=text))    # this task's own session, committed
                                        # before the task counts as a success

Each task's body runs in a unit of work per registry: its sessions are closed
when the body returns or raises (rolled back unless committed). The unit is made
part of the task by wrapping each task's ``run`` when the app is finalized (a
worker always finalizes its app before it runs a task); Celery's signals would cost
every task more than the unit itself. A task run eagerly (``task_always_eager``,
``task.apply()``) inside an open unit of work joins it: it uses the caller's
session, which the caller ends. So does a task's function called from another
task's body.

``commit=True`` commits when the body has returned, *before* Celery stores the
result or sends callbacks: a failed commit is the task's exception, so the task
is FAILURE, or is retried when its ``autoretry_for`` covers the error (the commit
runs inside Celery's automatic-retry wrapper). A task whose commit failed is never
SUCCESS.

After each run (``task_postrun``) a session made outside the unit, by the task's
handlers (``on_success``, ``after_return``), is closed. A task defined after its app
was finalized is wrapped then, for its later runs; its first run, unwrapped, is
ended there too: committed when it succeeded (with ``commit=True``), a failure
only logged. (Run eagerly outside any unit, that first run cannot tell its session
from one its caller made before and left open: it ends that one.)

Sessions inherited by a prefork pool process are dropped (never closed) in
``worker_process_init``. For the engine's pooled connections call
:func:`scoped_session.worker.dispose_engines_after_fork` before the worker
forks.
"""

from __future__ import annotations

import functools
import logging
import os
import typing as t

from celery import Celery, signals  # type: ignore[import-untyped]

from ._arguments import check_flag, registries
from ._ending import end_sessions, end_units
from ._exceptions import ScopedSessionError
from ._proxy import ScopedSession
from ._registry import forget_all, open_unit, take_loose

__all__ = ["init_celery"]

logger = logging.getLogger("scoped_session")

_SUCCESS = "SUCCESS"


class _Wiring:
    """The run wrapper and the signal handlers of one ``init_celery()`` call.

    The handlers are bound methods connected weakly: the wiring lives as long
    as its app (which holds it), and the global signals never keep either alive.
    """

    def __init__(
        self, app: Celery, sessions: tuple[ScopedSession[t.Any], ...], commit: bool
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.commit = commit
        # The mark of a run this wiring wrapped: one name per wiring, so that two
        # wirings on one app each wrap the run once.
        self.attr = f"_scoped_session_run_{id(self):x}"
        self.pid = os.getpid()
        #: Per task name: the task object whose run this wiring wrapped.
        self.wrapped: dict[str, object] = {}

    def connect(self) -> None:
        signals.task_postrun.connect(self.task_postrun)
        signals.worker_process_init.connect(self.worker_process_init)
        if self.app.finalized:
            self.wrap_all()
        else:
            self.app.on_after_finalize.connect(self.on_after_finalize, weak=True)

    def on_after_finalize(self, sender: t.Any = None, **kw: t.Any) -> None:
        if sender is self.app:
            self.wrap_all()

    def wrap_all(self) -> None:
        for task in list(self.app.tasks.values()):
            self.wrap(task)

    def wrap(self, task: t.Any) -> None:
        """Run the task's body in a unit of work per registry.

        A task with ``autoretry_for`` keeps its body in ``_orig_run``, called by
        Celery's retry wrapper: the unit goes inside that wrapper, so that a
        failed commit is retried like any error of the body.
        """
        self.wrapped[task.name] = task
        target = "_orig_run" if "_orig_run" in vars(task) else "run"
        inner = getattr(task, target)
        if getattr(inner, self.attr, False):
            return
        sessions, commit, where = self.sessions, self.commit, f"the task {task.name}"

        @functools.wraps(inner)
        def run(*args: t.Any, **kwargs: t.Any) -> t.Any:
            units = [open_unit(scoped, where) for scoped in sessions]
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                end_units(units, commit=False, error=exc, where=where)
                raise
            # Committed (when asked) and closed before Celery stores the result:
            # a failed commit raises into the tracer, and the task is FAILURE or
            # retried. A joined unit (an eager task inside the caller's unit)
            # belongs to the caller, who ends it.
            end_units(units, commit=commit, where=where)
            return result

        setattr(run, self.attr, True)
        setattr(task, target, run)

    def task_postrun(
        self, sender: t.Any = None, task: t.Any = None, state: str | None = None, **kw: t.Any
    ) -> None:
        if task is None or task.app is not self.app:
            return
        late = self.wrapped.get(task.name) is not task
        if late:
            # Defined after the app was finalized: wrapped for its later runs.
            self.wrap(task)
        if task.request.is_eager and not late:
            # A wrapped eager run ended its own unit: a session left in the
            # caller's thread is the caller's.
            return
        loose = [session for session in map(take_loose, self.sessions) if session is not None]
        if loose:
            # Made outside the run's unit: by a handler, or by a run that was
            # not wrapped yet (committed when it succeeded, as its unit would
            # have been). Celery logs what a signal handler raises.
            commit = late and self.commit and state == _SUCCESS
            end_sessions(loose, commit=commit, where=f"the task {task.name}")

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
    :param commit: commit the task's sessions when its body has returned,
        before its result is stored: a failed commit fails the task (or retries
        it under its ``autoretry_for``). Several sessions are committed in order.
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
