"""Units of work, and the registry and query helpers of a ScopedSession.

A unit of work is a begin/end pair on the caller's cell: begin makes the cell
fresh, end commits if asked, closes, and empties that cell, also when it is
ended from another thread than the one that began it. Integrations are units of
work opened and ended at their framework's true boundaries.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing as t

from ._exceptions import ScopedSessionError
from ._scopes import Cell

if t.TYPE_CHECKING:
    from ._proxy import ScopedSession

__all__ = ["QueryProperty", "UnitOfWork"]

logger = logging.getLogger("scoped_session")


class _Closeable(t.Protocol):
    def close(self) -> object: ...


S = t.TypeVar("S", bound=_Closeable)
F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def close_keeping_first(
    session: _Closeable, failure: BaseException | None, error: BaseException | None
) -> BaseException | None:
    """Close ``session`` and return the failure its caller is to raise: the one
    it already had, else this close's own. When ``error`` (the work's own
    exception) is given, or there is a failure already, a failed close is
    logged instead: the first failure is never hidden."""
    try:
        session.close()
    except Exception as exc:
        if failure is None and error is None:
            return exc
        logger.error("Closing a session failed after an error.", exc_info=True)
    return failure


class _Registry(t.Generic[S]):
    """``Session.registry``: the caller's slot, SQLAlchemy-compatible."""

    def __init__(self, scoped: ScopedSession[S]) -> None:
        self._scoped = scoped

    def __call__(self) -> S:
        """The caller's session, made on first use."""
        return self._scoped()

    def has(self) -> bool:
        """Whether the caller has a session."""
        cell = self._scoped._resolve()
        return cell is not None and cell.session is not None

    def set(self, obj: S) -> None:
        """Make ``obj`` the caller's session; one already there is forgotten,
        not closed."""
        scoped = self._scoped
        cell = scoped._resolve()
        if cell is None:
            cell = Cell(scoped._stats)
            scoped._scope.install(cell)
        cell.session = obj

    def clear(self) -> None:
        """Forget the caller's session without closing it."""
        self._scoped._forget()


class UnitOfWork(t.Generic[S]):
    """A begin/end pair on the caller's cell: see :meth:`ScopedSession.scope`.

    Integrations use :meth:`start` and :meth:`end` directly. ``end()`` may be
    called from any thread (a WSGI server can close a response anywhere): it
    ends this unit, not the calling thread's, and calling it again does nothing.
    """

    __slots__ = ("_cell", "_label", "_open", "_scoped", "commit", "committed", "joined")

    def __init__(
        self, scoped: ScopedSession[S], commit: bool = False, label: object = None
    ) -> None:
        self._scoped = scoped
        self.commit = commit
        #: What the unit is for, named in a reap warning: a string, a WSGI
        #: environ (its request), or a callable (its job).
        self._label = label
        self._cell: Cell | None = None
        self.joined = False
        #: Whether end() committed the unit's session (a later close() may
        #: still have failed).
        self.committed = False
        # Popped exactly once by end(), whichever thread gets there first.
        self._open: list[bool] = []

    def start(self) -> UnitOfWork[S]:
        """Open the unit in the caller's scope; join an open one."""
        if self._cell is not None:
            raise ScopedSessionError(
                "This unit of work was already started; call Session.scope() for a new one."
            )
        scoped = self._scoped
        scope = scoped._scope
        outer = scope.get()
        if outer is not None and outer.ended:
            outer = scoped._resolve()
        if outer is not None and outer.depth:
            outer.depth += 1
            self._cell = outer
            self.joined = True
        else:
            # A session made outside any unit is shadowed, not adopted: the unit
            # starts fresh and the old session comes back when the unit ends.
            self._cell = cell = Cell(scoped._stats, outer, 1)
            if self._label is not None:
                cell.label = self._label
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
        return None if cell is None else cell.session

    def end(
        self,
        error: BaseException | None = None,
        *,
        commit: bool | None = None,
        reaped: bool = False,
    ) -> None:
        """End the unit: commit (when asked and ``error`` is None), close, forget.

        A joined unit only leaves. A failed commit or close is logged and raised,
        unless ``error`` (the work's own exception) is given: that one is never
        hidden, and the caller re-raises it.

        :param error: the exception the unit's work raised, if any.
        :param commit: overrides the unit's ``commit`` flag.
        :param reaped: the end comes from a backstop (a response never closed,
            a stale unit): counted in ``stats().reaped``, not ``removed``.
        """
        try:
            self._open.pop()
        except IndexError:
            return
        cell = self._cell
        assert cell is not None
        if self.joined:
            cell.depth -= 1
            return
        # Closed to newcomers before the commit runs: a unit started meanwhile on
        # the owner's thread must get a fresh cell, not join this dying one.
        cell.depth = 0
        cell.ended = True
        if commit is None:
            commit = self.commit
        failure: BaseException | None = None
        session = cell.session
        try:
            if session is not None and commit and error is None:
                session.commit()
                self.committed = True
        except BaseException as exc:
            failure = exc
        finally:
            session = cell.take()
            self._finish(cell)
            if session is not None:
                if reaped:
                    self._scoped._stats.reaped += 1
                else:
                    self._scoped._stats.removed += 1
                failure = close_keeping_first(session, failure, error)
        if failure is not None:
            if error is not None:
                logger.error("Ending a unit of work failed.", exc_info=failure)
            else:
                raise failure

    def _finish(self, cell: Cell) -> None:
        cell.depth = 0
        cell.ended = True
        scope = self._scoped._scope
        # On the owner's thread/context give the shadowed cell back at once;
        # elsewhere the owner's next lookup does it (see ScopedSession._resolve).
        if scope.get() is cell:
            scope.install(cell.prev)
            cell.prev = None

    def __enter__(self) -> S:
        self.start()
        return self._scoped()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.end(exc)

    def __call__(self, func: F) -> F:
        """Use the unit as a decorator: each call runs in a unit of its own."""
        scoped, commit = self._scoped, self.commit

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
                unit = UnitOfWork(scoped, commit).start()
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
            unit = UnitOfWork(scoped, commit).start()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                unit.end(exc)
                raise
            unit.end()
            return result

        return t.cast("F", wrapper)


class QueryProperty:
    """The descriptor made by :meth:`ScopedSession.query_property`."""

    def __init__(self, scoped: ScopedSession[t.Any], query_cls: type[t.Any] | None) -> None:
        self._scoped = scoped
        self._query_cls = query_cls

    def __get__(self, instance: object, owner: type[t.Any]) -> t.Any:
        from sqlalchemy import inspect as sa_inspect  # only users of this need SQLAlchemy

        mapper = sa_inspect(owner, raiseerr=False)
        if mapper is None:
            raise ScopedSessionError(
                f"query_property() is on {owner.__name__}, which is not mapped by"
                " SQLAlchemy; put it on a mapped class (or its declarative base)."
            )
        session = self._scoped()
        if self._query_cls is not None:
            return self._query_cls(mapper, session=session)
        return session.query(mapper)
