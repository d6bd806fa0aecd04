"""Cells: the unit of work, a slot that holds at most one session.

A cell is what a request, job, task or thread gets from each registry: one small
object, opened on the caller's slot by ``_registry.open_unit()`` and ended exactly
once by :meth:`Cell.detach` (called by ``_ending``), from any thread. A scope
(``_scopes.py``) hands each thread, context, key or request a cell of its own. The
identity of a scope's entry is the cell object, never a key that can be reused:
not ``id()`` of anything, not a thread ident. A :class:`ReapingCell`, what scopes
make, that is dropped while it still holds a session (its thread ended, its context
was collected) hands it to :meth:`Cell.reap`; a cell inherited through ``os.fork()``
never does, because closing would talk on the parent's sockets. A WSGI request's
cell is a plain :class:`Cell`: its response is its backstop.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
import typing as t

__all__ = [
    "EMPTY",
    "GIL",
    "Cell",
    "Home",
    "NoCell",
    "ReapingCell",
    "Stats",
    "describe",
    "origin_text",
]

logger = logging.getLogger("scoped_session")

#: Sessions inherited through ``os.fork()`` whose cells died in the child. They are
#: kept alive on purpose: finalizing them (SQLAlchemy returns a collected connection
#: to its pool with a rollback) would talk on the parent's sockets.
_inherited: list[object] = []

#: Whether the GIL serializes threads (a free-threaded build can turn it on at run
#: time, never off): :meth:`Cell.take` needs a lock of its own without it.
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
_take_lock = threading.Lock()


class Stats:
    """Counters shared by a registry and its cells.

    Kept apart from the registry so that a cell can count its own reaping without
    holding a reference to the registry (that would make a reference cycle
    through the thread-local storage).
    """

    __slots__ = ("created", "pid", "reaped", "removed")

    def __init__(self) -> None:
        #: The process whose sessions these are: a cell whose stats name another
        #: process was inherited through os.fork().
        self.pid = os.getpid()
        self.created = 0
        self.removed = 0
        self.reaped = 0


class Home(t.Protocol):
    """What a cell needs of its scope when its unit ends: give the caller back the
    cell it shadowed."""

    def leave(self, cell: Cell) -> None: ...


class Cell:
    """A slot that holds at most one session (``None`` while empty), and the unit of
    work opened on it.

    ``depth`` counts the units open on the cell (0: a session made outside any
    unit; 2 or more: units that joined it). An ended unit's cell keeps ``prev``,
    the cell it shadowed, so that the owner gets it back even when the unit was
    ended from another thread. ``home`` reaches its scope weakly: the scope's
    storage holds the cell, and a strong reference back would make a cycle that
    only the garbage collector could free. ``handed`` marks a unit handed over to
    a response that outlives the call that opened it: a later request's unit on
    the same slot never joins it.
    """

    __slots__ = (
        "__weakref__",
        "depth",
        "ended",
        "handed",
        "home",
        "label",
        "origin",
        "prev",
        "session",
        "stats",
    )

    session: t.Any
    #: What the cell is for (a thread's name, a WSGI environ, a job), for the reap
    #: warning.
    label: object
    #: Where its session was made outside a unit of work: (code, offset of
    #: the instruction), or None.
    origin: tuple[types.CodeType, int] | None

    #: A real cell, as opposed to :data:`EMPTY`.
    is_cell = True

    def __init__(
        self,
        stats: Stats,
        prev: Cell | None = None,
        depth: int = 0,
        label: object = None,
        home: t.Callable[[], Home | None] | None = None,
    ) -> None:
        self.session = None
        self.stats = stats
        self.prev = prev
        self.depth = depth
        self.ended = False
        self.handed = False
        self.label = label
        self.origin = None
        self.home = home

    def detach(self, reaped: bool = False) -> t.Any:
        """End the unit's bookkeeping and return its session for the caller to end
        (``None``: nothing to end). A joined unit only leaves; the outermost one
        empties the cell and gives the owner back the cell it shadowed, from any
        thread. Calling it again returns ``None``.

        :param reaped: a backstop ends it (counted in ``stats().reaped``).
        """
        depth = self.depth
        if depth > 1:
            self.depth = depth - 1
            return None
        if self.ended:
            return None
        # Closed to newcomers first: a unit started meanwhile on the owner's side
        # gets a fresh cell, not this dying one.
        self.depth = 0
        self.ended = True
        # take_to_close(), inline: every request, job and unit ends here.
        if GIL:
            session = self.session
            self.session = None
        else:  # pragma: no cover - free-threaded builds
            session = self.take()
        if session is not None:
            if reaped:
                self.stats.reaped += 1
            else:
                self.stats.removed += 1
        home = self.home
        scope = None if home is None else home()
        if scope is not None:
            scope.leave(self)
        return session

    if GIL:

        def take(self) -> t.Any:
            """Empty the cell and return what it held (``None`` when empty).

            Safe to race: of two threads taking at once (an owner's ``remove()``
            and a server thread's end of the unit), exactly one gets the session.
            With the GIL no other thread runs between these two statements (no
            call, no allocation, no check of the eval breaker); without it, a
            lock does the same.
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

    def take_to_close(self, *, reaped: bool = False) -> t.Any:
        """:meth:`take`, counted in the registry's stats as removed (or reaped, for
        a backstop) when there was a session: its taker is about to close it.
        :meth:`detach` inlines it, and where the GIL makes the two lines atomic,
        :meth:`take` is inlined here."""
        if GIL:
            session = self.session
            self.session = None
        else:  # pragma: no cover - free-threaded builds
            session = self.take()
        if session is not None:
            if reaped:
                self.stats.reaped += 1
            else:
                self.stats.removed += 1
        return session

    def reap(self, session: t.Any) -> None:
        """Close a session whose cell was dropped without ``remove()``."""
        try:
            logger.warning(
                "A session was closed by its cell's finalizer: %s ended without remove()%s."
                " Call Session.remove() at its end, or use Session.scope() or an integration.",
                describe(self.label, self.depth),
                origin_text(self.origin),
            )
        finally:
            # Closed even where logging fails (a greenlet finalized at exit, whose
            # current_thread() raises).
            session.close()

    def reap_now(self) -> None:
        """Close the cell's session, if any, as its finalizer would (its registry
        is gone while the cell lives on, in a context that has not ended)."""
        session = self.take()
        if session is not None:
            self._reap_taken(session)

    def _reap_taken(self, session: t.Any) -> None:
        try:
            # The real pid, not a cache: in a fork child the dead threads' storage
            # is released before any after-fork hook has run.
            if self.stats.pid != os.getpid():
                _inherited.append(session)
                return
            self.stats.reaped += 1
            self.reap(session)
        except Exception:
            # A finalizer must not raise; the failure is logged, never lost.
            logger.exception("Closing a session left behind by its scope failed.")


class ReapingCell(Cell):
    """A cell that closes its session when it is dropped still holding one: its
    thread ended, its context was collected, its unit's owner was lost. Every
    scope makes these, except for a WSGI request's unit, whose response is its
    backstop (it ends the unit when it is collected without ``close()``): a
    finalizer less per request."""

    __slots__ = ()

    def __del__(self) -> None:
        # Nobody else can reach a dying cell: no lock needed.
        session = self.session
        if session is not None:
            self.session = None
            self._reap_taken(session)


def describe(label: object, depth: int = 0) -> str:
    """Name the scope a cell belonged to, from the label its maker gave it: a
    callable as its job, anything else as its ``str()`` (an integration's label
    object formats itself only when a message needs it)."""
    if label is None:
        return "a unit of work" if depth else "its thread or context"
    if callable(label):
        name = getattr(label, "__qualname__", None) or type(label).__qualname__
        return f"the job {name}"
    return str(label)


def origin_text(
    origin: tuple[types.CodeType, int] | None, text: str = " (its session was made at {})"
) -> str:
    """Where a session was made, from the code object and instruction offset, in
    ``text`` (``""`` when unknown)."""
    if origin is None:
        return ""
    code, offset = origin
    line = next(
        (line for start, end, line in code.co_lines() if start <= offset < end),
        code.co_firstlineno,
    )
    return text.format(f"{code.co_filename}:{line}")


class NoCell:
    """Stands for a cell where the caller has none: it holds nothing, so that the
    proxy reads ``slot.cell.session`` without a check first."""

    __slots__ = ()

    is_cell = False
    session = None
    depth = 0
    ended = False
    prev = None


#: Where a scope has no cell for the caller.
EMPTY: t.Any = NoCell()
