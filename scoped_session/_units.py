"""Units of work: a begin/end pair on the caller's cell.

Begin makes the cell fresh (or joins an open unit); end commits if asked, closes,
and empties that cell, also when it is ended from another thread than the one that
began it. Integrations are units of work opened and ended at their framework's true
boundaries, with :class:`UnitOfWork` and :func:`end_units` here (sync) or
``AsyncUnitOfWork`` (asyncio); how failures are handled is ``_ending.py``'s.
"""

from __future__ import annotations

import functools
import inspect
import typing as t

from ._arguments import sqlalchemy_module
from ._cells import Cell
from ._ending import end_sessions
from ._exceptions import ScopedSessionError
from ._registry import Registry

__all__ = ["QueryProperty", "UnitBase", "UnitOfWork", "end_units", "take_loose"]

S = t.TypeVar("S")
F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class UnitBase(t.Generic[S]):
    """What sync and async units share: opening the unit on the caller's cell,
    and the bookkeeping half of ending it (no I/O)."""

    __slots__ = ("_cell", "_open", "_registry", "commit", "committed", "joined", "label")

    def __init__(
        self, registry: Registry[t.Any], commit: bool = False, label: object = None
    ) -> None:
        # commit is checked where users pass it (Session.scope(), integrations).
        self._registry = registry
        self.commit = commit
        #: What the unit is for, named in warnings and logs: a string, a WSGI
        #: environ (its request), or a callable (its job).
        self.label = label
        self._cell: Cell | None = None
        #: Whether the unit joined one already open in the caller's scope.
        self.joined = False
        #: Whether end() committed the unit's session.
        self.committed = False
        # Popped exactly once by end(), whichever thread gets there first.
        self._open: list[bool] = []

    def start(self) -> t.Self:
        """Open the unit in the caller's scope; join an open one."""
        if self._cell is not None:
            raise ScopedSessionError(
                "This unit of work was already started; call Session.scope() for a new one."
            )
        registry = self._registry
        scope = registry._scope
        outer = scope.resolve()
        if outer is not None and scope.joins(outer):
            outer.depth += 1
            self._cell = outer
            self.joined = True
        else:
            # A session made outside any unit is shadowed, not adopted: the unit
            # starts fresh and the old session comes back when the unit ends.
            self._cell = cell = scope.new_cell(registry._stats, outer, 1, self.label)
            scope.install(cell)
        self._open.append(True)
        return self

    @property
    def active(self) -> bool:
        """Whether the unit was started and not yet ended."""
        return bool(self._open)

    @property
    def session(self) -> S | None:
        """The unit's session if one was made, without making one."""
        cell = self._cell
        session: S | None = None if cell is None else cell.session
        return session

    @property
    def where(self) -> object:
        """What the unit is for, for logs (its label, or a description)."""
        return self.label if self.label is not None else "a unit of work"

    def take_session(self) -> S | None:
        """Take the unit's session to close it, leaving the unit open (a worker
        thread's unit between jobs)."""
        cell = self._cell
        session: S | None = None if cell is None else cell.take_to_close()
        return session

    def detach(self, reaped: bool = False) -> tuple[bool, S | None]:
        """End the unit's bookkeeping: whether this call ended it (once, from any
        thread; a joined unit only leaves), and its session to end."""
        try:
            self._open.pop()
        except IndexError:
            return False, None
        cell = self._cell
        assert cell is not None
        if self.joined:
            if not cell.ended:
                cell.depth -= 1
            return False, None
        # Closed to newcomers first: a unit started meanwhile on the owner's side
        # gets a fresh cell, not this dying one.
        cell.depth = 0
        cell.ended = True
        session = cell.take_to_close(reaped=reaped)
        self._registry._scope.leave(cell)
        return True, session


class UnitOfWork(UnitBase[S]):
    """A unit of work of a sync registry: see ``ScopedSession.scope()``.

    Integrations use :meth:`start` and :meth:`end` directly. ``end()`` may be
    called from any thread (a WSGI server can close a response anywhere): it ends
    this unit, not the calling thread's, and calling it again does nothing.
    """

    __slots__ = ()

    def end(
        self,
        error: BaseException | None = None,
        *,
        commit: bool | None = None,
        reaped: bool = False,
    ) -> None:
        """End the unit: commit (when asked and ``error`` is None), close, forget.

        A joined unit only leaves. Failures follow ``_ending``'s policy: raised,
        unless ``error`` (the work's own exception) is given; then only logged.

        :param error: the exception the unit's work raised, if any.
        :param commit: overrides the unit's ``commit`` flag.
        :param reaped: the end comes from a backstop (a response never closed):
            counted in ``stats().reaped``, not ``removed``.
        """
        ended, session = self.detach(reaped)
        if not ended or session is None:
            return
        wanted = self.commit if commit is None else commit
        committed = end_sessions([session], commit=wanted, error=error, where=self.where)
        self.committed = committed > 0

    def __enter__(self) -> S:
        self.start()
        return t.cast("S", self._registry._current())

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.end(exc)

    def __call__(self, func: F) -> F:
        """Use the unit as a decorator: each call runs in a unit of its own."""
        registry, commit, label = self._registry, self.commit, self.label

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                unit: UnitOfWork[t.Any] = UnitOfWork(registry, commit, label).start()
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    unit.end(exc)
                    raise
                unit.end()
                return result

            return t.cast("F", async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            unit: UnitOfWork[t.Any] = UnitOfWork(registry, commit, label).start()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                unit.end(exc)
                raise
            unit.end()
            return result

        return t.cast("F", wrapper)


def end_units(
    units: t.Iterable[UnitBase[t.Any]],
    *,
    commit: bool,
    error: BaseException | None = None,
    where: object,
    reaped: bool = False,
    keep_open: bool = False,
) -> int:
    """End several sync units at once, by ``_ending``'s policy: commit their
    sessions in order (when ``commit`` and no ``error``), close all, raise the
    failure or a group of them unless ``error`` is given.

    :param where: what the units were for, for the log ("GET /notes").
    :param reaped: a backstop ends them (counted as reaped).
    :param keep_open: end only the units' sessions; the units stay open (a worker
        thread's units between jobs).
    """
    sessions = []
    for unit in units:
        if keep_open:
            session = unit.take_session()
        else:
            _, session = unit.detach(reaped)
        if session is not None:
            sessions.append(session)
    return end_sessions(sessions, commit=commit, error=error, where=where)


def take_loose(registry: Registry[t.Any]) -> t.Any:
    """Take the caller's session if it was made outside any unit of work, counted
    as removed, for the caller to end: what a job left behind after its unit ended
    (a Celery task's handlers). A session of an open unit is left alone."""
    cell, _ = registry._caller_cell()
    if cell is None or cell.depth:
        return None
    session = cell.take_to_close()
    registry._scope.release(cell)
    return session


class QueryProperty:
    """The descriptor made by ``ScopedSession.query_property()``."""

    def __init__(self, registry: Registry[t.Any], query_cls: type[t.Any] | None) -> None:
        self._registry = registry
        self._query_cls = query_cls

    def __get__(self, instance: object, owner: type[t.Any]) -> t.Any:
        sqlalchemy = sqlalchemy_module("sqlalchemy", "query_property()")
        mapper = sqlalchemy.inspect(owner, raiseerr=False)
        if mapper is None:
            raise ScopedSessionError(
                f"query_property() is on {owner.__name__}, which is not mapped by"
                " SQLAlchemy; put it on a mapped class (or its declarative base)."
            )
        session = self._registry._current()
        if self._query_cls is not None:
            return self._query_cls(mapper, session=session)
        return session.query(mapper)
