"""asyncio: a session per task, awaited at the end.

::

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from scoped_session.asyncio import AsyncScopedSession

    Session = AsyncScopedSession(async_sessionmaker(create_async_engine(url)))

    async def handler():
        async with Session.scope(commit=True):         # a unit of work
            Session.add(Note(text="hi"))               # plain methods stay plain
            await Session.execute(sa.select(Note))     # async ones are awaited
        # committed, closed and forgotten here, also if the block raised or was cancelled

How sessions are scoped:

- **A session per task.** Each task that uses the proxy gets a session of its own,
  made on first use; a task never sees a session that another task made outside a
  unit of work, not even its parent's. ``await Session.remove()`` closes it; a task
  that ends without ``remove()`` has it closed right after, on its own event loop
  (a warning is logged), so nothing is left behind, and the registry holds no
  reference to any task.
- **A unit of work is shared with the tasks started inside it, while it is open.**
  ``async with Session.scope():`` (or the ASGI middleware) opens a unit in the
  current task; tasks started while it is open see the unit's session until the unit
  ends, then they get sessions of their own. A ``scope()`` nested in the same task
  joins the open unit; ``scope()`` in another task always opens a unit of its own,
  which is how concurrent tasks each get their own session.
- **Two tasks at once are detected.** When a task reaches a shared unit's session
  through the proxy while another task is inside one of the session's methods, a
  :class:`ConcurrentUseWarning` is emitted, or with ``strict=True`` a
  :class:`ConcurrentUseError` is raised. A session passed around by reference, or
  coroutines made in one task and awaited in others, are not seen.
- **Units always finish.** Ending a unit (commit, then close) runs to its end even
  when the task is cancelled meanwhile; the cancellation is re-raised after.
- **A custom key.** ``AsyncScopedSession(factory, scopefunc)`` keeps a session per
  key instead, as SQLAlchemy's ``async_scoped_session`` does; end them with
  ``await Session.remove()``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing as t

from ._arguments import check_flag, sqlalchemy_module
from ._async_session_api import AsyncSessionProxy
from ._ending import end_sessions_async
from ._exceptions import ConcurrentUseError
from ._proxy import UnitBase
from ._registry import Registry, SessionStats
from ._scopes import Scope
from ._tasks import (
    SHARED,
    AsyncCell,
    AsyncKeyedScope,
    ConcurrentUseWarning,
    TaskScope,
    busy_elsewhere,
    owner,
    run_to_end,
)

__all__ = [
    "AsyncScopedSession",
    "AsyncUnitOfWork",
    "ConcurrentUseError",
    "ConcurrentUseWarning",
    "SessionStats",
]


class _AsyncCloseable(t.Protocol):
    def close(self) -> t.Awaitable[object]: ...


AS = t.TypeVar("AS", bound=_AsyncCloseable)
F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class AsyncScopedSession(Registry[AS], AsyncSessionProxy):  # type: ignore[misc]
    """A registry of async sessions, one per asyncio task (or per custom key), and a
    proxy to the caller's session.

    :param session_factory: makes a new session whose ``close()`` is a coroutine;
        usually a :class:`sqlalchemy.ext.asyncio.async_sessionmaker`.
    :param scopefunc: returns a hashable key for the caller's scope; a session is
        kept per key (as SQLAlchemy's ``async_scoped_session``). Without it, or
        with ``asyncio.current_task``, a session per task, as described in the
        module documentation.
    :param scope: ``"context"``, the only one (a session per task).
    :param strict: raise :class:`ConcurrentUseError` instead of warning when two
        tasks use one session at the same time.
    """

    _NAME = "AsyncScopedSession"
    _SCOPES = ("context",)
    _ASYNC = True

    def __init__(
        self,
        session_factory: t.Callable[..., AS],
        scopefunc: t.Callable[[], object] | None = None,
        *,
        scope: str | None = None,
        strict: bool = False,
    ) -> None:
        self.strict = check_flag(strict, "strict")
        #: The scopefunc as given, as SQLAlchemy's async_scoped_session keeps it.
        self.scopefunc = scopefunc
        if scopefunc is asyncio.current_task:
            # What SQLAlchemy's async_scoped_session is usually given: a session
            # per task is this registry's own scope, which also closes what a task
            # leaves behind (a dict keyed by tasks would keep them).
            scopefunc = None
        super().__init__(session_factory, scopefunc, scope=scope)

    def _factory_hint(self) -> str:
        return "sqlalchemy.ext.asyncio.async_sessionmaker(engine)"

    def _scope_help(self) -> str:
        return (
            "AsyncScopedSession supports scope='context' (a session per asyncio task);"
            " for a session per thread use scoped_session.ScopedSession"
        )

    def _make_scope(self, name: str) -> Scope:
        return TaskScope(self.strict)

    def _keyed_scope(self, scopefunc: t.Callable[[], object]) -> Scope:
        return AsyncKeyedScope(scopefunc)

    def _wrong_kind(self) -> str:
        return (
            "AsyncScopedSession got a factory of sync sessions (their close() is not a"
            " coroutine function); awaiting them fails. Pass an"
            " sqlalchemy.ext.asyncio.async_sessionmaker(async_engine), or use"
            " scoped_session.ScopedSession for sync sessions."
        )

    @classmethod
    def _session_class(cls) -> type[t.Any]:
        module = sqlalchemy_module(
            "sqlalchemy.ext.asyncio", f"{cls.__name__}.object_session() or identity_key()"
        )
        return t.cast("type[t.Any]", module.AsyncSession)

    async def remove(self) -> None:
        """Close the caller's session, if any, and forget it.

        The session is forgotten first, so it is gone even when ``close()``
        raises; that error propagates. Inside a unit of work the unit stays open
        and the next use makes a new session, which the unit will end.
        """
        session = self._take()
        if session is not None:
            self._stats.removed += 1
            await session.close()

    async def remove_all(self) -> int:
        """Close and forget every session of this registry, in every task (for
        shutdown, on the loop the sessions belong to). Returns how many were closed.

        Every session is closed even if some fail; each failure is logged, and the
        failure (or a group of them) is raised.
        """
        sessions = self._take_all()
        await end_sessions_async(sessions, where="remove_all()")
        return len(sessions)

    def scope(self, commit: bool = False) -> AsyncUnitOfWork[AS]:
        """A unit of work: an async context manager and a decorator of coroutine
        functions.

        The caller's task gets a fresh session for the unit (made on first use),
        shared with the tasks it starts while the unit is open. At the end of the
        outermost unit it is committed (when ``commit`` is true and nothing
        raised), closed and forgotten, also when the task is cancelled meanwhile.
        A unit opened inside another one in the same task joins it; in another task
        it is a unit of its own.

        ::

            async with Session.scope(commit=True) as session:
                session.add(obj)

            @Session.scope(commit=True)
            async def job(): ...
        """
        if callable(commit):
            raise TypeError(
                "scope() takes commit=True/False, not a function: decorate with"
                " @Session.scope() (with parentheses)."
            )
        check_flag(commit, "commit")
        return AsyncUnitOfWork(self, commit)


class AsyncUnitOfWork(UnitBase[AS]):
    """A begin/end pair on the caller's task: see :meth:`AsyncScopedSession.scope`.

    Integrations use :meth:`start` and :meth:`end` directly. ``end()`` may be
    awaited from any task: it ends this unit, and awaiting it again does nothing.
    """

    __slots__ = ()

    async def end(self, error: BaseException | None = None, *, commit: bool | None = None) -> None:
        """End the unit: commit (when asked and ``error`` is None), close, forget.

        A joined unit only leaves. The commit and the close run to their end even
        if the caller is cancelled meanwhile (the cancellation is re-raised after).
        Failures follow ``_ending``'s policy: raised, unless ``error`` (the work's
        own exception) is given; then only logged.

        :param error: the exception the unit's work raised, if any.
        :param commit: overrides the unit's ``commit`` flag.
        """
        cell = self._cell
        shared = isinstance(cell, AsyncCell) and cell.gate is SHARED
        ended, session = self._detach()
        if not ended or session is None:
            return
        scope = self._registry._scope
        busy = None
        me = owner()
        if shared and me is not None and isinstance(scope, TaskScope):
            busy = busy_elsewhere(t.cast("AsyncCell", cell), me, session)
            if busy is not None and not scope.strict:
                scope.report(busy)
        wanted = self.commit if commit is None else commit
        committed = await run_to_end(
            end_sessions_async([session], commit=wanted, error=error, where=self.where)
        )
        self.committed = committed > 0
        if busy is not None and isinstance(scope, TaskScope):
            scope.report(busy)  # strict: raised once the unit is over

    async def __aenter__(self) -> AS:
        self.start()
        return t.cast("AS", self._registry._current())

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.end(exc)

    def __enter__(self) -> t.NoReturn:
        raise TypeError(
            "An async unit of work is entered with 'async with Session.scope():', not 'with'."
        )

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
        pass

    def __call__(self, func: F) -> F:
        """Use the unit as a decorator of a coroutine function: each call runs in a
        unit of its own."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                "@Session.scope() decorates coroutine functions ('async def') only; use"
                " 'async with Session.scope():' inside other code."
            )
        registry, commit, label = self._registry, self.commit, self.label

        @functools.wraps(func)
        async def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            unit: AsyncUnitOfWork[t.Any] = AsyncUnitOfWork(registry, commit, label).start()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                await unit.end(exc)
                raise
            await unit.end()
            return result

        return t.cast("F", wrapper)
