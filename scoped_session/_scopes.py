"""Where sessions live: cells, and the scopes that find the caller's cell.

A :class:`Cell` holds at most one session. A scope answers "which cell belongs
to the caller right now?" and keeps the cells it handed out, so that
``remove_all()`` can reach every one of them.

Every scope exposes a ``slot`` object whose ``cell`` attribute is the caller's
cell, and a cell's ``session`` attribute is ``None`` while it is empty. The
proxy's hot path is therefore ``self._slot.cell.session``: plain attribute
reads, done in C for the thread and context scopes. Where the caller has no
cell, ``cell`` is :data:`EMPTY`, whose ``session`` is also ``None`` (or, the
first time a thread asks, the read raises ``AttributeError``). No exception is
raised on the common paths: in CPython raising one costs more than the rest of
a get/remove cycle.

The identity of a scope's entry is the cell object, never a key that can be
reused: not ``id()`` of anything, not a thread ident. A cell that is dropped
while it still holds a session (its thread ended, its task was collected) closes
that session from ``__del__``; a cell inherited through ``os.fork()`` never
does, because closing would talk on the parent's sockets.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import sys
import threading
import types
import typing as t
import weakref

__all__ = [
    "EMPTY",
    "Cell",
    "CellTracker",
    "NoCell",
    "ContextScope",
    "KeyedScope",
    "Scope",
    "Stats",
    "ThreadScope",
]

logger = logging.getLogger("scoped_session")


def _load_speedups() -> types.ModuleType | None:
    """The proxy's hot path in C (``_speedups.c``), unless it was not built or
    the environment variable ``SCOPED_SESSION_PURE_PYTHON`` is set (to anything
    but an empty string). Without it the same behaviour comes from Python."""
    if os.environ.get("SCOPED_SESSION_PURE_PYTHON"):
        return None
    try:
        from . import _speedups
    except ImportError:  # pragma: no cover - built without a C compiler
        return None
    return _speedups


speedups = _load_speedups()

#: Sessions inherited through ``os.fork()`` whose cells died in the child. They
#: are kept alive on purpose: finalizing them (SQLAlchemy returns a collected
#: connection to its pool with a rollback) would talk on the parent's sockets.
_inherited: list[object] = []

#: Whether the GIL serializes threads (it can be turned on at run time in a
#: free-threaded build, never off): Cell.take() needs no lock of its own then.
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
_take_lock = threading.Lock()


class Stats:
    """Counters shared by a ScopedSession and its cells.

    Kept separate from the ScopedSession so that a cell can count its own reaping
    without holding a reference to the registry (that would make a reference
    cycle through the thread-local storage).
    """

    __slots__ = ("created", "pid", "reaped", "removed")

    def __init__(self) -> None:
        #: The process whose sessions these are: a cell whose stats name another
        #: process was inherited through os.fork().
        self.pid = os.getpid()
        self.created = 0
        self.removed = 0
        self.reaped = 0


class Cell:
    """A slot that holds at most one session.

    ``session`` is ``None`` while the cell is empty. ``depth`` counts the units
    of work open on the cell (0: a session made outside any unit). An ended
    unit's cell keeps ``prev``, the cell it shadowed, so that the owner can get
    it back even when the unit was ended from another thread.
    """

    __slots__ = ("__weakref__", "depth", "ended", "label", "origin", "prev", "session", "stats")

    is_cell = True

    session: t.Any
    depth: int
    ended: bool
    prev: Cell | None
    #: What the cell is for (a thread's name, a WSGI environ, a job), for the
    #: reap warning; unset unless its maker had one at hand.
    label: object
    #: Where its first session was made outside a unit of work: (code, offset
    #: of the instruction); None otherwise.
    origin: tuple[types.CodeType, int] | None

    def __init__(self, stats: Stats, prev: Cell | None = None, depth: int = 0) -> None:
        self.session = None
        self.origin = None
        self.stats = stats
        self.prev = prev
        self.depth = depth
        self.ended = False

    if _GIL:

        def take(self) -> t.Any:
            """Empty the cell and return what it held (``None`` when empty).

            Safe to race: of two threads taking at once (an owner's
            ``remove()`` and a server thread's end of the unit), exactly one
            gets the session. With the GIL no other thread runs between these
            two statements (no call, no allocation, no eval-breaker check);
            without it, a lock does the same.
            """
            session = self.session
            self.session = None
            return session

    else:  # pragma: no cover - free-threaded builds

        def take(self) -> t.Any:
            with _take_lock:
                session = self.session
                self.session = None
            return session

    def __del__(self) -> None:
        # Nobody else can reach a dying cell: no lock needed.
        session = self.session
        if session is None:
            return
        self.session = None
        try:
            # The real pid, not the cache: in a fork child the dead threads'
            # storage is released before any after-fork hook has run.
            if self.stats.pid != os.getpid():
                _inherited.append(session)
                return
            self.stats.reaped += 1
            logger.warning(
                "A session was closed by its cell's finalizer: %s ended without"
                " remove()%s. Call Session.remove() at its end, or use"
                " Session.scope() or an integration.",
                describe(getattr(self, "label", None), self.depth),
                origin_text(self.origin),
            )
            result = session.close()
            if inspect.isawaitable(result):
                # An async session in a sync registry: nothing here can await
                # its close(). Drop the coroutine quietly and say so.
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                logger.error(
                    "An async session was left without remove() and could not be"
                    " closed by a finalizer; use scoped_session.asyncio."
                    "AsyncScopedSession for async sessions."
                )
        except Exception:
            # A finalizer must not raise; the failure is logged, never lost.
            logger.exception("Closing a session left behind by its scope failed.")


def describe(label: object, depth: int = 0) -> str:
    """Name the scope a cell belonged to, from the label its maker gave it: a
    string as it is, a WSGI environ as its request, a callable as its job."""
    if label is None:
        return "a unit of work" if depth else "its thread or context"
    if isinstance(label, str):
        return label
    if isinstance(label, dict):
        method = label.get("REQUEST_METHOD", "?")
        path = label.get("SCRIPT_NAME", "") + label.get("PATH_INFO", "")
        return f"the request {method} {path}"
    name = getattr(label, "__qualname__", None) or type(label).__qualname__
    return f"the job {name}"


def origin_text(origin: tuple[types.CodeType, int] | None) -> str:
    """Where a session was made, from the code object and the offset of the
    instruction that made it."""
    if origin is None:
        return ""
    code, offset = origin
    line = next(
        (line for start, end, line in code.co_lines() if start <= offset < end),
        code.co_firstlineno,
    )
    return f" (its first session was made at {code.co_filename}:{line})"


class NoCell:
    """Stands for a cell where the caller has none: it holds nothing and takes
    nothing, so that the proxy reads ``slot.cell`` without a check first.
    Scopes whose slot answers with itself (the context scope, Flask's) make
    their slot a NoCell."""

    __slots__ = ()

    is_cell = False
    session = None
    depth = 0
    ended = False
    prev = None

    def take(self) -> None:
        return None


#: Stands where a scope has no cell for the caller, so that the proxy's read of
#: ``slot.cell.session`` gives ``None`` instead of raising.
EMPTY: t.Any = NoCell()


class Scope(t.Protocol):
    """What the proxy needs from a scope."""

    kind: str

    @property
    def release(self) -> t.Callable[[Cell], None] | None:
        """Called when ``remove()`` emptied the caller's cell outside any unit
        of work, to drop it; ``None`` for a scope that keeps empty cells for
        reuse (then nothing is called on that path at all)."""

    @property
    def slot(self) -> t.Any:
        """An object whose ``cell`` attribute is the caller's cell."""

    def get(self) -> Cell | None:
        """The caller's cell, or ``None``."""

    def install(self, cell: Cell | None) -> None:
        """Make ``cell`` the caller's cell (``None``: the caller has none)."""

    def cells(self) -> list[Cell]:
        """A snapshot of every live cell of this scope."""

    def reset(self) -> None:
        """Forget every cell without touching it (after ``os.fork()``)."""


class CellTracker:
    """Weak references to every cell a scope made, for ``remove_all()``.

    A plain set of weak references whose callback discards the dead ones: each
    operation is a single C call, atomic without a lock of our own, and cheap
    enough to pay once per unit of work.
    """

    __slots__ = ("_discard", "_refs")

    def __init__(self) -> None:
        self._refs: set[weakref.ref[Cell]] = set()
        self._discard = self._refs.discard

    def add(self, cell: Cell) -> None:
        self._refs.add(weakref.ref(cell, self._discard))

    def snapshot(self) -> list[Cell]:
        cells = [ref() for ref in list(self._refs)]
        return [cell for cell in cells if cell is not None]


class ThreadScope:
    """One cell per OS thread, in a ``threading.local``.

    The per-thread storage is released when its thread ends, before ``join()``
    returns, which drops the cell and closes a session nobody removed.
    """

    kind = "thread"
    #: An empty cell stays for reuse: get/remove cycles allocate nothing. It
    #: holds no session and goes away with its thread.
    release = None

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # With the speedups, a C slot in front of the threading.local reads the
        # thread's cell with one lookup; the threading.local still owns it.
        store = threading.local()
        self.slot = store if speedups is None else speedups.ThreadSlot(store)
        self._tracked = CellTracker()

    def get(self) -> Cell | None:
        try:
            cell: Cell = self.slot.cell
        except AttributeError:  # this thread has never had one
            return None
        return None if cell is EMPTY else cell

    def install(self, cell: Cell | None) -> None:
        if cell is None:
            # Set, not deleted: the next read stays on the fast path.
            self.slot.cell = EMPTY
        else:
            self._tracked.add(cell)
            self.slot.cell = cell

    def cells(self) -> list[Cell]:
        return self._tracked.snapshot()


class ContextScope:
    """One cell per ``contextvars`` context: a thread, an asyncio task, a greenlet."""

    kind = "context"
    release = None  # kept for reuse, as in ThreadScope; it dies with its context

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._var: contextvars.ContextVar[Cell] = contextvars.ContextVar("scoped_session_cell")
        # ``property(var.get)`` calls ``var.get(slot)``: the cell when one is set,
        # else the slot itself, whose ``session`` is None like EMPTY's. Either way
        # the lookup stays in C, like the thread scope's.
        slot_type = type(
            "ContextSlot", (NoCell,), {"__slots__": (), "cell": property(self._var.get)}
        )
        self.slot = slot_type()
        self._tracked = CellTracker()

    def get(self) -> Cell | None:
        cell = self._var.get(EMPTY)
        return None if cell is EMPTY else cell

    def install(self, cell: Cell | None) -> None:
        if cell is None:
            self._var.set(EMPTY)
        else:
            self._tracked.add(cell)
            self._var.set(cell)

    def cells(self) -> list[Cell]:
        return self._tracked.snapshot()


def _unhashable(key: object, scopefunc: object) -> TypeError:
    return TypeError(
        f"The scopefunc {scopefunc!r} returned an unhashable key of type"
        f" {type(key).__name__}. Return a hashable value that identifies the"
        " scope, such as a request object or an int."
    )


class KeyedScope:
    """One cell per key returned by a user's ``scopefunc`` (SQLAlchemy-compatible)."""

    kind = "scopefunc"

    def __init__(self, scopefunc: t.Callable[[], object]) -> None:
        self.scopefunc = scopefunc
        self.reset()

    def reset(self) -> None:
        self._cells: dict[object, Cell] = {}

    @property
    def slot(self) -> KeyedScope:
        return self

    @property
    def cell(self) -> t.Any:
        key = self.scopefunc()
        try:
            return self._cells.get(key, EMPTY)
        except TypeError:
            raise _unhashable(key, self.scopefunc) from None

    def get(self) -> Cell | None:
        key = self.scopefunc()
        try:
            return self._cells.get(key)
        except TypeError:
            raise _unhashable(key, self.scopefunc) from None

    def install(self, cell: Cell | None) -> None:
        key = self.scopefunc()
        try:
            if cell is None:
                self._cells.pop(key, None)
            else:
                self._cells[key] = cell
        except TypeError:
            raise _unhashable(key, self.scopefunc) from None

    def release(self, cell: Cell) -> None:
        # Keys can be unbounded (one per request): never keep an entry for one.
        key = self.scopefunc()
        if self._cells.get(key) is cell:
            del self._cells[key]

    def cells(self) -> list[Cell]:
        # A key's entry is its current cell only: a session made outside a unit
        # of work and shadowed by a unit lives on in that cell's ``prev``.
        found: list[Cell] = []
        for current in list(self._cells.values()):
            cell: Cell | None = current
            while cell is not None:
                found.append(cell)
                cell = cell.prev
        return found
