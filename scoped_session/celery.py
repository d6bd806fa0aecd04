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

Each task run by a worker (any pool: prefork, threads, solo) gets a unit of work
that starts in ``task_prerun`` and ends in ``task_postrun``: on success, on
failure and on retry, the session is closed (rolled back unless committed).
A task run eagerly (``task_always_eager``, ``task.apply()``) inside an open unit
of work joins it: it uses the caller's session, which the caller ends.

``commit=True`` commits when the task's body has returned, *before* Celery
stores the result or sends callbacks: a failed commit is the task's exception,
so the task is FAILURE, or is retried when its ``autoretry_for`` covers the
error (the commit runs inside Celery's automatic-retry wrapper). A task whose
commit failed is never SUCCESS. The commit is made part of the task by wrapping
each task's ``run`` when the app is finalized (a worker always finalizes its app
before it runs a task); the signals alone cannot do it, since ``task_postrun``
is sent after the result is stored. One gap is left: a task whose tracer was
built before the wrapper existed (the first eager ``apply()`` of a task in a
process whose app was never finalized) is committed in ``task_postrun``, and a
failure there is only logged.

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
from ._exceptions import ScopedSessionError
from ._proxy import ScopedSession
from ._registry import forget_all
from ._units import UnitOfWork, end_units

__all__ = ["init_celery"]

logger = logging.getLogger("scoped_session")

_SUCCESS = "SUCCESS"


class _Run:
    """One task run's units of work, from ``task_prerun`` to ``task_postrun``."""

    __slots__ = ("claimed", "decided", "units")

    def __init__(self, units: list[UnitOfWork[t.Any]]) -> None:
        self.units = units
        #: The wrapped run of this task run has started (a direct call of the
        #: same task from inside its body must not claim it again).
        self.claimed = False
        #: The commit was decided inside the run: task_postrun only closes.
        self.decided = False


class _Wiring:
    """The signal handlers and the run wrapper of one ``init_celery()`` call.

    The handlers are bound methods connected weakly: the wiring lives as long
    as its app (which holds it), and the global signals never keep either alive.
    """

    def __init__(
        self, app: Celery, sessions: tuple[ScopedSession[t.Any], ...], commit: bool
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.commit = commit
        # Where a task's run is kept on its request, and the mark of a run this
        # wiring wrapped: one name per wiring, so two wirings on one app never
        # end or commit each other's units.
        self.attr = f"_scoped_session_units_{id(self):x}"
        self.pid = os.getpid()
        #: Per task name: what logs call its runs, and the task object whose
        #: run this wiring wrapped (task_prerun checks it at no more cost).
        self.labels: dict[str, str] = {}
        self.wrapped: dict[str, object] = {}

    def connect(self) -> None:
        signals.task_prerun.connect(self.task_prerun)
        signals.task_postrun.connect(self.task_postrun)
        signals.worker_process_init.connect(self.worker_process_init)
        if self.commit:
            if self.app.finalized:
                self.wrap_all()
            else:
                self.app.on_after_finalize.connect(self.on_after_finalize, weak=True)

    # -- the commit inside the task's run ------------------------------------------

    def on_after_finalize(self, sender: t.Any = None, **kw: t.Any) -> None:
        if sender is self.app:
            self.wrap_all()

    def wrap_all(self) -> None:
        for task in list(self.app.tasks.values()):
            self.wrap(task)

    def wrap(self, task: t.Any) -> bool:
        """Make the task's run commit the run's sessions before it returns.

        A task with ``autoretry_for`` keeps its body in ``_orig_run``, called by
        Celery's retry wrapper: the commit goes inside that wrapper, so that a
        failed commit is retried like any error of the body.

        Returns whether a tracer built before this call misses the wrapper (it
        holds the old ``run``; the retry wrapper looks ``_orig_run`` up per call).
        """
        self.wrapped[task.name] = task
        target = "_orig_run" if "_orig_run" in vars(task) else "run"
        inner = getattr(task, target)
        if getattr(inner, self.attr, False):
            return False
        claim, commit_run = self.claim, self.commit_run

        @functools.wraps(inner)
        def run(*args: t.Any, **kwargs: t.Any) -> t.Any:
            record = claim(task)
            result = inner(*args, **kwargs)
            if record is not None:
                commit_run(record, task)
            return result

        setattr(run, self.attr, True)
        setattr(task, target, run)
        return target == "run"

    def claim(self, task: t.Any) -> _Run | None:
        """The run the traced request of ``task`` opened, the first time only.

        A base class whose ``__call__`` calls ``super().__call__()`` pushes a
        request of its own on top of the traced one, hence the walk down.
        """
        for request in reversed(task.request_stack.stack):
            record: _Run | None = getattr(request, self.attr, None)
            if record is not None:
                if record.claimed:
                    return None
                record.claimed = True
                return record
        return None

    def commit_run(self, record: _Run, task: t.Any) -> None:
        record.decided = True
        # A joined unit (an eager task inside the caller's unit) belongs to
        # the caller, who commits it.
        units = [unit for unit in record.units if not unit.joined]
        # The sessions are committed and closed now (their connections go back
        # to the pool before the result is stored); the units stay open until
        # task_postrun, so that what runs meanwhile (on_success, callbacks)
        # gets sessions that are closed too. A failed commit raises into the
        # tracer: the task is FAILURE (or retried); the rest were rolled back.
        end_units(units, commit=True, where=self.label(task), keep_open=True)

    def label(self, task: t.Any) -> str:
        name: str = task.name
        label = self.labels.get(name)
        if label is None:
            label = self.labels[name] = f"the task {name}"
        return label

    # -- the signals -------------------------------------------------------------

    def task_prerun(self, sender: t.Any = None, task: t.Any = None, **kw: t.Any) -> None:
        if task is None or task.app is not self.app:
            return
        label, commit = self.label(task), self.commit
        units: list[UnitOfWork[t.Any]] = [
            UnitOfWork(scoped, commit, label).start() for scoped in self.sessions
        ]
        # The request is per task run and per thread, and nested eager runs
        # (a retry run eagerly) push their own: no global map to leak from.
        record = _Run(units)
        setattr(task.request, self.attr, record)
        if commit and self.wrapped.get(task.name) is not task and self.wrap(task):
            # A task registered after the app was finalized: its later runs
            # commit inside the run; this one, whose tracer holds the old run,
            # commits in task_postrun (a direct call of the task from its body
            # must not claim the run meanwhile).
            record.claimed = True

    def task_postrun(
        self, sender: t.Any = None, task: t.Any = None, state: str | None = None, **kw: t.Any
    ) -> None:
        if task is None or task.app is not self.app:
            return
        request = task.request
        record: _Run | None = getattr(request, self.attr, None)
        if record is None:
            return
        delattr(request, self.attr)
        units = record.units
        if record.decided and all(unit.session is None for unit in units):
            # Committed and closed in the run, nothing made since: only the
            # bookkeeping is left.
            for unit in units:
                unit.detach()
            return
        commit = self.commit and state == _SUCCESS and not record.decided
        # Celery logs what a signal handler raises; the task's state is final.
        end_units(units, commit=commit, where=self.label(task))

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
