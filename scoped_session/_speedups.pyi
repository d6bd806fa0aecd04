"""Types of the optional C speedups (scoped_session/_speedups.c)."""

import typing as t

class ProxyBase:
    """The C part of ScopedSession: fields for the caller's cell, and ``__call__``."""

    _slot: t.Any
    _keyed_cells: dict[object, t.Any] | None
    _keyed_func: t.Callable[[], object] | None
    def __call__(self, **kw: t.Any) -> t.Any: ...

class AsyncProxyBase:
    """The C part of AsyncScopedSession: the scope's context variable, and ``__call__``."""

    _task_var: t.Any
    def __call__(self, **kw: t.Any) -> t.Any: ...
    def _take(self) -> t.Any: ...

def configure_async(cell_type: type, current_tasks: dict[t.Any, t.Any], /) -> None:
    """Where AsyncProxyBase finds a cell's slots, and asyncio's dict of each
    event loop's running task."""

def mark_cell(cell: t.Any, /) -> None:
    """Record in a new AsyncCell the thread and context it is made in."""

class Forward:
    """A proxy member that forwards to the caller's session's attribute ``name``."""

    __name__: str
    __qualname__: str
    __doc__: str | None
    def __init__(self, name: str, doc: str | None = None) -> None: ...
    def __get__(self, obj: object, owner: type | None = None) -> t.Any: ...
    def __call__(self, proxy: ProxyBase, /, *args: t.Any, **kwargs: t.Any) -> t.Any: ...

class SettableForward:
    """A forwarded attribute that can also be set through the proxy."""

    __name__: str
    __qualname__: str
    __doc__: str | None
    def __init__(self, name: str, doc: str | None = None) -> None: ...
    def __get__(self, obj: object, owner: type | None = None) -> t.Any: ...
    def __set__(self, obj: object, value: t.Any) -> None: ...

class ThreadSlot:
    """The thread scope's slot: ``cell`` is the calling thread's cell."""

    cell: t.Any
    def __init__(self, store: t.Any) -> None: ...
