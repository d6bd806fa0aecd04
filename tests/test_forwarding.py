"""What the proxy's members do with what they are given: arguments reach the
caller's session exactly as given, settable names set the session's, and a
failing scope makes nothing. Fake sessions: this is pure logic."""

from __future__ import annotations

import asyncio
import gc
import logging
import typing as t
import weakref

import pytest
from fakes import TrivialSession

from scoped_session import ScopedSession
from scoped_session.asyncio import AsyncScopedSession


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


def test_arguments_reach_the_session_exactly_as_given() -> None:
    # Typed as Any: the proxy's members are typed for SQLAlchemy's Session, and
    # what is checked here is what reaches a session of any kind at run time.
    Session: t.Any = ScopedSession(Recording)
    session = Session()
    assert Session.add() == "added"
    Session.add(1)
    Session.add(1, two=2)
    many = tuple(range(12))
    Session.add(*many, a=1, b=2, c=3)
    Session.add(two=2)
    assert session.calls == [
        ("add", (), {}),
        ("add", (1,), {}),
        ("add", (1,), {"two": 2}),
        ("add", many, {"a": 1, "b": 2, "c": 3}),
        ("add", (), {"two": 2}),
    ]
    # Not the session's defaults filled in: what the caller passed, no more.
    assert Session.get_bind() == (None, {})
    assert Session.get_bind("m", clause="c") == ("m", {"clause": "c"})
    with pytest.raises(TypeError):
        Session.get_bind("m", "extra")
    Session.remove()


def test_settable_names_set_the_sessions_and_refuse_delete() -> None:
    Session = ScopedSession(Recording)
    Session.autoflush = False  # makes the session first
    assert Session().autoflush is False
    with pytest.raises(AttributeError):
        del Session.autoflush
    assert Session().autoflush is False
    Session.remove()


def test_positional_arguments_to_the_registry_are_refused() -> None:
    Session = ScopedSession(TrivialSession)
    with pytest.raises(TypeError):
        Session(1)  # type: ignore[call-arg]
    assert not Session.registry.has()


def test_a_scopefunc_error_propagates_and_leaves_nothing() -> None:
    def scopefunc() -> object:
        raise LookupError("no request")

    Session: t.Any = ScopedSession(Recording, scopefunc=scopefunc)
    uses: list[t.Callable[[], object]] = [
        Session,
        Session.close,
        lambda: Session.add(1),
        lambda: Session.autoflush,
    ]
    for use in uses:
        with pytest.raises(LookupError, match="no request"):
            use()
    assert Session.stats().created == 0


def test_a_dropped_registry_closes_the_session_it_held(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(TrivialSession)
    session = Session()
    registry = weakref.ref(Session)
    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        del Session
        gc.collect()
    assert registry() is None
    assert session.closed == 1
    assert "ended without remove()" in caplog.text


def test_the_async_proxy_passes_arguments_as_given() -> None:
    Session: t.Any = AsyncScopedSession(AsyncRecording)

    async def main() -> None:
        with pytest.raises(TypeError):
            Session(1)
        assert not Session.registry.has()
        session = Session(flag=True)
        assert session.kw == {"flag": True}
        many = tuple(range(12))
        assert Session.add(1, two=2) == "added"
        Session.add(*many, a=1)
        assert session.calls == [("add", (1,), {"two": 2}), ("add", many, {"a": 1})]
        assert Session.get_bind("m", clause="c") == ("m", {"clause": "c"})
        Session.autoflush = False
        assert session.autoflush is False
        await Session.remove()
        assert session.closed == 1
        assert not Session.registry.has()

    asyncio.run(main())
