"""Where async sessions live: the caller's task, cells owned by a task, closing
what a task leaves behind on its own loop, and telling who is inside a session.

A cell holds at most one session. The context variable of a :class:`TaskScope`
holds the caller's innermost cell; tasks inherit it from the task that started
them, so each cell says which task may use it without checks (``gate``): a
session made outside a unit of work belongs to the task that made it alone, a
unit's session is shared with the tasks started inside the unit while it is open,
and is checked on every use once it is.

Nothing here can await where it is reached: a task's leftovers are closed by a
done callback that starts a close task on the same loop, and a cell dropped
elsewhere schedules its close onto its loop with ``call_soon_threadsafe``, or
logs that it cannot.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import threading
import typing as t
import weakref

from ._scopes import Stats, _inherited, speedups

__all__ = [
    "FINISHED",
    "SHARED",
    "AsyncCell",
    "C_CURRENT_TASK",
    "ASYNC_SPEEDUPS",
    "Task",
    "TaskScope",
    "busy_elsewhere",
    "close_later",
    "drain_closing",
    "in_session_call",
    "owner",
    "reap_at_task_end",
    "run_to_end",
    "running_loop",
]

logger = logging.getLogger("scoped_session")

Task = asyncio.Task[t.Any]

# -- who is calling ----------------------------------------------------------------------
# The proxy compares the caller's task with the one allowed to use a cell without
# checks, on every access. Python 3.12+ has a C current_task(); 3.11's is written in
# Python, and its C get_running_loop() makes a getpid() system call on every call
# (its check against a forked child), which costs more than the rest of the lookup
# together. There the running loop is kept per thread, checked against the thread
# running it, and dropped in a fork child; the C dict of current tasks is read
# directly.

get_running_loop = asyncio.events._get_running_loop
#: asyncio's own dict of the task running on each event loop, the one that
#: ``asyncio.current_task()`` reads on Python 3.11 to 3.13 (None if it has none).
_CURRENT_TASKS: dict[asyncio.AbstractEventLoop | None, Task] | None = vars(asyncio.tasks).get(
    "_current_tasks"
)
if sys.version_info >= (3, 12):
    C_CURRENT_TASK = True
    #: This thread's running event loop, or None.
    running_loop = get_running_loop

    def owner() -> Task | None:
        """The calling task, or None outside any task."""
        try:
            return asyncio.current_task()
        except RuntimeError:  # no running event loop
            return None

else:  # Python 3.11
    C_CURRENT_TASK = False
    assert _CURRENT_TASKS is not None
    current_tasks = _CURRENT_TASKS
    _here = threading.local()
    _get_ident = threading.get_ident

    def running_loop() -> asyncio.AbstractEventLoop | None:
        """This thread's running event loop, or None: get_running_loop() without
        a system call once the thread's loop is known."""
        try:
            loop: asyncio.AbstractEventLoop = _here.loop
            # An asyncio loop records the thread running it, None once stopped.
            if loop._thread_id == _get_ident():  # type: ignore[attr-defined]
                return loop
        except AttributeError:  # not known yet, or a loop that does not say
            pass
        running = get_running_loop()
        if running is not None and getattr(running, "_thread_id", None) is not None:
            _here.loop = running
        return running

    def _forget_loop_in_child() -> None:
        # The child's copy of the forking thread would still name the parent's
        # loop, which does not run here.
        vars(_here).clear()

    os.register_at_fork(after_in_child=_forget_loop_in_child)

    def owner() -> Task | None:
        """The calling task, or None outside any task."""
        return current_tasks.get(running_loop())


class Marker:
    """A value of ``AsyncCell.gate`` that no caller ever matches."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The gate of a unit's cell once a second task has used it: every access is checked.
SHARED = Marker("<shared>")
#: The gate and task of a cell whose task has finished.
FINISHED = Marker("<finished>")

#: Close tasks scheduled for sessions left behind, kept until they finish.
_closing: set[asyncio.Task[None]] = set()


class AsyncCell:
    """A slot that holds at most one async session (``None`` while empty).

    ``depth`` counts the units of work open on the cell (0: a session made outside
    any unit); an ended unit's cell keeps ``prev``, the cell it shadowed. ``task``
    made the cell (a bare session's owner, or the task that opened the unit);
    ``gate`` is the one task that may use the cell without checks: ``task`` until
    another task uses a unit's cell, then :data:`SHARED`. ``loop`` is where the
    cell's session is closed when nobody else does it. With the C speedups,
    ``thread`` and ``home`` record the thread and the context (its address) the
    cell was made in, for their test of the gate; else they are None.
    """

    __slots__ = (
        "__weakref__",
        "depth",
        "ended",
        "gate",
        "home",
        "loop",
        "prev",
        "session",
        "stats",
        "task",
        "thread",
        "users",
    )

    session: t.Any
    task: Task | Marker | None
    thread: int | None
    home: int | None
    gate: Task | Marker | None
    users: weakref.WeakSet[Task] | None

    def __init__(
        self,
        stats: Stats,
        task: Task | None,
        loop: asyncio.AbstractEventLoop | None,
        prev: AsyncCell | None = None,
        depth: int = 0,
    ) -> None:
        self.session = None
        self.stats = stats
        self.task = self.gate = task
        self.loop = loop
        self.prev = prev
        self.depth = depth
        self.ended = False
        self.users = None
        mark_cell(self)

    def take(self) -> t.Any:
        """Empty the cell and return what it held (``None`` when empty)."""
        session = self.session
        self.session = None
        return session

    def __del__(self) -> None:
        # Reached for a cell dropped while it holds a session: its unit was never
        # ended, or its context was not a task's. Nothing here can await.
        session = self.session
        if session is None:
            return
        self.session = None
        try:
            # Made before a fork: the parent's (see Cell.__del__).
            if self.stats.pid != os.getpid():
                _inherited.append(session)
                return
            self.stats.reaped += 1
            close_later(session, self.loop, "its context was dropped")
        except Exception:
            logger.exception("Closing a session left behind by its context failed.")


# The C proxy's test of the gate (see AsyncProxyBase in _speedups.c) reads
# _CURRENT_TASKS, which exists as such on Python 3.11 to 3.13.
if speedups is not None and sys.version_info < (3, 14) and isinstance(_CURRENT_TASKS, dict):
    speedups.configure_async(AsyncCell, _CURRENT_TASKS)
    #: The C speedups, when AsyncScopedSession uses them, else None.
    ASYNC_SPEEDUPS: t.Any = speedups
    mark_cell: t.Callable[[AsyncCell], None] = speedups.mark_cell
else:  # pragma: no cover - pure Python
    ASYNC_SPEEDUPS = None

    def mark_cell(cell: AsyncCell) -> None:
        cell.thread = cell.home = None


def close_later(session: object, loop: asyncio.AbstractEventLoop | None, why: str) -> None:
    """Have ``session`` closed on ``loop`` (from any thread), or log that it cannot be."""
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_spawn_close, session, why)
        except RuntimeError:  # closed meanwhile
            pass
        else:
            return
    logger.error(
        "A session was dropped without being closed (%s, and its event loop is gone):"
        " end sessions with 'await Session.remove()' or 'async with Session.scope()'.",
        why,
    )


def _spawn_close(session: t.Any, why: str) -> None:
    """Runs on the session's loop: close it in a task of its own."""
    logger.warning(
        "A session was closed without remove() (%s); call 'await Session.remove()' or"
        " use 'async with Session.scope()'.",
        why,
    )
    task = asyncio.get_running_loop().create_task(_close_logged(session))
    _closing.add(task)
    task.add_done_callback(_closed)


async def _close_logged(session: t.Any) -> None:
    try:
        await session.close()
    except Exception:
        logger.exception("Closing a session left behind failed.")


def _closed(task: asyncio.Task[None]) -> None:
    _closing.discard(task)
    if task.cancelled():
        logger.error(
            "A session left behind could not be closed: its event loop was shutting down."
            " End sessions with 'await Session.remove()' or 'async with Session.scope()'."
        )


async def drain_closing() -> None:
    """Wait for the closes scheduled on this loop for sessions left behind (tests)."""
    loop = asyncio.get_running_loop()
    while pending := [task for task in _closing if task.get_loop() is loop]:
        await asyncio.wait(pending)


def reap_at_task_end(cell: AsyncCell, task: Task) -> None:
    """A task's done callback: close the session it made and never removed."""
    cell.task = cell.gate = FINISHED
    session = cell.take()
    if session is None:
        return
    cell.stats.reaped += 1
    _spawn_close(session, f"its task {task.get_name()} ended")


class TaskScope:
    """Where an AsyncScopedSession's cells live: a context variable holds the
    caller's innermost cell; cells are tracked weakly for ``remove_all()``."""

    kind = "context"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.var: contextvars.ContextVar[AsyncCell | None] = contextvars.ContextVar(
            "scoped_session_async_cell", default=None
        )
        self._lock = threading.Lock()
        self._cells: weakref.WeakSet[AsyncCell] = weakref.WeakSet()

    def track(self, cell: AsyncCell) -> None:
        with self._lock:
            self._cells.add(cell)

    def cells(self) -> list[AsyncCell]:
        with self._lock:
            return list(self._cells)


def in_session_call(task: Task, session: object) -> bool:
    """Whether ``task`` is suspended inside one of ``session``'s own methods: some
    frame on the chain of coroutines it awaits has the session as ``self``."""
    awaited: t.Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None and frame.f_locals.get("self") is session:
            return True
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return False


def busy_elsewhere(cell: AsyncCell, me: Task, session: object) -> Task | None:
    """Another task that uses the cell and is inside one of the session's methods."""
    others: list[t.Any] = list(cell.users or ())
    others.append(cell.task)
    for other in others:
        if (
            isinstance(other, asyncio.Task)
            and other is not me
            and not other.done()
            and in_session_call(other, session)
        ):
            return other
    return None


async def run_to_end(awaitable: t.Awaitable[None]) -> None:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile,
    then re-raise that cancellation.

    Under anyio a cancelled scope cancels the waiting task again on every loop
    iteration: each one is caught here until the work is done.
    """
    inner = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError as exc:
            if inner.done():
                break
            cancelled = exc
        except BaseException:
            break  # inner finished with an error: raised below
    if cancelled is not None:
        failure = None if inner.cancelled() else inner.exception()
        if failure is not None:
            logger.error("Ending a unit of work failed while cancelled.", exc_info=failure)
        raise cancelled
    inner.result()
