"""The proxy with and without its C speedups.

tox runs the whole suite both ways: the usual environments with the speedups
required (``SCOPED_SESSION_REQUIRE_SPEEDUPS=1``, so a build that silently fell
back to Python fails here), ``pure`` with ``SCOPED_SESSION_PURE_PYTHON=1``.
The tests below hold in either mode unless marked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import typing as t
import weakref

import pytest
from helpers import TrivialSession

from scoped_session import ScopedSession, _scopes, _tasks
from scoped_session._scopes import Cell, Stats, ThreadScope
from scoped_session._tasks import AsyncCell
from scoped_session.asyncio import AsyncScopedSession

compiled = pytest.mark.skipif(_scopes.speedups is None, reason="runs without the C speedups")


class Recording(TrivialSession):
    """Records the arguments of every call of its methods."""

    def __init__(self, **kw: t.Any) -> None:
        super().__init__(**kw)
        self.calls: list[tuple[str, tuple[t.Any, ...], dict[str, t.Any]]] = []
        self.autoflush = True

    def add(self, *args: t.Any, **kwargs: t.Any) -> str:
        self.calls.append(("add", args, kwargs))
        return "added"

    def get_bind(self, mapper: object = None, **kw: t.Any) -> tuple[object, dict[str, t.Any]]:
        return mapper, kw


class AsyncRecording(Recording):
    """The same, with a close() to await."""

    async def close(self) -> None:  # type: ignore[override]
        self.closed += 1


def test_the_mode_asked_for_is_the_mode_running() -> None:
    Session = ScopedSession(TrivialSession)
    if os.environ.get("SCOPED_SESSION_PURE_PYTHON"):
        assert _scopes.speedups is None
        assert type(Session._scope.slot) is threading.local
        assert "__call__" in vars(ScopedSession)
    elif os.environ.get("SCOPED_SESSION_REQUIRE_SPEEDUPS"):
        assert _scopes.speedups is not None, "the C speedups were not built or not importable"
    if _scopes.speedups is not None:
        assert isinstance(Session, _scopes.speedups.ProxyBase)
        assert type(Session._scope.slot) is _scopes.speedups.ThreadSlot
        assert "__call__" not in vars(ScopedSession)
    # The async proxy follows (on the Python versions whose asyncio it can read).
    Async = AsyncScopedSession(AsyncRecording)
    if _tasks.ASYNC_SPEEDUPS is None:
        assert "__call__" in vars(AsyncScopedSession)
        assert AsyncCell(Stats(), None, None).home is None
    else:
        assert isinstance(Async, _tasks.ASYNC_SPEEDUPS.AsyncProxyBase)
        assert "__call__" not in vars(AsyncScopedSession)
        assert isinstance(AsyncCell(Stats(), None, None).home, int)


def test_arguments_reach_the_session_exactly_as_given() -> None:
    Session = ScopedSession(Recording)
    session = Session()
    assert Session.add() == "added"
    Session.add(1)
    Session.add(1, two=2)
    many = tuple(range(12))  # more than the C member keeps on its stack
    Session.add(*many, a=1, b=2, c=3)
    Session.add(two=2)
    assert session.calls == [
        ("add", (), {}),
        ("add", (1,), {}),
        ("add", (1,), {"two": 2}),
        ("add", many, {"a": 1, "b": 2, "c": 3}),
        ("add", (), {"two": 2}),
    ]
    assert Session.get_bind() == (None, {})
    assert Session.get_bind("m", clause="c") == ("m", {"clause": "c"})
    with pytest.raises(TypeError):
        Session.get_bind("m", "extra")
    Session.remove()


def test_reading_a_method_gives_the_sessions_own() -> None:
    Session = ScopedSession(Recording)
    session = Session()
    assert Session.add.__self__ is session
    assert Session.add == session.add
    assert Session.autoflush is True
    Session.remove()


def test_the_class_attribute_documents_the_name() -> None:
    member = vars(ScopedSession)["add"]
    assert "add" in (member.__doc__ or "")


@compiled
def test_the_c_member_called_through_the_class() -> None:
    Session = ScopedSession(Recording)
    member = vars(ScopedSession)["add"]
    assert member.__name__ == "add"
    assert member.__qualname__ == "ScopedSession.add"
    # Called through the class, with the proxy first, it is the same call.
    assert member(Session, 7) == "added"
    assert Session().calls == [("add", (7,), {})]
    with pytest.raises(TypeError, match="ScopedSession"):
        member(object(), 7)
    with pytest.raises(TypeError, match="ScopedSession"):
        member()
    with pytest.raises(TypeError, match="ScopedSession"):
        member.__get__(object(), object)
    Session.remove()


def test_settable_names_set_and_refuse_delete() -> None:
    Session = ScopedSession(Recording)
    Session.autoflush = False  # makes the session first
    assert Session().autoflush is False
    with pytest.raises(AttributeError):
        del Session.autoflush
    assert Session().autoflush is False
    with pytest.raises(AttributeError):
        setattr(Session, "add", None)  # noqa: B010
    Session.remove()


def test_positional_arguments_to_the_registry_are_refused() -> None:
    Session = ScopedSession(TrivialSession)
    with pytest.raises(TypeError):
        Session(1)  # type: ignore[call-arg]
    assert not Session.registry.has()


def test_a_scopefunc_error_propagates_and_leaves_nothing() -> None:
    def scopefunc() -> object:
        raise LookupError("no request")

    Session = ScopedSession(Recording, scopefunc=scopefunc)
    for use in (Session, Session.close, lambda: Session.add(1), lambda: Session.autoflush):
        with pytest.raises(LookupError, match="no request"):
            use()
    assert Session.stats().created == 0


@compiled
def test_a_thread_slot_never_sees_another_slots_cell() -> None:
    # Each slot's entry in the thread's state dictionary has a key of its own
    # for good: a new slot, even at a dead one's address, starts empty, also
    # while the old slot's cell is still alive elsewhere.
    stats = Stats()
    kept: list[Cell] = []
    for _ in range(300):
        scope = ThreadScope()
        assert scope.get() is None
        cell = Cell(stats)
        scope.install(cell)
        assert scope.get() is cell
        kept.append(cell)
        del scope
    kept.clear()


@compiled
def test_a_thread_slot_reads_what_was_set_in_each_thread() -> None:
    scope = ThreadScope()
    stats = Stats()
    mine = Cell(stats)
    scope.install(mine)
    seen: list[object] = []

    def other() -> None:
        seen.append(scope.get())
        theirs = Cell(stats)
        scope.install(theirs)
        seen.append(scope.get() is theirs)
        scope.install(None)
        seen.append(scope.get())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None, True, None]
    assert scope.get() is mine
    slot = scope.slot
    del slot.cell
    assert scope.get() is None
    with pytest.raises(AttributeError):
        slot.other = 1
    scope.install(None)


def test_a_dropped_registry_closes_the_session_it_held(caplog: pytest.LogCaptureFixture) -> None:
    # The threading.local behind the slot owns the cell, not the thread state's
    # cache: when the registry goes, its session is closed, thread or no thread.
    Session = ScopedSession(TrivialSession)
    session = Session()
    registry = weakref.ref(Session)
    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        del Session
        gc.collect()
    assert registry() is None
    assert session.closed == 1
    assert "ended without remove()" in caplog.text


def test_speedups_are_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPED_SESSION_PURE_PYTHON", "1")
    assert _scopes._load_speedups() is None
    monkeypatch.setenv("SCOPED_SESSION_PURE_PYTHON", "")
    loaded = _scopes._load_speedups()
    if os.environ.get("SCOPED_SESSION_REQUIRE_SPEEDUPS"):
        assert loaded is not None


def test_the_async_proxy_passes_arguments_and_refuses_positional_ones() -> None:
    Session = AsyncScopedSession(AsyncRecording)

    async def main() -> None:
        with pytest.raises(TypeError):
            Session(1)  # type: ignore[call-arg]
        assert not Session.registry.has()
        session = Session(flag=True)
        assert session.kw == {"flag": True}
        many = tuple(range(12))
        assert Session.add(1, two=2) == "added"
        Session.add(*many, a=1)
        assert session.calls == [("add", (1,), {"two": 2}), ("add", many, {"a": 1})]
        assert Session.add.__self__ is session
        assert Session.get_bind("m", clause="c") == ("m", {"clause": "c"})
        Session.autoflush = False
        assert session.autoflush is False
        await Session.remove()
        assert session.closed == 1
        assert not Session.registry.has()

    asyncio.run(main())


@compiled
def test_the_async_c_member_on_a_foreign_object() -> None:
    member = vars(AsyncScopedSession)["add"]
    with pytest.raises(TypeError, match="AsyncScopedSession"):
        member(object(), 1)
    with pytest.raises(TypeError, match="AsyncScopedSession"):
        member.__get__(object(), object)


@pytest.mark.skipif(_tasks.ASYNC_SPEEDUPS is None, reason="runs without the async C path")
def test_the_async_c_path_refuses_what_it_cannot_read() -> None:
    speedups = _tasks.ASYNC_SPEEDUPS
    with pytest.raises(TypeError, match="AsyncCell"):
        speedups.mark_cell(object())

    class NoSlots:
        pass

    with pytest.raises(TypeError, match="no slot session"):
        speedups.configure_async(NoSlots, {})
    with pytest.raises(TypeError):
        speedups.configure_async(AsyncCell, [])  # not a dict
    # The real configuration is untouched by the refusals.
    Session = AsyncScopedSession(AsyncRecording)

    async def main() -> None:
        session = Session()
        assert Session() is session
        await Session.remove()

    asyncio.run(main())


@pytest.mark.skipif(_tasks.ASYNC_SPEEDUPS is None, reason="runs without the async C path")
def test_a_cell_records_where_it_was_made() -> None:
    cells: list[AsyncCell] = []

    async def make() -> None:
        cells.append(AsyncCell(Stats(), asyncio.current_task(), asyncio.get_running_loop()))

    asyncio.run(make())
    asyncio.run(make())
    thread = threading.Thread(target=lambda: asyncio.run(make()))
    thread.start()
    thread.join()
    one, two, three = cells
    assert one.thread == two.thread == threading.get_ident() != three.thread
    # Each task runs in a context of its own: every cell names a different one.
    assert len({one.home, two.home, three.home}) == 3
