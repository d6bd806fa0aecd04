"""Scopes: where a registry finds the caller's cell.

A scope answers "which cell belongs to the caller right now?" and keeps track of
the cells it handed out, so that ``remove_all()`` can reach every one of them. The
registry (``_registry.py``) and units of work (``_proxy.py``) talk to scopes only
through :class:`Scope`; an integration with a scope of its own (Flask's
application context) implements it.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import sys
import threading
import types
import typing as t
import weakref

from ._cells import EMPTY, Cell, NoCell, ReapingCell, Stats

logger = logging.getLogger("scoped_session")
#: Makes a cell without calling its class (see ThreadScope.open()).
_new = object.__new__

__all__ = [
    "CellTracker",
    "ContextScope",
    "KeyedScope",
    "Scope",
    "ThreadScope",
]


class CellTracker:
    """Every live cell a scope made, for ``remove_all()`` and ``stats()``, each
    operation a single atomic call:

    - ``refs``: weak references that discard themselves when their cell dies.
      Where a cell is made per request, the scope adds it inline, with no call of
      Python code: ``tracked.refs.add(weakref.ref(cell, tracked.discard))``;
    - ``held``: the cells of units that their owner always ends (a WSGI
      request's, whose response is its backstop), held until the scope's
      ``leave()`` drops them: cheaper than a weak reference and its callback.
    """

    __slots__ = ("discard", "held", "refs")

    def __init__(self) -> None:
        self.refs: set[weakref.ref[Cell]] = set()
        self.discard = self.refs.discard
        self.held: set[Cell] = set()

    def add(self, cell: Cell) -> None:
        self.refs.add(weakref.ref(cell, self.discard))

    def snapshot(self) -> list[Cell]:
        cells = [ref() for ref in list(self.refs)]
        return [cell for cell in cells if cell is not None] + list(self.held)


class Scope:
    """Where a registry's cells live. Subclasses say where the caller's cell is
    kept (:attr:`slot`, :meth:`get`, :meth:`install`); the rest has defaults.

    The proxy's hot path reads ``scope.slot.cell.session``: ``slot`` is an object
    whose ``cell`` attribute is the caller's cell, or an object that holds no
    session (:data:`EMPTY`) when there is none. The read never raises.
    """

    #: Named by ``scope_kind`` and in messages.
    kind: str = "custom"
    #: Whether several threads can share a cell (a custom key): creation locks then.
    shared: bool = False
    #: Whether :meth:`claim` does anything, and the caller's cell needs
    #: :meth:`resolve` rather than a read of the slot: the registry's hot paths
    #: skip them otherwise.
    hooked: bool = False
    #: Whether :meth:`admit` is called before a session is made for the caller.
    admits: bool = False
    #: Whether a cell made outside a unit of work records where its session was
    #: made, for the warning if it is reaped (a scope whose cells are always ended
    #: by an integration has no use for it).
    records_origin: bool = True
    slot: t.Any
    tracked: CellTracker
    #: Whether :meth:`label` names anything (the registry skips the call).
    labels: bool = True
    #: Whether :meth:`release` does anything (``remove()`` skips the call).
    releases: bool = False
    #: The ``threading.local`` class the slot was made from, where it was made
    #: from one: see :meth:`ThreadScope.moved`.
    local_base: type[t.Any] | None = None

    def __init__(self) -> None:
        # Cells reach their scope weakly (see Cell.home); one reference serves all.
        self.ref = weakref.ref(self)
        self.reset()

    def reset(self) -> None:
        """Forget every cell without touching it (after ``os.fork()``)."""
        self.tracked = CellTracker()

    def get(self) -> Cell | None:
        """The caller's innermost cell, ended or not, or ``None``."""
        raise NotImplementedError

    def install(self, cell: Cell | None) -> None:
        """Make ``cell`` the caller's cell (``None``: the caller has none)."""
        raise NotImplementedError

    def release(self, cell: Cell) -> None:
        """``remove()`` emptied ``cell`` outside any unit of work: drop it, where
        keeping it would grow without bound (one entry per key)."""

    def resolve(self) -> Cell | None:
        """The caller's live cell, skipping units ended from another thread."""
        cell = current = self.get()
        while cell is not None and cell.ended:
            cell = cell.prev
        if cell is not current:
            self.install(cell)
        return cell

    def leave(self, cell: Cell) -> None:
        """A unit's ``cell`` ended: where it is the caller's, give back the cell it
        shadowed; elsewhere (a unit ended from another thread) the owner's next
        :meth:`resolve` does."""
        if self.get() is cell:
            self.install(cell.prev)
            cell.prev = None

    def joins(self, outer: Cell) -> bool:
        """Whether a unit started by the caller joins ``outer``, its live cell."""
        return outer.depth > 0

    def new_cell(self, stats: Stats, prev: Cell | None, depth: int, label: object) -> Cell:
        """A new cell for the caller, which :meth:`add_cell` installs."""
        return ReapingCell(stats, prev, depth, label, self.ref)

    def add_cell(self, stats: Stats, prev: Cell | None, depth: int, label: object) -> Cell:
        """A new cell, installed as the caller's (a scope may do both in one step)."""
        cell = self.new_cell(stats, prev, depth, label)
        self.install(cell)
        return cell

    def moved(self) -> None:
        """``threading.local`` is no longer the class the slot was made from: see
        :meth:`ThreadScope.moved`."""

    def open(self, stats: Stats, label: object, request: bool) -> Cell:
        """Open a unit on the caller's slot (see ``_registry.open_unit()``): join
        the caller's open unit, or install a fresh cell that shadows what the
        caller had."""
        outer = self.resolve()
        if outer is not None and self.joins(outer) and not (request and outer.handed):
            outer.depth += 1
            return outer
        return self.add_cell(stats, outer, 1, label)

    def admit(self) -> dict[str, t.Any] | None:
        """Called before a session is made for the caller (when :attr:`admits`):
        raise where nobody would end it (Flask: no application context), else
        return keyword arguments for the factory, under the caller's own (a Flask
        app's engine as ``bind``), or ``None``. The dict is never mutated."""
        return None

    def claim(self, cell: Cell, session: object) -> None:
        """The caller reached ``cell``'s session (``None``: about to fill it) on
        the slow path (when :attr:`hooked`); asyncio checks that no other task is
        using it."""

    def label(self) -> object:
        """Name the caller's scope, for a cell made outside a unit of work: a
        string, or an object that formats itself when a warning needs it."""
        return f"the {self.kind} scope of the thread {threading.current_thread().name!r}"

    def track(self, cell: Cell) -> None:
        self.tracked.add(cell)

    def cells(self) -> list[Cell]:
        """A snapshot of every live cell of this scope."""
        return self.tracked.snapshot()


#: The thread scope's slot class for each ``threading.local`` class: gevent and
#: eventlet replace ``threading.local`` when they patch, so the class is made from
#: whichever one is current when a registry needs a slot, never at import.
_slot_classes: dict[type[t.Any], type[t.Any]] = {}
_slot_lock = threading.Lock()
#: Whether the move to a patched ``threading.local`` was logged (once a process).
_moved_logged = False


def _thread_slot() -> t.Any:
    """A new per-thread slot, made from the current ``threading.local``. A thread
    that never set ``cell`` reads the class attribute, so the first read in a new
    thread needs no ``try``."""
    base = threading.local
    cls = _slot_classes.get(base)
    if cls is None:
        with _slot_lock:
            cls = _slot_classes.setdefault(base, type("ThreadSlot", (base,), {"cell": EMPTY}))
    return cls()


class ThreadScope(Scope):
    """One cell per thread, in a ``threading.local``: per greenlet under a server
    that patches threads (gevent, eventlet).

    The per-thread storage is released when its thread ends, before ``join()``
    returns, which drops the cell and closes a session nobody removed. An empty
    cell stays for reuse: get/remove cycles allocate nothing.
    """

    kind = "thread"

    def reset(self) -> None:
        super().reset()
        self.local_base = threading.local
        self.slot = _thread_slot()

    def moved(self) -> None:
        """``threading.local`` was replaced (gevent or eventlet patched threads)
        after this scope's slot was made from the original: every greenlet of a
        thread would share its cell. Move to a slot of the patched class; what the
        old one held is dropped with it (each thread's cells close their sessions
        as a thread that ended does)."""
        global _moved_logged
        if not _moved_logged:
            _moved_logged = True
            logger.warning(
                "threading.local was replaced after a thread-scoped ScopedSession was"
                " made (gevent or eventlet patched threads late): its sessions now live"
                " per greenlet. Patch first (gevent.monkey.patch_all() before other"
                " imports), or see docs/greenlets.md."
            )
        self.local_base = threading.local
        self.slot = _thread_slot()

    def get(self) -> Cell | None:
        cell = self.slot.cell
        return cell if cell.is_cell else None

    def install(self, cell: Cell | None) -> None:
        if cell is None:
            # Set, not deleted: the next read stays on the fast path.
            self.slot.cell = EMPTY
        else:
            self.tracked.add(cell)
            self.slot.cell = cell

    # open(), resolve() and leave() read the slot directly: every WSGI request
    # and thread job opens and ends a unit, and the base's calls through
    # get()/install() are most of that bookkeeping.

    def open(self, stats: Stats, label: object, request: bool) -> Cell:
        slot = self.slot
        found: Cell | NoCell = slot.cell
        outer: Cell | None
        if found.ended:
            outer = super().resolve()
        elif found.is_cell:
            outer = found  # type: ignore[assignment]  # a Cell (not a cast, a call)
        else:
            outer = None
        if outer is not None and outer.depth > 0 and not (request and outer.handed):
            outer.depth += 1
            return outer
        if request:
            # Its WSGI response ends it, also when the response is collected
            # without close(): no finalizer and no weak reference are needed.
            # Cell.__init__(), inline: every WSGI request comes here.
            cell = _new(Cell)
            cell.session = None
            cell.stats = stats
            cell.prev = outer
            cell.depth = 1
            cell.ended = False
            cell.handed = False
            cell.label = label
            cell.origin = None
            cell.home = self.ref
            self.tracked.held.add(cell)
        else:
            cell = ReapingCell(stats, outer, 1, label, self.ref)
            tracked = self.tracked  # CellTracker.add(), inline
            tracked.refs.add(weakref.ref(cell, tracked.discard))
        slot.cell = cell
        return cell

    def resolve(self) -> Cell | None:
        cell = self.slot.cell
        if not cell.ended:  # the common case: a live cell, or none (EMPTY)
            return cell if cell.is_cell else None
        return super().resolve()

    def leave(self, cell: Cell) -> None:
        self.tracked.held.discard(cell)  # a request's cell (see open())
        slot = self.slot
        if slot.cell is cell:
            # The shadowed cell was tracked when it was installed first.
            prev = cell.prev
            slot.cell = EMPTY if prev is None else prev
            cell.prev = None

    def label(self) -> str:
        return f"the thread {threading.current_thread().name!r}"


#: One context variable for every context-scoped registry: in each context, the
#: cells of the registries used there, by scope number. A variable per registry
#: would stay in every context that ever used it (a context keeps its variables)
#: long after the registry is gone.
_CELLS: contextvars.ContextVar[t.Mapping[int, Cell]] = contextvars.ContextVar(
    "scoped_session_cells"
)
_NO_CELLS: t.Mapping[int, Cell] = types.MappingProxyType({})
#: Scope numbers are never reused, unlike id().
_numbers = itertools.count()
#: The numbers of the live context scopes: a context drops the others' cells the
#: next time it changes its own.
_live: set[int] = set()


def _drop_scope(number: int, tracked: CellTracker) -> None:
    """A context scope was collected: close what its cells still hold, wherever
    they are (contexts that have not ended keep them until they next change)."""
    _live.discard(number)
    for cell in tracked.snapshot():
        cell.reap_now()


class _ContextSlot(NoCell):
    """The context scope's slot: ``cell`` is the scope's cell in the current
    context, or the slot itself, which holds nothing."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number

    @property
    def cell(self) -> Cell | NoCell:
        return _CELLS.get(_NO_CELLS).get(self.number, self)


class ContextScope(Scope):
    """One cell per ``contextvars`` context: a thread, an asyncio task, a greenlet."""

    kind = "context"
    releases = True

    def reset(self) -> None:
        super().reset()
        self.number = number = next(_numbers)
        _live.add(number)
        weakref.finalize(self, _drop_scope, number, self.tracked)
        self.slot = _ContextSlot(number)

    def get(self) -> Cell | None:
        return _CELLS.get(_NO_CELLS).get(self.number)

    def install(self, cell: Cell | None) -> None:
        # A new mapping each time: the one in place may be shared with the
        # contexts copied from this one (tasks, threads), which keep theirs.
        number = self.number
        cells = {n: c for n, c in _CELLS.get(_NO_CELLS).items() if n != number and n in _live}
        if cell is not None:
            self.track(cell)
            cells[number] = cell
        _CELLS.set(cells)

    def release(self, cell: Cell) -> None:
        if self.get() is cell:
            self.install(None)

    def label(self) -> str:
        thread = threading.current_thread().name
        task = _current_task()
        if task is not None:
            return f"the task {task.get_name()!r} (thread {thread!r})"
        return f"a context of the thread {thread!r}"


def _current_task() -> t.Any:
    # No task can run unless asyncio was imported: never import it here.
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None


class _KeyedSlot(NoCell):
    """The keyed scope's slot: ``cell`` is the cell of the scopefunc's current key.
    Apart from its scope, so that the scope is in no reference cycle."""

    __slots__ = ("cells", "scopefunc")

    def __init__(self, scopefunc: t.Callable[[], object]) -> None:
        self.scopefunc = scopefunc
        self.cells: dict[object, Cell] = {}

    def key(self) -> object:
        key = self.scopefunc()
        try:
            hash(key)
        except TypeError:
            raise self.unhashable(key) from None
        return key

    def unhashable(self, key: object) -> TypeError:
        return TypeError(
            f"The scopefunc {self.scopefunc!r} returned an unhashable key of type"
            f" {type(key).__name__}. Return a hashable value that identifies the"
            " scope, such as a request object or an int."
        )

    @property
    def cell(self) -> Cell | NoCell:
        # The proxy's hot path: the dict lookup hashes the key anyway.
        key = self.scopefunc()
        try:
            return self.cells[key]
        except KeyError:  # the slot itself holds nothing
            return self
        except TypeError:
            raise self.unhashable(key) from None


class KeyedScope(Scope):
    """One cell per key returned by a user's ``scopefunc`` (SQLAlchemy-compatible)."""

    kind = "scopefunc"
    shared = True
    releases = True
    slot: _KeyedSlot

    def __init__(self, scopefunc: t.Callable[[], object]) -> None:
        self.scopefunc = scopefunc
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.slot = _KeyedSlot(self.scopefunc)

    def get(self) -> Cell | None:
        slot = self.slot
        return slot.cells.get(slot.key())

    def install(self, cell: Cell | None) -> None:
        slot = self.slot
        key = slot.key()
        if cell is None:
            slot.cells.pop(key, None)
        else:
            slot.cells[key] = cell

    def release(self, cell: Cell) -> None:
        # Keys can be unbounded (one per request): never keep an entry for one.
        slot = self.slot
        key = slot.key()
        if slot.cells.get(key) is cell:
            del slot.cells[key]

    def label(self) -> str:
        return f"a scopefunc scope (thread {threading.current_thread().name!r})"

    def cells(self) -> list[Cell]:
        # A key's entry is its current cell only: a session made outside a unit of
        # work and shadowed by a unit lives on in that cell's ``prev``.
        found: list[Cell] = []
        for current in list(self.slot.cells.values()):
            cell: Cell | None = current
            while cell is not None:
                found.append(cell)
                cell = cell.prev
        return found
