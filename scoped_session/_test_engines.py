"""Which engines the pytest plugin's test transactions run on: the registries the
``scoped_sessions`` fixture returned, and the engine their factories are bound to
(or the one a ``scoped_session_engine`` / ``scoped_session_async_engine`` fixture
returns). Sync and async differ only in the names of things (:class:`Side`).

Sync sessions may also name engines of their own (a Flask app's, binds): each
engine gets a test transaction of its own (``_test_transaction``), so the sync
default engine is optional. ``scoped_session.pytest_plugin`` is the public module;
this one is its implementation."""

from __future__ import annotations

import typing as t

import pytest

from ._async_test_transaction import async_sessionmaker_of
from ._proxy import ScopedSession
from ._test_transaction import sessionmaker_of
from .asyncio import AsyncScopedSession

__all__ = [
    "ASYNC",
    "ASYNC_FIXTURE",
    "DEFAULT_ENGINE",
    "SYNC",
    "AnyScopedSession",
    "NoDefaultEngine",
    "Side",
    "bound_engine",
    "checked_engine",
    "default_engine",
    "registries_of",
    "sync_engine",
]

AnyScopedSession = ScopedSession[t.Any] | AsyncScopedSession[t.Any]
ASYNC_FIXTURE = "scoped_session_async_transaction"
ENGINE_FIXTURE = "scoped_session_engine"
#: The engine the plugin's own scoped_session_engine fixture gave the running test:
#: an engine fixture that gave another is the user's, and an explicit choice.
DEFAULT_ENGINE = pytest.StashKey[object]()


def registries_of(value: object) -> tuple[list[AnyScopedSession], list[int]]:
    """The registries from the ``scoped_sessions`` fixture, each once, and their
    indexes in it."""
    if isinstance(value, ScopedSession | AsyncScopedSession):
        return [value], [0]
    if isinstance(value, str | bytes) or not isinstance(value, t.Iterable):
        pytest.fail(
            "The scoped_sessions fixture must return a ScopedSession, an"
            " AsyncScopedSession or a list of them; it returned an object of type"
            f" {type(value).__name__}.",
            pytrace=False,
        )
    found: dict[int, tuple[int, AnyScopedSession]] = {}
    for index, item in enumerate(value):
        if not isinstance(item, ScopedSession | AsyncScopedSession):
            pytest.fail(
                "The scoped_sessions fixture must return ScopedSession or"
                " AsyncScopedSession objects; it returned an object of type"
                f" {type(item).__name__} among them.",
                pytrace=False,
            )
        found.setdefault(id(item), (index, item))
    if not found:
        pytest.fail(
            "The scoped_sessions fixture returned no ScopedSession: return the ones"
            " whose sessions the code under test uses.",
            pytrace=False,
        )
    return [item for _, item in found.values()], [index for index, _ in found.values()]


class Side(t.NamedTuple):
    """What tells the sync test transaction's engine lookup from the async one's."""

    registry: type[t.Any]
    sessionmaker_of: t.Callable[[t.Any, int], t.Any]
    engine_class: t.Callable[[], type[t.Any]]
    fixture: str
    #: How messages name the factory, the engine and the registries.
    factory: str
    engine: str
    registries: str
    none_found: str


def _sync_engine_class() -> type[t.Any]:
    import sqlalchemy as sa

    return sa.Engine


def _async_engine_class() -> type[t.Any]:
    from sqlalchemy.ext.asyncio import AsyncEngine

    return AsyncEngine


SYNC = Side(
    ScopedSession,
    sessionmaker_of,
    _sync_engine_class,
    "scoped_session_engine",
    "a sessionmaker",
    "an engine",
    "scoped_sessions",
    "no sync ScopedSession, so there is no engine to default scoped_session_engine to;"
    f" for AsyncScopedSessions use the {ASYNC_FIXTURE} fixture.",
)
ASYNC = Side(
    AsyncScopedSession,
    async_sessionmaker_of,
    _async_engine_class,
    "scoped_session_async_engine",
    "an async_sessionmaker",
    "an async engine",
    "AsyncScopedSessions",
    "no AsyncScopedSession, so there is no engine to default scoped_session_async_engine to.",
)


def bound_engine(side: Side, registries: list[AnyScopedSession], indexes: list[int]) -> t.Any:
    """The one engine that ``side``'s registries' factories are bound to."""
    engine_class = side.engine_class()
    define = (
        f"Define a fixture named '{side.fixture}' in your conftest.py that returns the"
        f" {engine_class.__name__} to test against."
    )
    engines: dict[int, t.Any] = {}
    for index, scoped in zip(indexes, registries, strict=True):
        if not isinstance(scoped, side.registry):
            continue
        bind = side.sessionmaker_of(scoped, index).kw.get("bind")
        if not isinstance(bind, engine_class):
            pytest.fail(
                f"scoped_sessions[{index}] {scoped!r} has {side.factory} that is not"
                f" bound to {side.engine}, so the test transaction does not know which"
                f" database to use. {define}",
                pytrace=False,
            )
        engines.setdefault(id(bind), bind)
    if len(engines) > 1:
        pytest.fail(
            f"The {side.registries} are bound to different engines; the test transaction"
            f" runs on one. {define}",
            pytrace=False,
        )
    if not engines:
        pytest.fail(f"The scoped_sessions fixture returned {side.none_found}", pytrace=False)
    return next(iter(engines.values()))


def checked_engine(side: Side, value: object) -> t.Any:
    engine_class = side.engine_class()
    if not isinstance(value, engine_class):
        pytest.fail(
            f"The {side.fixture} fixture must return a sqlalchemy {engine_class.__name__}"
            " (the plugin opens its own connection); it returned an object of type"
            f" {type(value).__name__}.",
            pytrace=False,
        )
    return value


class NoDefaultEngine(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """The sync registries are not bound to one engine, so ``scoped_session_engine``
    has no default. ``unbound``: a registry that is not a FlaskScopedSession (whose
    apps give engines) has no engine at all, which no test transaction can serve."""

    def __init__(self, message: str, *, unbound: bool) -> None:
        super().__init__(message, pytrace=False)
        self.unbound = unbound


def default_engine(registries: list[AnyScopedSession], indexes: list[int]) -> t.Any:
    """The one engine the sync registries' sessionmakers are bound to, the
    default ``scoped_session_engine``; or :class:`NoDefaultEngine`."""
    engine_class = SYNC.engine_class()
    define = (
        f"Define a fixture named '{ENGINE_FIXTURE}' in your conftest.py that returns the"
        " Engine to test against."
    )
    engines: dict[int, t.Any] = {}
    for index, scoped in zip(indexes, registries, strict=True):
        if not isinstance(scoped, ScopedSession):
            continue
        bind = sessionmaker_of(scoped, index).kw.get("bind")
        if isinstance(bind, engine_class):
            engines.setdefault(id(bind), bind)
        elif scoped.scope_kind != "flask":
            raise NoDefaultEngine(
                f"scoped_sessions[{index}] {scoped!r} has a sessionmaker that is not bound"
                " to an engine, so the test transaction does not know which database to"
                f" use. {define}",
                unbound=True,
            )
    if len(engines) == 1:
        return next(iter(engines.values()))
    if engines:
        why = (
            "The ScopedSessions are bound to different engines: the plugin begins a test"
            " transaction on each engine a test uses, and there is no one"
        )
    else:
        why = (
            "The FlaskScopedSessions' sessionmakers are bound to no engine (their apps'"
            " engines are used, each in a test transaction of its own), so there is no"
        )
    raise NoDefaultEngine(f"{why} default {ENGINE_FIXTURE}. {define}", unbound=False)


def sync_engine(
    request: pytest.FixtureRequest, registries: list[AnyScopedSession], indexes: list[int]
) -> tuple[t.Any, bool]:
    """The engine of the sync test transaction's sessions that name none, or None;
    and whether the user chose it (a ``scoped_session_engine`` fixture of their own).

    Without a default, sessions use the engines they name (their app's, their
    sessionmaker's), each in a test transaction of its own.
    """
    try:
        value = request.getfixturevalue(ENGINE_FIXTURE)
    except NoDefaultEngine as exc:
        if exc.unbound:
            raise
        return None, False
    engine = checked_engine(SYNC, value)
    return engine, request.node.stash.get(DEFAULT_ENGINE, None) is not engine
