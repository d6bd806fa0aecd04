"""RQ (Redis Queue) wiring: a unit of work per job.

::

    # app/jobs.py
    from scoped_session import ScopedSession
    from scoped_session.rq import ScopedJob
    from scoped_session.worker import dispose_engines_after_fork

    Session = ScopedSession(sessionmaker(engine))
    dispose_engines_after_fork(engine)   # each work horse connects anew

    class Job(ScopedJob):
        scoped_sessions = Session        # or a tuple of them
        commit = True

    def add_note(text):
        Session.add(Note(text=text))     # this job's own session, committed
                                         # before the job counts as finished

    # the producer
    Queue(connection=redis, job_class=Job).enqueue(add_note, "hello")

    # the worker (any class: the forking default, SimpleWorker, SpawnWorker)
    $ rq worker --job-class app.jobs.Job

Every job run with that job class gets a unit of work per ``ScopedSession``
around its function, inside RQ's job timeout: a fresh session, closed when the
function returns or raises, also when the timeout interrupts it. With
``commit = True`` it is committed when the function has returned, before RQ
stores the result: a failed commit is the job's exception, so the job is FAILED
(or retried under its ``Retry`` policy), never FINISHED. A function that returns
an ``rq.Retry`` asks to run again: its session is rolled back, as is Celery's
when a task calls ``self.retry()``.

The default worker forks a work horse per job. Sessions the worker process
holds are dropped in the horse without being closed (closing would roll back
the worker's transaction on its own socket); the engine's pooled connections
need :func:`scoped_session.worker.dispose_engines_after_fork`. ``SimpleWorker``
runs jobs in the worker process, where a job's unit shadows any session the
process made outside one; ``SpawnWorker`` starts each horse afresh.
"""

from __future__ import annotations

import typing as t

from rq.job import Job, Retry

from ._arguments import check_flag, registries
from ._ending import end_units
from ._exceptions import ScopedSessionError
from ._proxy import ScopedSession
from ._registry import open_unit

__all__ = ["ScopedJob"]


class ScopedJob(Job):
    """An RQ ``Job`` class whose jobs each run in a unit of work.

    Subclass it in an importable module and name the subclass to the worker
    (``rq worker --job-class app.jobs.Job``) and, optionally, to the queues.
    Both class attributes are checked when the subclass is defined.
    """

    #: The ``ScopedSession`` (or a list of them) whose sessions each job gets.
    scoped_sessions: t.ClassVar[t.Any] = ()
    #: Commit the job's sessions when its function has returned, in order,
    #: before RQ stores the result.
    commit: t.ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__qualname__
        if "scoped_sessions" in cls.__dict__:
            cls.scoped_sessions = registries(
                cls.__dict__["scoped_sessions"],
                f"{name}.scoped_sessions",
                ScopedSession,
                argument="scoped_sessions",
            )
        check_flag(cls.commit, f"{name}.commit")

    def perform(self) -> t.Any:
        """Run the job's function in a unit of work per ``ScopedSession``."""
        cls = type(self)
        sessions: tuple[ScopedSession[t.Any], ...] = cls.scoped_sessions
        if not sessions:
            raise ScopedSessionError(
                f"The job class {cls.__qualname__} names no ScopedSession: subclass"
                " ScopedJob and set scoped_sessions = Session on the subclass."
            )
        commit = cls.commit
        where = f"the job {self.func_name}"
        units = [open_unit(scoped, where) for scoped in sessions]
        try:
            result = super().perform()
        except BaseException as exc:
            # The job's own exception (a JobTimeoutException too) goes on; a
            # failed close is only logged.
            end_units(units, commit=False, error=exc, where=where)
            raise
        # A failed commit raises here, inside the job's timeout: RQ records the
        # job as failed (or retries it), not as finished.
        end_units(units, commit=commit and not isinstance(result, Retry), where=where)
        return result
