"""ScopedSession: the registry, the proxy, and units of work.

::

    from sqlalchemy.orm import sessionmaker
    from scoped_session import ScopedSession

    Session = ScopedSession(sessionmaker(engine))

    def handler():
        with Session.scope(commit=True):      # a unit of work
            Session.add(Note(text="hi"))      # the caller's session, made on first use
        # committed, closed and forgotten here, also if the block raised
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
import typing as t
import warnings
import weakref

from ._exceptions import NoScopeError, SessionAlreadyPresent
from ._scopes import EMPTY, Cell, ContextScope, KeyedScope, Scope, Stats, ThreadScope
from ._scopes import speedups as _speedups
from ._units import QueryProperty, UnitOfWork, _Closeable, _Registry

__all__ = [
    "QueryProperty",
    "ScopedSession",
    "SessionStats",
    "UnitOfWork",
    "scoped_session",
]

logger = logging.getLogger("scoped_session")


S = t.TypeVar("S", bound=_Closeable)
F = t.TypeVar("F", bound=t.Callable[..., t.Any])

_SCOPES = ("thread", "context")

#: Every live ScopedSession, so that a fork child can make each forget its cells.
_instances: weakref.WeakSet[ScopedSession[t.Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for scoped in list(_instances):
        scoped._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_all(sessions: t.Iterable[_Closeable], what: str) -> int:
    """Close every session; log each failure; raise the first (or a group)."""
    closed = 0
    errors: list[Exception] = []
    for session in sessions:
        try:
            session.close()
        except Exception as exc:
            logger.error("Closing a session failed during %s.", what, exc_info=True)
            errors.append(exc)
        else:
            closed += 1
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup(f"closing {len(errors)} sessions failed during {what}", errors)
    return closed


#: Session methods that take no arguments: forwarded as methods of the proxy, so
#: a call makes no bound method of the session's.
_CALLS = ("close", "commit", "expire_all", "expunge_all", "reset", "rollback")

#: Every other public name of ``sqlalchemy.orm.Session`` (2.0 and 2.1): a property
#: that returns the session's attribute, for a method its own bound method, so
#: arguments reach it exactly as given.
_ATTRIBUTES = (
    "add",
    "add_all",
    "autobegin",
    "begin",
    "begin_nested",
    "bind_mapper",
    "bind_table",
    "binds",
    "bulk_insert_mappings",
    "bulk_save_objects",
    "bulk_update_mappings",
    "connection",
    "connection_callable",
    "delete",
    "delete_all",
    "deleted",
    "dirty",
    "dispatch",
    "enable_baked_queries",
    "enable_relationship_loading",
    "execute",
    "execution_options",
    "expire",
    "expire_on_commit",
    "expunge",
    "flush",
    "get",
    "get_bind",
    "get_nested_transaction",
    "get_one",
    "get_transaction",
    "hash_key",
    "identity_key",
    "in_nested_transaction",
    "in_transaction",
    "info",
    "invalidate",
    "is_active",
    "is_modified",
    "join_transaction_mode",
    "merge",
    "merge_all",
    "new",
    "no_autoflush",
    "object_session",
    "prepare",
    "query",
    "refresh",
    "scalar",
    "scalars",
    "twophase",
)

#: Forwarded both ways: ``Session.autoflush = False`` sets the session's.
_SETTABLE = ("autoflush", "bind", "identity_map")

#: How the generated proxy code finds the caller's session, per kind of scope,
#: and the errors that mean "no session yet". The slot read is C all the way
#: for thread and context scopes; a custom key skips the slot's property.
_LOOKUPS = {
    "slot": ("self._slot.cell.session", "AttributeError"),
    "keyed": (
        "self._keyed_cells[self._keyed_func()].session",
        "(KeyError, AttributeError, TypeError)",
    ),
}

_TEMPLATE = """
def __call__(self, **kw):
    if kw:
        return self._create(kw)
    try:
        session = {lookup}
    except {errors}:
        session = None
    if session is None:
        return self._create(kw)
    return session
"""

_CALL_TEMPLATE = """
def {name}(self):
    try:
        session = {lookup}
    except {errors}:
        session = None
    if session is None:
        session = self._create({{}})
    return session.{name}()
"""

_GET_TEMPLATE = """
def {name}(self):
    try:
        session = {lookup}
    except {errors}:
        session = None
    if session is None:
        session = self._create({{}})
    return session.{name}
"""

_SET_TEMPLATE = """
def set_{name}(self, value):
    self().{name} = value
"""


def _proxy_namespace(kind: str, *, calls_only: bool = False) -> dict[str, t.Any]:
    """The proxy's forwarding members for one kind of scope; with
    ``calls_only``, only the calls without arguments (what the C speedups leave
    to Python).

    Generated (as SQLAlchemy and attrs do) so that each reads its attribute by
    a literal name: CPython specializes those reads, which a shared function
    taking the name as data cannot have. Each handles "no session yet" itself,
    so none depends on ``__getattr__``.
    """
    lookup, errors = _LOOKUPS[kind]
    attributes, settable = ((), ()) if calls_only else (_ATTRIBUTES, _SETTABLE)
    source = [] if calls_only else [_TEMPLATE.format(lookup=lookup, errors=errors)]
    for name in _CALLS:
        source.append(_CALL_TEMPLATE.format(name=name, lookup=lookup, errors=errors))
    for name in attributes:
        source.append(_GET_TEMPLATE.format(name=name, lookup=lookup, errors=errors))
    for name in settable:
        source.append(_GET_TEMPLATE.format(name=name, lookup=lookup, errors=errors))
        source.append(_SET_TEMPLATE.format(name=name))
    code: dict[str, t.Any] = {}
    # Module globals: a frame of the generated code is known as the library's
    # own by them (see _create).
    exec(compile("".join(source), f"<scoped_session proxy: {kind}>", "exec"), _GLOBALS, code)
    namespace: dict[str, t.Any] = {} if calls_only else {"__call__": code["__call__"]}
    for name in _CALLS:
        method = code[name]
        method.__doc__ = f"Call the caller's session's ``{name}()``."
        namespace[name] = method
    for name in attributes:
        namespace[name] = property(code[name], doc=f"The caller's session's ``{name}``.")
    for name in settable:
        namespace[name] = property(
            code[name], code[f"set_{name}"], doc=f"The caller's session's ``{name}``."
        )
    for value in namespace.values():
        function: t.Any = value.fget if isinstance(value, property) else value
        function.__module__ = __name__
        function.__qualname__ = f"ScopedSession.{function.__name__}"
    return namespace


#: Python 3.11 does not specialize any attribute read on an instance whose class
#: has ``__getattr__``: with one, every read on the proxy, its own included,
#: costs about twice as much. 3.12 and later specialize them anyway.
_GETATTR_IS_FREE = sys.version_info >= (3, 12)


def _forward_unknown(self: ScopedSession[t.Any], name: str) -> t.Any:
    """Forward a name the proxy does not define to the caller's session."""
    if name.startswith("_"):
        raise AttributeError(name)
    return getattr(self(), name)


def _locked_create(self: ScopedSession[t.Any], kw: dict[str, t.Any]) -> t.Any:
    with self._create_lock:  # type: ignore[union-attr]
        return self._public_class._create(self, kw)


#: Subclasses of a public class made for a kind of scope, per public class and
#: what they add: keyed proxy members, a locked slow path, ``__getattr__``.
_variants: dict[tuple[type[t.Any], bool, bool, bool], type[t.Any]] = {}
_variants_lock = threading.Lock()


def _variant(public: type[t.Any], keyed: bool, locked: bool, hooked: bool) -> type[t.Any]:
    """``public`` itself, or a subclass of it named like it that adds what is
    asked for. Instances switch between them with ``__class__``, which keeps
    the public class's ``isinstance`` and the object's identity."""
    if not (keyed or locked or hooked):
        return public
    key = (public, keyed, locked, hooked)
    with _variants_lock:
        cls = _variants.get(key)
        if cls is None:
            namespace: dict[str, t.Any] = {
                "__slots__": (),
                "__module__": public.__module__,
                "__qualname__": public.__qualname__,
                "__doc__": public.__doc__,
            }
            if keyed:
                namespace.update(_KEYED_VARIANT)
            if locked:
                namespace["_create"] = _locked_create
            if hooked:
                namespace["__getattr__"] = _forward_unknown
            cls = _variants[key] = type(public.__name__, (public,), namespace)
    return cls


#: This module's globals, which the generated proxy members run with too: their
#: frames are then known as the library's own (see _create).
_GLOBALS = globals()
#: The prefix of the library's module names.
_OWN = __name__.rpartition(".")[0] + "."


def _caller_label(kind: str) -> str:
    """Name the caller's scope, for a cell made outside a unit of work."""
    thread = threading.current_thread().name
    if kind == "context":
        # No task can run unless asyncio was imported; never import it here.
        asyncio = sys.modules.get("asyncio")
        try:
            task = asyncio.current_task() if asyncio is not None else None
        except RuntimeError:  # no running event loop in this thread
            task = None
        if task is not None:
            return f"the task {task.get_name()!r} (thread {thread!r})"
        return f"a context of the thread {thread!r}"
    if kind == "thread":
        return f"the thread {thread!r}"
    return f"a {kind} scope (thread {thread!r})"


class SessionStats(t.NamedTuple):
    """Counts of a ScopedSession's sessions (see :meth:`ScopedSession.stats`)."""

    #: Sessions held right now, in every scope.
    live: int
    #: Sessions made by the factory.
    created: int
    #: Sessions closed by ``remove()``, ``remove_all()`` or the end of a unit.
    removed: int
    #: Sessions closed by a backstop: a thread or context that ended without
    #: ``remove()``, a response never closed, a stale unit of work.
    reaped: int


class RegistryBase:
    """What the sync and async registries share: their scope's name, a repr that
    leaves the factory out, and ``in`` and iteration over the caller's session."""

    __slots__ = ()

    _scope: t.Any
    session_factory: t.Callable[..., t.Any]

    #: Named in configure()'s error: the registry, and a factory that has configure().
    _NAME = "ScopedSession"
    _CONFIGURABLE = "sqlalchemy.orm.sessionmaker"

    if t.TYPE_CHECKING:

        def __call__(self) -> t.Any: ...

        # The names both proxies forward both ways (set through the proxy, they
        # set the caller's session's).
        @property
        def bind(self) -> t.Any: ...
        @bind.setter
        def bind(self, value: t.Any) -> None: ...
        @property
        def autoflush(self) -> bool: ...
        @autoflush.setter
        def autoflush(self, value: bool) -> None: ...
        @property
        def identity_map(self) -> t.Any: ...
        @identity_map.setter
        def identity_map(self, value: t.Any) -> None: ...

    @property
    def scope_kind(self) -> str:
        """Where this registry's sessions live: ``"thread"``, ``"context"``,
        ``"scopefunc"``, or an integration's own (``"flask"``)."""
        return self._scope.kind  # type: ignore[no-any-return]

    def configure(self, **kwargs: t.Any) -> None:
        """Reconfigure the session factory (``session_factory.configure(**kwargs)``).

        Warns when sessions already exist in any scope or task: they keep their
        old configuration.
        """
        configure = getattr(self.session_factory, "configure", None)
        if configure is None:
            raise TypeError(
                "configure() needs a session factory with a configure() method, such as"
                f" {self._CONFIGURABLE}; this one has none. Make a new {self._NAME} with a"
                " reconfigured factory instead."
            )
        if any(cell.session is not None for cell in self._scope.cells()):
            warnings.warn(
                "At least one scoped session is already present; configure() does not"
                " affect sessions that already exist.",
                UserWarning,
                stacklevel=2,
            )
        configure(**kwargs)

    def __repr__(self) -> str:
        # The factory's repr is left out: it can hold a database URL.
        return f"<{type(self).__name__} scope={self._scope.kind}>"

    def __contains__(self, instance: object) -> bool:
        return instance in self()

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter(self())


if t.TYPE_CHECKING or _speedups is None:

    class _ProxyBase:
        """Where the proxy finds the caller's cell: in Python, three slots; with
        the speedups, C fields of ``_speedups.ProxyBase``, which also makes the
        instance callable."""

        __slots__ = ("_keyed_cells", "_keyed_func", "_slot")

        #: The scope's slot: ``_slot.cell`` is the caller's cell.
        _slot: t.Any
        #: Under a scopefunc, the scope's dict of cells and the scopefunc;
        #: ``None`` for every other scope.
        _keyed_cells: dict[object, Cell] | None
        _keyed_func: t.Callable[[], object] | None

else:
    _ProxyBase = _speedups.ProxyBase


class ScopedSession(_ProxyBase, RegistryBase, t.Generic[S]):
    """A registry of sessions, one per thread, context or custom key, and a proxy
    to the caller's session.

    :param session_factory: makes a new session; called with no arguments, or
        with the keyword arguments given to ``Session(**kw)``. Usually a
        :class:`sqlalchemy.orm.sessionmaker`.
    :param scopefunc: returns a hashable key for the caller's scope; a session
        is kept per key (SQLAlchemy-compatible). Exclusive with ``scope``.
    :param scope: ``"thread"`` (the default): a session per OS thread;
        ``"context"``: a session per :mod:`contextvars` context (thread, asyncio
        task, greenlet).
    :param strict: make sessions only inside a unit of work (``Session.scope()``
        or an integration's): use of the proxy anywhere else raises
        :class:`NoScopeError` instead of making a session nobody will remove.
    """

    __slots__ = (
        "__weakref__",
        "_create_lock",
        "_keyed",
        "_last_type",
        "_needs_hook",
        "_public_class",
        "_release",
        "_scope",
        "_seen_types",
        "_stats",
        "_strict",
        "registry",
        "session_factory",
    )

    session_factory: t.Callable[..., S]
    _scope: Scope

    def __init__(
        self,
        session_factory: t.Callable[..., S],
        scopefunc: t.Callable[[], object] | None = None,
        *,
        scope: str | None = None,
        strict: bool = False,
    ) -> None:
        if not callable(session_factory):
            raise TypeError(
                "ScopedSession() needs a session factory: a callable that returns a"
                " new session, such as sqlalchemy.orm.sessionmaker(bind=engine);"
                f" got an object of type {type(session_factory).__name__}."
            )
        if scopefunc is not None and scope is not None:
            raise TypeError(
                "Pass either scopefunc (a custom key) or scope='thread'/'context', not both."
            )
        if scopefunc is not None and not callable(scopefunc):
            raise TypeError(
                "scopefunc must be a callable that returns a hashable key for the"
                f" current scope; got an object of type {type(scopefunc).__name__}."
                " For a built-in scope pass scope='thread' or scope='context'."
            )
        if scope is not None and scope not in _SCOPES:
            raise ValueError(
                f"Unknown scope {scope!r}: pass scope='thread' (a session per thread,"
                " the default) or scope='context' (per contextvars context: thread,"
                " asyncio task, greenlet), or a scopefunc for a custom key."
            )
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, not {type(strict).__name__}.")
        self.session_factory = session_factory
        self._strict = strict
        self._stats = Stats()
        self.registry = _Registry(self)
        # The class the caller made; the instance may be switched to a variant
        # of it (see _variant) and back.
        self._public_class = type(self)
        # On 3.11 __getattr__ stays on until a session shows that the proxy
        # forwards all its names by itself (see _learn and _switch_class).
        self._needs_hook = False
        self._last_type: type[t.Any] | None = None
        self._seen_types: set[type[t.Any]] = set()
        if scopefunc is not None:
            self._use_scope(KeyedScope(scopefunc))
        elif scope == "context":
            self._use_scope(ContextScope())
        else:
            self._use_scope(ThreadScope())
        _instances.add(self)

    def _use_scope(self, scope: Scope) -> None:
        """Make ``scope`` decide where sessions live (integrations with a scope
        of their own, like Flask's application context, call this)."""
        self._scope = scope
        self._slot = scope.slot
        self._release = scope.release
        keyed = isinstance(scope, KeyedScope)
        # Two threads can share a custom key; the slow path must not race there.
        self._create_lock = threading.RLock() if keyed else None
        if keyed:
            self._keyed_cells = scope._cells  # type: ignore[attr-defined]
            self._keyed_func = scope.scopefunc  # type: ignore[attr-defined]
        else:
            self._keyed_cells = self._keyed_func = None
        self._keyed = keyed and not self._overrides_proxy()
        self._switch_class()

    def _overrides_proxy(self) -> bool:
        """Whether a subclass redefines a proxy member (a keyed variant would
        hide its version)."""
        for cls in self._public_class.__mro__:
            if cls is ScopedSession:
                return False
            if not _FORWARDED.isdisjoint(vars(cls)):
                return True
        return False

    def _switch_class(self) -> None:
        locked = self._create_lock is not None
        hooked = not _GETATTR_IS_FREE and (self._needs_hook or not self._seen_types)
        cls = _variant(self._public_class, self._keyed, locked, hooked)
        if self.__class__ is not cls:
            self.__class__ = cls

    def _learn(self, session: object) -> None:
        """Python 3.11 only (elsewhere a no-op): turn ``__getattr__`` off while
        every public name of the sessions made so far is one the proxy forwards
        by itself, and on for good once one is not."""
        kind = type(session)
        self._last_type = kind
        if _GETATTR_IS_FREE or kind in self._seen_types:
            return
        self._seen_types.add(kind)
        proxy = self._public_class
        names = (name for name in dir(session) if not name.startswith("_"))
        if not all(hasattr(proxy, name) for name in names):
            self._needs_hook = True
        self._switch_class()

    # -- the caller's session -------------------------------------------------

    def _resolve(self) -> Cell | None:
        """The caller's live cell, skipping units ended from another thread."""
        scope = self._scope
        cell = current = scope.get()
        while cell is not None and cell.ended:
            cell = cell.prev
        if cell is not current:
            scope.install(cell)
        return cell

    def _create(self, kw: dict[str, t.Any]) -> S:
        """The proxy's slow path: the caller has no session (or passed ``kw``).

        Not locked: the caller's cell is its own. Under a custom key, which
        threads may share, the instance's class is a variant that takes a lock
        around this (see ``_locked_create``).
        """
        try:
            cell = self._slot.cell
        except AttributeError:  # a thread's first use
            cell = EMPTY
        if cell.ended:
            cell = self._resolve() or EMPTY
        session: S | None = cell.session
        if session is not None:
            if kw:
                raise SessionAlreadyPresent(
                    "A scoped session is already present; keyword arguments"
                    " apply only when the session is made. Call remove() first"
                    " to start a new session with them."
                )
            return session
        implicit = not cell.depth
        if implicit and self._strict:
            raise NoScopeError(
                "This ScopedSession is strict: a session is made only inside a unit"
                " of work, and the caller has none. Wrap the work in"
                " 'with Session.scope():' (or @Session.scope()), or run it under an"
                " integration (the WSGI middleware, the Flask extension, a"
                " ScopedThreadPoolExecutor) that opens one."
            )
        # Make the session before touching the registry: a factory that raises
        # leaves nothing behind.
        session = self.session_factory(**kw)
        if session is None:
            raise TypeError(
                "The session factory returned None; it must return a new session"
                " object (such as sqlalchemy.orm.sessionmaker(bind=engine) does)."
            )
        if not cell.is_cell:
            scope = self._scope
            cell = Cell(self._stats)
            cell.label = _caller_label(scope.kind)
            scope.install(cell)
        if implicit and cell.origin is None:
            # Only a session made outside a unit of work can be left for a
            # finalizer to close: remember where, for its warning. Once per
            # cell (a thread's or context's, reused after remove()): a frame
            # lookup costs about a sixth of a whole get/remove cycle. The
            # first frame up that is not the library's own (a generated proxy
            # member, the registry, a query property, an integration) is the
            # caller's; a C member has no frame.
            frame: types.FrameType | None = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(_OWN):
                frame = frame.f_back
            if frame is not None:
                # The line number is worked out only for a warning: it costs
                # more to compute than everything else here.
                cell.origin = (frame.f_code, frame.f_lasti)
        cell.session = session
        self._stats.created += 1
        if not _GETATTR_IS_FREE and type(session) is not self._last_type:
            self._learn(session)
        return session

    def remove(self) -> None:
        """Close the caller's session, if any, and forget it.

        The session is forgotten first, so it is gone even when ``close()``
        raises; that error propagates. Inside a unit of work the unit stays open
        and the next use makes a new session, which the unit will end.
        """
        try:
            cell = self._slot.cell
        except AttributeError:  # this thread never had one
            return
        if cell.ended:
            cell = self._resolve() or EMPTY
        session: S | None = cell.take()
        release = self._release
        if release is not None and not cell.depth and cell.is_cell:
            release(cell)
        if session is not None:
            self._stats.removed += 1
            session.close()

    def _forget(self) -> S | None:
        """Take the caller's session out of its cell without closing it (for
        ``registry.clear()``); a cell outside any unit of work is released."""
        cell = self._resolve()
        if cell is None:
            return None
        session: S | None = cell.take()
        if self._release is not None and not cell.depth:
            self._release(cell)
        return session

    def remove_all(self) -> int:
        """Close and forget every session of this registry, in every thread and
        scope (for shutdown). Returns how many were closed.

        Every session is closed even if some fail; each failure is logged, and
        the first (or an ``ExceptionGroup`` of all) is raised.
        """
        taken = [s for s in (cell.take() for cell in self._scope.cells()) if s is not None]
        self._stats.removed += len(taken)
        return _close_all(taken, "remove_all()")

    def stats(self) -> SessionStats:
        """Counts of this registry's sessions: live now, and made, removed and
        reaped (closed by a backstop) so far in this process."""
        stats = self._stats
        live = sum(1 for cell in self._scope.cells() if cell.session is not None)
        return SessionStats(live, stats.created, stats.removed, stats.reaped)

    def scope(self, commit: bool = False) -> UnitOfWork[S]:
        """A unit of work: a context manager and a decorator.

        The caller gets a fresh session for the unit (made on first use); at the
        end of the outermost unit it is committed (when ``commit`` is true and
        nothing raised), closed and forgotten. A unit opened inside another one
        joins it and ends nothing.

        ::

            with Session.scope(commit=True) as session:
                session.add(obj)

            @Session.scope(commit=True)
            def job(): ...
        """
        if callable(commit):
            raise TypeError(
                "scope() takes commit=True/False, not a function: decorate with"
                " @Session.scope() (with parentheses)."
            )
        return UnitOfWork(self, commit=commit)

    def _forget_inherited(self) -> None:
        # Runs in a fork child: drop everything without closing. Cells that die
        # later see a foreign pid and keep their sessions away from close().
        self._scope.reset()
        self._stats = Stats()
        self._use_scope(self._scope)

    def query_property(self, query_cls: type[t.Any] | None = None) -> QueryProperty:
        """A class attribute that returns a query for the class against the
        caller's session (like SQLAlchemy's ``scoped_session.query_property``)."""
        return QueryProperty(self, query_cls)

    # -- the proxy ------------------------------------------------------------
    # The forwarding members are generated below the class (see
    # _proxy_namespace); here are their types.

    if t.TYPE_CHECKING:

        def __call__(self, **kw: t.Any) -> S:
            """Return the caller's session, made by the factory on first use.

            With keyword arguments the session is made with them; when the
            caller already has a session that raises
            :class:`SessionAlreadyPresent`.
            """

        def close(self) -> None: ...
        def commit(self) -> None: ...
        def rollback(self) -> None: ...
        def reset(self) -> None: ...
        def expunge_all(self) -> None: ...
        def expire_all(self) -> None: ...
        def __getattr__(self, name: str) -> t.Any: ...

    elif _GETATTR_IS_FREE:
        __getattr__ = _forward_unknown


def compiled_members(
    speedups: types.ModuleType,
    owner: str = "ScopedSession",
    attributes: t.Iterable[str] = _ATTRIBUTES,
    settable: t.Iterable[str] = _SETTABLE,
) -> dict[str, t.Any]:
    """A proxy's attributes in C: each finds the caller's session from the
    proxy's fields, for any kind of scope (both proxies use them). Called
    through the proxy (``Session.add(obj)``) it calls the session's method with
    the arguments as given, making no bound method; read (``Session.add``) it
    is the session's attribute."""
    members: dict[str, t.Any] = {}
    for name in attributes:
        members[name] = speedups.Forward(name, f"The caller's session's ``{name}``.")
    for name in settable:
        members[name] = speedups.SettableForward(name, f"The caller's session's ``{name}``.")
    for member in members.values():
        member.__qualname__ = f"{owner}.{member.__name__}"
    return members


#: Every name the proxy forwards by itself, without ``__getattr__``.
_FORWARDED = frozenset(("__call__", *_CALLS, *_ATTRIBUTES, *_SETTABLE))
if _speedups is None:
    _NAMESPACE = _proxy_namespace("slot")
    _KEYED_VARIANT = _proxy_namespace("keyed")
else:
    # C: __call__ (ProxyBase's own) and the attributes, which read the keyed
    # fields themselves. The calls without arguments stay Python (see the top
    # of _speedups.c): only those are generated, per kind of scope.
    _NAMESPACE = {**_proxy_namespace("slot", calls_only=True), **compiled_members(_speedups)}
    _KEYED_VARIANT = _proxy_namespace("keyed", calls_only=True)
for _name, _member in _NAMESPACE.items():
    setattr(ScopedSession, _name, _member)
del _name, _member

scoped_session = ScopedSession
