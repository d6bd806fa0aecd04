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
- **Two tasks at once are detected.** A session must not be used by two tasks at the
  same time (an ``AsyncSession`` is not safe for that). When a task reaches a shared
  unit's session through the proxy while another task is inside one of the session's
  methods, a :class:`ConcurrentUseWarning` is emitted, or with ``strict=True`` a
  :class:`ConcurrentUseError` is raised. A session passed around by reference, or
  coroutines made in one task and awaited in others (``asyncio.gather(Session.get(...),
  Session.get(...))``), are not seen.
- **Units always finish.** Ending a unit (commit, then close) runs to its end even
  when the task is cancelled meanwhile; the cancellation is re-raised after.
- **Sessions nobody ended.** A session whose context was dropped outside any task
  (say, a thread that called ``Session()`` in a copied context) cannot be awaited where
  it is found: its close is scheduled on the event loop it was made on if that loop
  is still open, else it is dropped and an error is logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import types
import typing as t
import warnings
import weakref

from . import _tasks
from ._exceptions import ConcurrentUseError, ScopedSessionError, SessionAlreadyPresent
from ._proxy import RegistryBase, compiled_members
from ._scopes import Stats
from ._tasks import ASYNC_SPEEDUPS as _speedups
from ._tasks import (
    C_CURRENT_TASK,
    FINISHED,
    SHARED,
    AsyncCell,
    Task,
    TaskScope,
    busy_elsewhere,
    owner,
    reap_at_task_end,
    run_to_end,
    running_loop,
)

__all__ = ["AsyncScopedSession", "AsyncUnitOfWork", "ConcurrentUseError", "ConcurrentUseWarning"]

logger = logging.getLogger("scoped_session")


class _AsyncCloseable(t.Protocol):
    def close(self) -> t.Awaitable[object]: ...


AS = t.TypeVar("AS", bound=_AsyncCloseable)
F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class ConcurrentUseWarning(RuntimeWarning):
    """A session was reached by one task while another task was using it."""


#: Every live AsyncScopedSession, so that a fork child can make each forget its cells.
_instances: weakref.WeakSet[AsyncScopedSession[t.Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for scoped in list(_instances):
        scoped._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


#: Session methods that take no arguments, written out on the proxy: a call makes
#: no bound method of the session's. Their async ones return the session's own
#: awaitable.
_CALLS = ("close", "commit", "expire_all", "expunge_all", "reset", "rollback")

#: The other names of ``AsyncSession`` written out: a property that returns the
#: session's attribute (a method's own bound method, so arguments reach it exactly
#: as given). Any other public name is reached through ``__getattr__``.
_ATTRIBUTES = (
    "aclose",
    "add",
    "add_all",
    "begin",
    "begin_nested",
    "bind_mapper",
    "bind_table",
    "binds",
    "close_all",
    "connection",
    "delete",
    "delete_all",
    "deleted",
    "dirty",
    "execute",
    "execution_options",
    "expire",
    "expunge",
    "flush",
    "get",
    "get_async_bind",
    "get_bind",
    "get_nested_transaction",
    "get_one",
    "get_transaction",
    "identity_key",
    "in_nested_transaction",
    "in_transaction",
    "info",
    "invalidate",
    "is_active",
    "is_modified",
    "merge",
    "merge_all",
    "new",
    "no_autoflush",
    "object_session",
    "refresh",
    "run_sync",
    "scalar",
    "scalars",
    "stream",
    "stream_scalars",
    "sync_session",
    "sync_session_class",
)

#: Forwarded both ways: ``Session.autoflush = False`` sets the session's.
_SETTABLE = ("autoflush", "bind", "identity_map")

# In pure Python the proxy is generated from these templates so that the fast
# path is plain code with the session's attribute named literally: it is the one
# task allowed to use the cell without checks (``cell.gate``), a read of the
# context variable, one comparison. Everything else goes through ``_slow()``.
# Invariant: ``cell.gate`` is a task only while that task's cell is live (not
# ended, not shared). With the C speedups, ``__call__`` and the attributes are
# C (``_speedups.AsyncProxyBase`` and ``Forward``; see ``_compiled_members``),
# with the same fast path and the same slow path.
if C_CURRENT_TASK:
    _IS_MINE = "cell.gate is current_task()"
    _NOT_MINE = "(AttributeError, RuntimeError)"  # no cell; no running loop
else:  # Python 3.11
    _IS_MINE = "cell.gate is tasks(running_loop())"
    _NOT_MINE = "AttributeError"  # no cell

_CALL_TEMPLATE = """
def __call__(self, **kw):
    if kw:
        return self._make(kw)
    cell = self._get()
    try:
        session = cell.session if {is_mine} else NOT_MINE
    except {not_mine}:
        session = NOT_MINE
    if session is None:  # the caller's own cell, emptied by remove()
        return self._refill(cell)
    if session is NOT_MINE:
        return self._slow()
    return session
"""

_METHOD_TEMPLATE = """
def {name}(self):
    cell = self._get()
    try:
        session = cell.session if {is_mine} else None
    except {not_mine}:
        session = None
    if session is None:
        session = self._slow()
    return session.{name}()
"""

_GET_TEMPLATE = """
def {name}(self):
    cell = self._get()
    try:
        if {is_mine}:
            return cell.session.{name}
    except {not_mine}:
        pass
    return self._slow().{name}
"""

_SET_TEMPLATE = """
def set_{name}(self, value):
    self().{name} = value
"""


def _proxy_namespace() -> dict[str, t.Any]:
    """The proxy's members in Python, generated."""
    env: dict[str, t.Any] = {"NOT_MINE": object()}
    if C_CURRENT_TASK:
        env["current_task"] = asyncio.current_task
    else:  # Python 3.11
        env["tasks"], env["running_loop"] = _tasks.current_tasks.get, running_loop
    fmt = {"is_mine": _IS_MINE, "not_mine": _NOT_MINE}
    source = _CALL_TEMPLATE.format(**fmt)
    source += "".join(_METHOD_TEMPLATE.format(name=name, **fmt) for name in _CALLS)
    source += "".join(_GET_TEMPLATE.format(name=name, **fmt) for name in (*_ATTRIBUTES, *_SETTABLE))
    source += "".join(_SET_TEMPLATE.format(name=name) for name in _SETTABLE)
    exec(compile(source, "<scoped_session.asyncio proxy>", "exec"), env)
    members: dict[str, t.Any] = {"__call__": env["__call__"]}
    members["__call__"].__doc__ = (
        "Return the caller's session, made by the factory on first use.\n\n"
        "With keyword arguments the session is made with them; when the caller already\n"
        "has a session that raises :class:`SessionAlreadyPresent`."
    )
    for name in _CALLS:
        members[name] = env[name]
        members[name].__doc__ = f"Call the caller's session's ``{name}()``."
    for name in _ATTRIBUTES:
        members[name] = property(env[name], doc=f"The session's ``{name}``.")
    for name in _SETTABLE:
        members[name] = property(env[name], env[f"set_{name}"], doc=f"The session's ``{name}``.")
    return members


def _compiled_members(speedups: types.ModuleType) -> dict[str, t.Any]:
    """The proxy's members with the C speedups: ``__call__`` is
    ``AsyncProxyBase``'s own, the attributes are C members that find the
    caller's session (called, they pass the arguments to the session's method
    as given); the calls without arguments stay Python and use ``self()``."""
    env: dict[str, t.Any] = {}
    source = "".join(f"def {name}(self):\n    return self().{name}()\n" for name in _CALLS)
    exec(compile(source, "<scoped_session.asyncio proxy>", "exec"), env)
    members = compiled_members(speedups, "AsyncScopedSession", _ATTRIBUTES, _SETTABLE)
    for name in _CALLS:
        members[name] = env[name]
        members[name].__doc__ = f"Call the caller's session's ``{name}()``."
    return members


if t.TYPE_CHECKING or _speedups is None:

    class _AsyncProxyBase:
        """The Python stand-in for ``_speedups.AsyncProxyBase``: ``_take()``
        here, ``__call__`` from the templates above."""

        # With the speedups, a C field: the scope's context variable.
        __slots__ = ("_task_var",)

        _task_var: contextvars.ContextVar[AsyncCell | None]

        def _take(self: t.Any) -> t.Any:
            """Empty the caller's cell and return what it held (``None`` if nothing)."""
            cell = self._get()
            if cell is not None and cell.gate is owner():
                # The caller's own live cell needs no checks; any other goes the long way.
                return cell.take()
            return self._forget()

else:
    _AsyncProxyBase = _speedups.AsyncProxyBase


class AsyncScopedSession(_AsyncProxyBase, RegistryBase, t.Generic[AS]):
    """A registry of async sessions, one per asyncio task, and a proxy to the
    caller's session.

    :param session_factory: makes a new session whose ``close()`` is a coroutine;
        usually a :class:`sqlalchemy.ext.asyncio.async_sessionmaker`.
    :param scopefunc: only ``asyncio.current_task`` is accepted (what SQLAlchemy's
        ``async_scoped_session`` is usually given); it is the default behaviour.
    :param scope: ``"context"``, the only one: a session per task, and a unit of
        work's session shared with the tasks started inside it while it is open.
    :param strict: raise :class:`ConcurrentUseError` instead of warning when two
        tasks use one session at the same time.
    """

    # Slots, not a __dict__: CPython specializes the proxy's member reads only on
    # an instance whose attributes are not in a dict of its own, and switching
    # ``__class__`` (see _check_names) turns inline attributes into such a dict.
    __slots__ = (
        "__weakref__",
        "_checked_type",
        "_get",
        "_scope",
        "_stats",
        "registry",
        "session_factory",
        "strict",
    )

    session_factory: t.Callable[..., AS]

    _NAME = "AsyncScopedSession"
    _CONFIGURABLE = "sqlalchemy.ext.asyncio.async_sessionmaker"

    def __init__(
        self,
        session_factory: t.Callable[..., AS],
        scopefunc: t.Callable[[], object] | None = None,
        *,
        scope: str = "context",
        strict: bool = False,
    ) -> None:
        if not callable(session_factory):
            raise TypeError(
                "AsyncScopedSession() needs a session factory: a callable that returns"
                " a new async session, such as"
                " sqlalchemy.ext.asyncio.async_sessionmaker(engine); got an object of"
                f" type {type(session_factory).__name__}."
            )
        if scopefunc is not None and scopefunc is not asyncio.current_task:
            raise TypeError(
                "AsyncScopedSession() keeps a session per asyncio task by itself and"
                " takes no custom scopefunc (only asyncio.current_task, which is what it"
                " does anyway). For a custom key use scoped_session.ScopedSession with a"
                " scopefunc."
            )
        if scope != "context":
            raise ValueError(
                f"Unknown scope {scope!r}: AsyncScopedSession supports scope='context'"
                " (a session per asyncio task); for a session per thread use"
                " scoped_session.ScopedSession."
            )
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, not {type(strict).__name__}.")
        self.session_factory = session_factory
        self.strict = strict
        self._stats = Stats()
        self._scope: TaskScope = TaskScope()
        self._bind_scope()
        self._checked_type: type[t.Any] | None = None
        self.registry = _AsyncRegistry(self)
        if type(self) is AsyncScopedSession:
            # Until a session shows which names it has, every name is forwarded.
            self.__class__ = _Forwarding
        _instances.add(self)

    if t.TYPE_CHECKING:

        def __call__(self, **kw: t.Any) -> AS: ...

    def _bind_scope(self) -> None:
        """Point the fast path at the scope's context variable."""
        var = self._scope.var
        self._get = var.get
        if _speedups is not None:
            self._task_var = var

    # -- lookup and creation (the slow path) -------------------------------------------

    def _resolve(self, me: Task | None) -> AsyncCell | None:
        """The caller's cell: an open unit visible in its context, or a session it
        made itself; ``None`` when it has neither. Drops dead entries from the
        caller's context on the way."""
        var = self._scope.var
        cell = top = var.get()
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
            var.set(cell)
        return cell

    def _slow(self) -> AS:
        me = owner()
        cell = self._resolve(me)
        if cell is None:
            return self._fill(None, me, {})
        session: AS | None = cell.session
        if session is None:
            return self._fill(cell, me, {})
        if cell.gate is not me:
            self._check_shared(cell, me, session)
        return session

    def _refill(self, cell: AsyncCell) -> AS:
        """The caller's own live cell is empty (``remove()`` emptied it): fill it."""
        session = cell.session = self.session_factory()
        self._stats.created += 1
        if type(session) is not self._checked_type:
            self._check_names(session)
        return session

    def _make(self, kw: dict[str, t.Any]) -> AS:
        me = owner()
        cell = self._resolve(me)
        if cell is not None and cell.session is not None:
            raise SessionAlreadyPresent(
                "A scoped session is already present; keyword arguments apply only"
                " when the session is made. Call 'await Session.remove()' first to"
                " start a new session with them."
            )
        return self._fill(cell, me, kw)

    def _fill(self, cell: AsyncCell | None, me: Task | None, kw: dict[str, t.Any]) -> AS:
        # Made before the registry is touched: a factory that raises leaves nothing.
        session = self.session_factory(**kw)
        if cell is None:
            cell = self._new_cell(me)
        elif cell.gate is not me and me is not None:
            self._check_shared(cell, me, None)
        cell.session = session
        self._stats.created += 1
        if type(session) is not self._checked_type:
            self._check_names(session)
        return session

    def _new_cell(self, me: Task | None) -> AsyncCell:
        cell = AsyncCell(self._stats, me, running_loop())
        self._scope.track(cell)
        self._scope.var.set(cell)
        if me is not None:
            # The task closes what it leaves behind when it ends; the callback goes
            # with the task, so the registry keeps no task alive.
            me.add_done_callback(functools.partial(reap_at_task_end, cell))
        return cell

    def _check_shared(self, cell: AsyncCell, me: Task | None, session: object) -> None:
        """``me`` reaches a unit's cell that another task opened: from now on every
        use of it is checked, and this one is checked against the others."""
        if me is None:
            return  # a thread in a copied context: nothing to compare with
        cell.gate = SHARED
        users = cell.users
        if users is None:
            users = cell.users = weakref.WeakSet()
        users.add(me)
        if session is None:
            return
        other = busy_elsewhere(cell, me, session)
        if other is not None:
            self._report(other)

    def _report(self, other: Task) -> None:
        message = (
            f"A session is in use by task {other.get_name()!r} while another task uses"
            " it too. An async session must not be used by two tasks at the same time:"
            " await one before the other uses it, or open 'async with Session.scope():'"
            " in each task to give it its own session."
        )
        if self.strict:
            raise ConcurrentUseError(message)
        warnings.warn(message, ConcurrentUseWarning, stacklevel=4)

    # -- ending sessions -----------------------------------------------------------------

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

    def _forget(self) -> AS | None:
        me = owner()
        cell = self._resolve(me)
        if cell is None:
            return None
        session: AS | None = cell.take()
        if session is not None and cell.gate is not me:
            self._check_shared(cell, me, session)
        return session

    async def remove_all(self) -> int:
        """Close and forget every session of this registry, in every task (for
        shutdown, on the loop the sessions belong to). Returns how many were closed.

        Every session is closed even if some fail; each failure is logged, and the
        first (or an ``ExceptionGroup`` of all) is raised.
        """
        taken = [s for s in (cell.take() for cell in self._scope.cells()) if s is not None]
        self._stats.removed += len(taken)
        errors: list[Exception] = []
        for session in taken:
            try:
                await session.close()
            except Exception as exc:
                logger.error("Closing a session failed during remove_all().", exc_info=True)
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(
                f"closing {len(errors)} sessions failed during remove_all()", errors
            )
        return len(taken)

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
        return AsyncUnitOfWork(self, commit=commit)

    def _forget_inherited(self) -> None:
        # Runs in a fork child: drop everything without closing.
        self._scope.reset()
        self._stats = Stats()
        self._bind_scope()

    # -- the proxy -------------------------------------------------------------------

    if t.TYPE_CHECKING:

        async def close(self) -> None: ...
        async def commit(self) -> None: ...
        async def rollback(self) -> None: ...
        async def reset(self) -> None: ...
        def expire_all(self) -> None: ...
        def expunge_all(self) -> None: ...
        def __getattr__(self, name: str) -> t.Any: ...

    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__getattr__ = _forward_unknown  # type: ignore[method-assign]

    def _check_names(self, session: object) -> None:
        """A session of a new type was made: keep forwarding the names the proxy
        does not write out only if it has any (see ``_Forwarding``)."""
        self._checked_type = type(session)
        if type(self) in (AsyncScopedSession, _Forwarding):
            hooked = _has_unknown_names(session)
            self.__class__ = _Forwarding if hooked else AsyncScopedSession


# With the speedups __call__ is AsyncProxyBase's own: nothing else of the Python
# proxy is used.
_NAMESPACE = _proxy_namespace() if _speedups is None else _compiled_members(_speedups)
for _name, _member in _NAMESPACE.items():
    setattr(AsyncScopedSession, _name, _member)
del _name, _member

#: Every name the proxy writes out.
_WRITTEN = frozenset((*_CALLS, *_ATTRIBUTES, *_SETTABLE))

#: CPython specializes no attribute read on an instance whose class has
#: ``__getattr__`` (measured: 3.11 and 3.12 both): with one, every read on the proxy
#: costs about a third more. So a registry drops it (switching from the subclass
#: below to its base) once it has made a session whose public names are all written
#: out, and takes it back for a session that has others.


def _forward_unknown(self: AsyncScopedSession[t.Any], name: str) -> t.Any:
    """Forward a name the proxy does not write out to the caller's session."""
    if name.startswith("_"):
        raise AttributeError(name)
    return getattr(self(), name)


class _Forwarding(AsyncScopedSession[AS]):
    """An AsyncScopedSession that forwards names it does not write out (every
    subclass does: see ``__init_subclass__``)."""

    __slots__ = ()


_Forwarding.__name__ = _Forwarding.__qualname__ = "AsyncScopedSession"


def _has_unknown_names(session: object) -> bool:
    """Whether ``session`` has a public name the proxy does not write out."""
    return any(not name.startswith("_") and name not in _WRITTEN for name in dir(session))


class _AsyncRegistry(t.Generic[AS]):
    """``Session.registry``: the caller's slot, SQLAlchemy-compatible."""

    def __init__(self, scoped: AsyncScopedSession[AS]) -> None:
        self._scoped = scoped

    def __call__(self) -> AS:
        """The caller's session, made on first use."""
        return self._scoped()

    def has(self) -> bool:
        """Whether the caller has a session."""
        cell = self._scoped._resolve(owner())
        return cell is not None and cell.session is not None

    def set(self, obj: AS) -> None:
        """Make ``obj`` the caller's session; one already there is forgotten, not
        closed."""
        scoped = self._scoped
        me = owner()
        cell = scoped._resolve(me)
        if cell is None:
            cell = scoped._new_cell(me)
        cell.session = obj
        if type(obj) is not scoped._checked_type:
            scoped._check_names(obj)

    def clear(self) -> None:
        """Forget the caller's session without closing it."""
        self._scoped._forget()


class AsyncUnitOfWork(t.Generic[AS]):
    """A begin/end pair on the caller's task: see :meth:`AsyncScopedSession.scope`.

    Integrations use :meth:`start` and :meth:`end` directly. ``end()`` may be
    awaited from any task: it ends this unit, and awaiting it again does nothing.
    """

    def __init__(self, scoped: AsyncScopedSession[AS], commit: bool = False) -> None:
        self._scoped = scoped
        self.commit = commit
        self._cell: AsyncCell | None = None
        self._task: Task | None = None
        self.joined = False
        self._open: list[bool] = []

    def start(self) -> AsyncUnitOfWork[AS]:
        """Open the unit in the caller's task; join a unit the same task opened."""
        if self._cell is not None:
            raise ScopedSessionError(
                "This unit of work was already started; call Session.scope() for a new one."
            )
        scoped = self._scoped
        me = owner()
        outer = scoped._resolve(me)
        self._task = me
        if outer is not None and outer.depth and outer.task is me:
            outer.depth += 1
            self._cell = outer
            self.joined = True
        else:
            # A session made outside any unit, or a unit of another task, is
            # shadowed: the unit starts fresh and the old one is back at its end.
            cell = AsyncCell(scoped._stats, me, running_loop(), prev=outer, depth=1)
            scoped._scope.track(cell)
            scoped._scope.var.set(cell)
            self._cell = cell
        self._open.append(True)
        return self

    @property
    def active(self) -> bool:
        """Whether the unit was started and not yet ended."""
        return bool(self._open)

    @property
    def session(self) -> AS | None:
        """The unit's session if one was made, without making one."""
        cell = self._cell
        return None if cell is None else t.cast("AS | None", cell.session)

    async def end(self, error: BaseException | None = None, *, commit: bool | None = None) -> None:
        """End the unit: commit (when asked and ``error`` is None), close, forget.

        A joined unit only leaves. The commit and the close run to their end even
        if the caller is cancelled meanwhile (the cancellation is re-raised after).
        A failed commit or close is logged and raised, unless ``error`` (the
        work's own exception) is given: that one is never hidden, and the caller
        re-raises it.

        :param error: the exception the unit's work raised, if any.
        :param commit: overrides the unit's ``commit`` flag.
        """
        try:
            self._open.pop()
        except IndexError:
            return
        cell = self._cell
        assert cell is not None
        if self.joined:
            if not cell.ended:
                cell.depth -= 1
            return
        # Closed to newcomers first: tasks that look now get sessions of their own.
        cell.depth = 0
        cell.ended = True
        shared = cell.gate is SHARED
        cell.gate = FINISHED
        var = self._scoped._scope.var
        if var.get() is cell and owner() is self._task:
            var.set(cell.prev)
            cell.prev = None
        session = cell.take()
        if session is None:
            return
        scoped = self._scoped
        scoped._stats.removed += 1
        busy = None
        if shared:
            me = owner()
            busy = busy_elsewhere(cell, me, session) if me is not None else None
            if busy is not None and not scoped.strict:
                scoped._report(busy)
        if commit is None:
            commit = self.commit
        await run_to_end(_commit_and_close(session, commit and error is None, error))
        if busy is not None:
            scoped._report(busy)  # strict: raised once the unit is over

    async def __aenter__(self) -> AS:
        self.start()
        return self._scoped()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.end(exc)

    def __enter__(self) -> t.NoReturn:
        raise TypeError(
            "An async unit of work is entered with 'async with Session.scope():', not 'with'."
        )

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
        pass

    def __call__(self, func: F) -> F:
        """Use the unit as a decorator of a coroutine function: each call runs in
        a unit of its own."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                "@Session.scope() decorates coroutine functions ('async def') only; use"
                " 'async with Session.scope():' inside other code."
            )
        scoped, commit = self._scoped, self.commit

        @functools.wraps(func)
        async def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            unit = AsyncUnitOfWork(scoped, commit).start()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                await unit.end(exc)
                raise
            await unit.end()
            return result

        return t.cast("F", wrapper)


async def _commit_and_close(session: t.Any, commit: bool, error: BaseException | None) -> None:
    failure: BaseException | None = None
    try:
        if commit:
            await session.commit()
    except BaseException as exc:
        failure = exc
    finally:
        try:
            await session.close()
        except Exception as exc:
            if failure is None and error is None:
                failure = exc
            else:
                logger.error("Closing a session failed after an error.", exc_info=True)
    if failure is not None:
        if error is not None:
            logger.error("Ending a unit of work failed.", exc_info=failure)
        else:
            raise failure
