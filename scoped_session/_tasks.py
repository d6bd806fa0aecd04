"""Where async sessions live: a cell per task, closing what a task leaves behind
on its own loop, and telling who is inside a session.

A :class:`TaskScope` keeps the caller's innermost cell in a context variable;
tasks inherit it from the task that started them, so each cell says which task
may use it without checks (``gate``): a session made outside a unit of work
belongs to the task that made it alone; a unit's session is shared with the tasks
started inside the unit while it is open, and checked on every use once it is.

Nothing here can await where it is reached: a task's leftovers are closed by a
done callback that starts a close task on the same loop, and a cell dropped
elsewhere schedules its close onto its loop with ``call_soon_threadsafe``, or
logs that it cannot.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import types
import typing as t
import warnings
import weakref

from ._cells import Cell, Home, NoCell, ReapingCell, Stats
from ._exceptions import ConcurrentUseError
from ._scopes import KeyedScope, Scope

__all__ = [
    "FINISHED",
    "SHARED",
    "AsyncCell",
    "AsyncKeyedScope",
    "ConcurrentUseWarning",
    "TaskScope",
    "busy_elsewhere",
    "drain_closing",
    "owner",
    "run_to_end",
]

logger = logging.getLogger("scoped_session")

Task = asyncio.Task[t.Any]
R = t.TypeVar("R")


class ConcurrentUseWarning(RuntimeWarning):
    """A session was reached by one task while another task was using it."""


#: The running loop of this thread, or ``None`` (never raises).
_running_loop = asyncio.events._get_running_loop
#: The task running on a loop, or ``None`` for none (or for a ``None`` loop):
#: ``asyncio.current_task(loop)`` without its Python frame. On 3.11 that function
#: is Python code around this dict of asyncio's (3.12 made it C); the proxy reads
#: it on every call, so the dict's own ``get`` is used where asyncio has it.
_task_of: t.Callable[[asyncio.AbstractEventLoop | None], Task | None]
_current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
if isinstance(_current_tasks, dict):
    _task_of = _current_tasks.get
else:  # pragma: no cover - an asyncio without the dict

    def _task_of(loop: asyncio.AbstractEventLoop | None) -> Task | None:
        return None if loop is None else asyncio.current_task(loop)


#: ``asyncio.current_task``, and whether it is C (3.12 and later): one call then,
#: where the dict above takes two.
_current_task = asyncio.current_task
_C_CURRENT_TASK = isinstance(_current_task, types.BuiltinFunctionType)


def owner() -> Task | None:
    """The calling task, or None outside any task."""
    return _task_of(_running_loop())


class Marker:
    """A value of ``AsyncCell.gate`` that no caller ever matches."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The gate of a unit's cell once a second task has used it: every access is checked.
SHARED = Marker("<shared>")
#: The gate and task of a cell whose task or unit has finished.
FINISHED = Marker("<finished>")

#: Close tasks scheduled for sessions left behind, kept until they finish.
_closing: set[asyncio.Task[None]] = set()


class AsyncCell(ReapingCell):
    """A cell of an async registry: ``task`` made it (a bare session's owner, or
    the task that opened the unit); ``gate`` is the one task that may use it
    without checks (``task`` until another task uses a unit's cell, then
    :data:`SHARED`); ``loop`` is where its session is closed when nobody else
    does it; ``users`` are the other tasks that used a shared unit's cell."""

    __slots__ = ("gate", "loop", "reaper", "task", "users")

    loop: asyncio.AbstractEventLoop | None
    task: Task | Marker | None
    gate: Task | Marker | None
    users: weakref.WeakSet[Task] | None

    def __init__(
        self,
        stats: Stats,
        prev: Cell | None = None,
        depth: int = 0,
        label: object = None,
        home: t.Callable[[], Home | None] | None = None,
    ) -> None:
        super().__init__(stats, prev, depth, label, home)
        self.loop = loop = _running_loop()
        self.task = self.gate = _task_of(loop)
        self.users = None
        #: The done callback that closes what its task leaves behind, if any.
        self.reaper: t.Callable[[Task], None] | None = None

    def reap(self, session: t.Any) -> None:
        # Reached for a cell dropped while it holds a session: its unit was never
        # ended, or its context was not a task's. Nothing here can await.
        close_later(session, self.loop, "its context was dropped")


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
    """Runs on the session's loop: close it in a task of its own, and say once,
    when that is over, what happened and what to do."""
    task = asyncio.get_running_loop().create_task(_close_logged(session))
    _closing.add(task)
    task.add_done_callback(functools.partial(_closed, why))


async def _close_logged(session: t.Any) -> None:
    try:
        await session.close()
    except Exception:
        logger.exception("Closing a session left behind failed.")


def _closed(why: str, task: asyncio.Task[None]) -> None:
    _closing.discard(task)
    if task.cancelled():
        logger.error(
            "A session was left open without remove() (%s) and could not be closed:"
            " its event loop was shutting down. End it with 'await Session.remove()'"
            " in the task, or use 'async with Session.scope()'.",
            why,
        )
    else:
        logger.warning(
            "A session was left open without remove() (%s); it was closed now. End it"
            " with 'await Session.remove()' in the task, or use 'async with"
            " Session.scope()'.",
            why,
        )


async def drain_closing() -> None:
    """Wait for the closes scheduled on this loop for sessions left behind (tests)."""
    loop = asyncio.get_running_loop()
    while pending := [task for task in _closing if task.get_loop() is loop]:
        await asyncio.wait(pending)


def _reap_at_task_end(cell: AsyncCell, task: Task) -> None:
    """A task's done callback: close the session it made and never removed."""
    cell.task = cell.gate = FINISHED
    cell.reaper = None  # the cell and this callback refer to each other
    session = cell.take_to_close(reaped=True)
    if session is not None:
        _spawn_close(session, f"its task {task.get_name()} ended")


class _TaskSlot(NoCell):
    """The task scope's slot: ``cell`` is the caller's cell when the caller is
    the one task that may use it without checks (its gate), else the slot itself,
    which holds nothing: the registry then takes the slow path, which checks."""

    __slots__ = ("var",)

    def __init__(self, var: contextvars.ContextVar[AsyncCell | None]) -> None:
        self.var = var

    # The proxy reads this on every call: each Python gets the fastest way to
    # the running task it has.
    if _C_CURRENT_TASK:

        @property
        def cell(self) -> Cell | NoCell:
            cell = self.var.get()
            if cell is not None:
                try:
                    if cell.gate is _current_task():
                        return cell
                except RuntimeError:  # no running event loop: the slow path checks
                    pass
            return self

    else:

        @property
        def cell(self) -> Cell | NoCell:
            cell = self.var.get()
            # Outside any task the gate of a cell made there (None) matches too.
            if cell is not None and cell.gate is _task_of(_running_loop()):
                return cell
            return self


class TaskScope(Scope):
    """Cells per asyncio task: a session made outside a unit belongs to its task;
    a unit's session is shared with the tasks started inside it while it is open.

    :param strict: raise :class:`ConcurrentUseError` instead of warning when two
        tasks use one session at the same time.
    """

    kind = "context"
    hooked = True
    var: contextvars.ContextVar[AsyncCell | None]

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.var = contextvars.ContextVar("scoped_session_task_cell", default=None)
        self.slot = _TaskSlot(self.var)

    def get(self) -> Cell | None:
        return self.var.get()

    def install(self, cell: Cell | None) -> None:
        if cell is not None:
            self.tracked.add(cell)
        self.var.set(cell)  # type: ignore[arg-type]  # (a cast is a call, on the hot path)

    def resolve(self) -> Cell | None:
        """The caller's cell: an open unit visible in its context, or a session it
        made itself; dead entries are dropped from the caller's context."""
        # Typed loosely: casts are calls at run time, and this is the hot path.
        cell: t.Any = self.var.get()
        if cell is None:
            return None  # a task's first session: nothing to look up
        me = _task_of(_running_loop())
        top = cell
        while cell is not None:
            if cell.ended:
                cell = cell.prev
            elif cell.depth or cell.task is me:
                break
            else:
                # Another task's own session (this task's parent's): not ours, and
                # nothing under it is either.
                cell = None
        if cell is not top:
            self.var.set(cell)
        found: Cell | None = cell
        return found

    def joins(self, outer: Cell) -> bool:
        # A unit joins one its own task opened; in another task it is its own.
        async_cell: t.Any = outer
        return bool(outer.depth) and async_cell.task is owner()

    def add_cell(self, stats: Stats, prev: Cell | None, depth: int, label: object) -> Cell:
        # One step (a task's first session, every request's unit): made, tracked
        # and set in the caller's context.
        cell = AsyncCell(stats, prev, depth, label, self.ref)
        task = cell.task
        if not depth and isinstance(task, asyncio.Task):
            # The task closes what it leaves behind when it ends; the callback goes
            # with the task, so the registry keeps no task alive. remove() takes
            # it off again: a task that removed its session leaves nothing to do.
            cell.reaper = reaper = functools.partial(_reap_at_task_end, cell)
            task.add_done_callback(reaper)
        tracked = self.tracked  # CellTracker.add(), inline
        tracked.refs.add(weakref.ref(cell, tracked.discard))
        self.var.set(cell)
        return cell

    releases = True

    def release(self, cell: Cell) -> None:
        # remove() emptied the caller's own session cell: drop it, and its done
        # callback with it (the task's next session gets a cell of its own).
        async_cell: t.Any = cell
        reaper = async_cell.reaper
        if reaper is not None:
            async_cell.reaper = None
            task = async_cell.task
            if isinstance(task, asyncio.Task):
                task.remove_done_callback(reaper)
        if self.var.get() is cell:
            self.var.set(cell.prev)  # type: ignore[arg-type]  # an AsyncCell or None

    def leave(self, cell: Cell) -> None:
        async_cell: t.Any = cell  # an AsyncCell; not a cast, which is a call
        async_cell.gate = FINISHED
        if self.var.get() is cell and _task_of(_running_loop()) is async_cell.task:
            self.var.set(async_cell.prev)
            cell.prev = None

    def claim(self, cell: Cell, session: object) -> None:
        """``me`` reaches a cell another task made (a unit's): from now on every use
        of it is checked, and this one is checked against the others."""
        async_cell: t.Any = cell
        me = _task_of(_running_loop())
        if async_cell.gate is me or me is None:
            return  # its own; or a thread in a copied context: nothing to compare with
        async_cell.gate = SHARED
        users = async_cell.users
        if users is None:
            users = async_cell.users = weakref.WeakSet()
        users.add(me)
        if session is not None:
            other = busy_elsewhere(async_cell, me, session)
            if other is not None:
                self.report(other)

    def report(self, other: Task) -> None:
        message = (
            f"A session is in use by task {other.get_name()!r} while another task uses"
            " it too. An async session must not be used by two tasks at the same time:"
            " await one before the other uses it, or open 'async with Session.scope():'"
            " in each task to give it its own session."
        )
        if self.strict:
            raise ConcurrentUseError(message)
        warnings.warn(message, ConcurrentUseWarning, stacklevel=5)

    # A task's cell is reaped with a message of its own (see AsyncCell.reap and
    # _reap_at_task_end), and a label must not keep the task alive.
    labels = False


class AsyncKeyedScope(KeyedScope):
    """A session per custom key, for async sessions: a cell dropped with its session
    has it closed on the loop it was made on."""

    def new_cell(self, stats: Stats, prev: Cell | None, depth: int, label: object) -> Cell:
        return AsyncCell(stats, prev, depth, label, self.ref)


def _in_session_call(task: Task, session: object) -> bool:
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
            and _in_session_call(other, session)
        ):
            return other
    return None


async def run_to_end(awaitable: t.Awaitable[R]) -> R:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile,
    then re-raise that cancellation; else return its result.

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
    return inner.result()
