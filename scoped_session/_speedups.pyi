"""Types of the optional C speedups (scoped_session/_speedups.c)."""

import typing as t

class ProxyBase:
    """The C part of ScopedSession: fields for the caller's cell, and ``__call__``."""

    _slot: t.Any
    _keyed_cells: dict[object, t.Any] | None
    _keyed_func: t.Callable[[], object] | None
    def __call__(self, **kw: t.Any) -> t.Any: ...

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
