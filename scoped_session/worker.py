"""Sessions for background workers: one per job or one per worker thread.

::

    from scoped_session import ScopedSession
    from scoped_session.worker import ScopedThreadPoolExecutor, dispose_engines_after_fork

    Session = ScopedSession(sessionmaker(engine))

    def job(n):
        Session.add(Note(text=f"job {n}"))      # this job's own session

    with ScopedThreadPoolExecutor(Session, max_workers=8, commit=True) as pool:
        futures = [pool.submit(job, n) for n in range(100)]
    # every job ran in a unit of work of its own: committed when it returned,
    # closed also when it raised (its exception is in its future)

    # A long-running loop: one unit of work per job, the loop survives failures.
    while not stop.is_set():
        item = queue.get()
        try:
            with Session.scope(commit=True):
                handle(item)
        except Exception:
            log.exception("job failed")

    # Before forking (gunicorn --preload, multiprocessing "fork"), so that a
    # child never uses the parent's pooled connections:
    dispose_engines_after_fork(engine)   # engine.dispose(close=False) in each child

``per="thread"`` keeps one session per worker thread across jobs instead: it
is rolled back after a job that raised (the next job is not poisoned) and
closed when the pool shuts down.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import typing as t
import weakref
from collections.abc import Sequence
from types import TracebackType

from ._arguments import check_flag, registries
from ._cells import Cell, describe
from ._ending import commit_units, end_units
from ._proxy import ScopedSession
from ._registry import open_unit

__all__ = ["ScopedThreadPoolExecutor", "dispose_engines_after_fork"]

_submit = concurrent.futures.ThreadPoolExecutor.submit


def _no_job() -> None:
    """Bound in the runner cache before any job was submitted (see submit())."""


logger = logging.getLogger("scoped_session")

P = t.ParamSpec("P")
T = t.TypeVar("T")

_PER = ("job", "thread")


class _ThreadUnits:
    """The units of work one per="thread" worker thread keeps open across jobs."""

    __slots__ = ("close_requested", "closed", "running", "units")

    def __init__(self, units: list[Cell]) -> None:
        self.units = units
        # Held by the worker thread while a job runs. Once close_requested is
        # set, whoever gets the lock first ends the units (closed says so), so
        # a busy thread's units are ended by that thread when its job is over.
        self.running = threading.Lock()
        self.close_requested = False
        self.closed = False

    def claim(self) -> bool:
        """Whether the caller should end the units now (at most one does)."""
        if not self.running.acquire(blocking=False):
            return False
        try:
            if self.closed:
                return False
            self.closed = True
            return True
        finally:
            self.running.release()


def _one_session_job(scoped: ScopedSession[t.Any], fn: t.Callable[..., T]) -> t.Callable[..., T]:
    """The hot path, per="job" with one ScopedSession and no commit: ``fn`` in a
    try/finally remove() inside the worker thread's open unit. A closure, not a
    method or a partial: the worker pays for one call, nothing more."""

    def run(*args: t.Any, **kwargs: t.Any) -> T:
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            try:
                scoped.remove()
            except Exception:
                logger.error("Closing a job's session failed.", exc_info=True)
            raise
        scoped.remove()
        return result

    return run


# -- connection pools after os.fork(): each child gets its own -----------------------
# Sessions need nothing for a fork (a registry starts empty in a fork child); an
# engine's pooled connections do: a child must never use the parent's sockets.


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


class ScopedThreadPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """A :class:`~concurrent.futures.ThreadPoolExecutor` whose jobs get sessions
    that are always closed.

    :param sessions: a :class:`~scoped_session.ScopedSession` or a list of them.
    :param max_workers: as for ``ThreadPoolExecutor``.
    :param per: ``"job"`` (the default): each submitted callable runs in a unit
        of work of its own, ended when it returns or raises. ``"thread"``: each
        worker thread keeps one session per ``ScopedSession`` across jobs; it is
        rolled back after a job that raised, and closed at ``shutdown()``.
    :param commit: commit each session after a job that returned. A failed
        commit fails that job's future (the session is still closed).
    :param executor_kwargs: passed to ``ThreadPoolExecutor`` (``thread_name_prefix``,
        ``initializer``, ``initargs``).

    With several sessions and ``commit=True`` they are committed in order; a
    failed commit rolls back the ones after it, not the ones before (this is not
    a two-phase commit).
    """

    def __init__(
        self,
        sessions: ScopedSession[t.Any] | Sequence[ScopedSession[t.Any]],
        max_workers: int | None = None,
        *,
        per: t.Literal["job", "thread"] = "job",
        commit: bool = False,
        **executor_kwargs: t.Any,
    ) -> None:
        scoped: tuple[ScopedSession[t.Any], ...] = registries(
            sessions, "ScopedThreadPoolExecutor()", ScopedSession, argument="sessions"
        )
        if per not in _PER:
            raise ValueError(
                f"Unknown per={per!r}: pass per='job' (a unit of work for each job,"
                " the default) or per='thread' (one session per worker thread,"
                " closed at shutdown)."
            )
        check_flag(commit, "commit")
        initializer = executor_kwargs.pop("initializer", None)
        initargs = tuple(executor_kwargs.pop("initargs", ()))
        if initializer is not None and not callable(initializer):
            raise TypeError(
                f"initializer must be a callable (run once in each worker thread);"
                f" got an object of type {type(initializer).__name__}."
            )
        self._sessions = scoped
        self._per = per
        self._commit = commit
        self._local = threading.local()
        self._states: list[_ThreadUnits] = []
        self._states_lock = threading.Lock()
        self._closing = False
        #: Wraps a job's function in what runs it on a worker thread.
        self._wrap: t.Callable[[t.Callable[..., t.Any]], t.Callable[..., t.Any]]
        if per == "job":
            # Each worker thread opens a unit of work per ScopedSession when it
            # starts and keeps it open; a job's sessions are removed inside it
            # when the job ends. That is a unit of work per job (a fresh
            # session, committed, closed; a nested Session.scope() joins it) at
            # the cost of a hand-written remove(). Between jobs the thread's
            # units hold no session, so nothing is left to close at shutdown and
            # a job needs no lock against it.
            super().__init__(
                max_workers,
                initializer=self._open_job_units,
                initargs=(initializer, initargs),
                **executor_kwargs,
            )
            if len(scoped) == 1 and not commit:
                self._wrap = functools.partial(_one_session_job, scoped[0])
            else:
                self._wrap = functools.partial(functools.partial, self._run_job)
        else:
            super().__init__(
                max_workers, initializer=initializer, initargs=initargs, **executor_kwargs
            )
            self._wrap = functools.partial(functools.partial, self._run_per_thread)
        #: The last function submitted, and its wrapper (see submit()).
        self._last: tuple[t.Callable[..., t.Any], t.Callable[..., t.Any]] = (_no_job, _no_job)

    @property
    def per(self) -> str:
        """``"job"`` or ``"thread"``."""
        return self._per

    def submit(
        self, fn: t.Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` to run with its session(s)."""
        # The job goes to the base class's submit() inside a runner that ends
        # its unit of work. The runner of the last function submitted is used
        # again (a pool mostly runs one function over many arguments), so a
        # queued job holds no object a plain ThreadPoolExecutor's would not:
        # with thousands queued, each extra one is measurable garbage-collector
        # work. One attribute read: safe with several submitting threads. The
        # base method is called directly, as super() makes a proxy per call (a
        # class mixed in between this one and ThreadPoolExecutor is skipped).
        last, runner = self._last
        if last is not fn:
            runner = self._wrap(fn)
            self._last = (fn, runner)
        return _submit(self, runner, *args, **kwargs)

    # -- per="job" --------------------------------------------------------------

    def _open_job_units(
        self, initializer: t.Callable[..., object] | None, initargs: tuple[t.Any, ...]
    ) -> None:
        """Start a worker thread: the user's initializer, then the thread's units.

        Opened after the initializer: a session it made is shadowed, not handed
        to the first job (it comes back if the thread's units ever end).
        """
        if initializer is not None:
            initializer(*initargs)
        self._local.units = self._start_thread_units()

    def _start_thread_units(self) -> list[Cell]:
        """A unit of work per ScopedSession, opened on the calling worker thread."""
        label = f"the worker thread {threading.current_thread().name!r}"
        return [open_unit(s, label) for s in self._sessions]

    def _run_job(self, fn: t.Callable[..., T], /, *args: t.Any, **kwargs: t.Any) -> T:
        units: list[Cell] = self._local.units
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._end_job(units, exc)
            raise
        self._end_job(units, None)
        return result

    def _run_per_job(
        self, fn: t.Callable[..., T], args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
    ) -> T:
        """Run a job in units of its own: per="thread" jobs that run once the
        pool's shutdown has closed their thread's session."""
        units: list[Cell] = []
        try:
            for scoped in self._sessions:
                units.append(open_unit(scoped, fn))
            result = fn(*args, **kwargs)
        except BaseException as exc:
            end_units(units, commit=self._commit, error=exc, where=describe(fn))
            raise
        end_units(units, commit=self._commit, where=describe(fn))
        return result

    def _end_job(self, units: list[Cell], error: BaseException | None) -> None:
        """End the job's sessions by the policy (commit when asked and the job
        returned, close, forget); the thread's units stay open for the next job."""
        end_units(units, commit=self._commit, error=error, where="a job", keep_open=True)

    # -- per="thread" -----------------------------------------------------------

    def _open_thread_state(self) -> _ThreadUnits | None:
        """Open this worker thread's units on its first job; ``None`` once the
        pool is shutting down (the job then gets units of its own)."""
        with self._states_lock:
            if self._closing:
                return None
            state = _ThreadUnits(self._start_thread_units())
            self._states.append(state)
        self._local.state = state
        return state

    def _run_per_thread(self, fn: t.Callable[..., T], /, *args: t.Any, **kwargs: t.Any) -> T:
        state: _ThreadUnits | None = getattr(self._local, "state", None)
        if state is None:
            state = self._open_thread_state()
            if state is None:
                return self._run_per_job(fn, args, kwargs)
        running = state.running
        running.acquire()
        if state.closed:
            running.release()
            return self._run_per_job(fn, args, kwargs)
        try:
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                self._recover(state)
                raise
            if self._commit:
                self._commit_thread(state)
            return result
        finally:
            running.release()
            if state.close_requested and state.claim():
                # shutdown(wait=False) ran during this job; nobody is left to
                # raise to (the policy logged it), and the job's own outcome must stand.
                with contextlib.suppress(Exception):
                    end_units(state.units, commit=False, where="shutdown()")

    def _commit_thread(self, state: _ThreadUnits) -> None:
        try:
            commit_units(state.units, where="a job")
        except BaseException:
            self._recover(state)
            raise

    def _recover(self, state: _ThreadUnits) -> None:
        """Make this thread's sessions usable for the next job after a failure.

        A session that cannot roll back is closed and forgotten; the next job
        gets a new one. Failures are logged: the job's own exception goes first.
        """
        for unit, scoped in zip(state.units, self._sessions, strict=True):
            session = unit.session
            if session is None:
                continue
            rollback = getattr(session, "rollback", None)
            try:
                if rollback is not None:
                    rollback()
                    continue
            except Exception:
                logger.error(
                    "Rolling back a worker thread's session failed; it is replaced.",
                    exc_info=True,
                )
            try:
                scoped.remove()  # on the worker thread: the unit's own session
            except Exception:
                logger.error("Closing a worker thread's session failed.", exc_info=True)

    # -- shutdown ---------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the pool down, then close the worker threads' sessions
        (``per="thread"``).

        With ``wait=False`` a thread busy with a job closes its sessions when
        that job ends; jobs that still run after that get units of their own.
        A failed close is logged, and the first is raised.
        """
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        self._close_thread_units(None)

    def _close_thread_units(self, error: BaseException | None) -> None:
        self._last = (_no_job, _no_job)  # let the last job's function go
        with self._states_lock:
            self._closing = True
            states, self._states = self._states, []
        idle: list[Cell] = []
        for state in states:
            state.close_requested = True  # before claim(): see _ThreadUnits
            if state.claim():
                idle.extend(state.units)
        end_units(idle, commit=False, error=error, where="shutdown()")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> t.Literal[False]:
        if exc is None:
            self.shutdown(wait=True)
            return False
        # The block's own exception goes first: a failed close is only logged.
        concurrent.futures.ThreadPoolExecutor.shutdown(self, wait=True)
        self._close_thread_units(exc)
        return False
