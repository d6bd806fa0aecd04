"""What the proxy's members do with what they are given: arguments reach the
caller's session as SQLAlchemy's proxy passes them on, settable names set the
session's, a name the proxy does not forward is an AttributeError, and a failing
scope makes nothing. Fake sessions: this is pure logic."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
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


#: What Session.get_bind() passes on besides ``mapper``: every parameter, by keyword,
#: with SQLAlchemy's defaults (the same in 2.0 and 2.1).
GET_BIND_DEFAULTS = {
    "clause": None,
    "bind": None,
    "_sa_skip_events": None,
    "_sa_skip_for_implicit_returning": False,
}


def test_arguments_reach_the_session_as_sqlalchemys_proxy_passes_them() -> None:
    # Typed as Any: the proxy's members are typed for SQLAlchemy's Session, and
    # what is checked here is what reaches a session of any kind at run time.
    Session: t.Any = ScopedSession(Recording)
    session = Session()
    assert Session.add(1) == "added"
    Session.add(1, _warn=False)
    Session.add(instance=2)
    assert session.calls == [
        ("add", (1,), {"_warn": True}),
        ("add", (1,), {"_warn": False}),
        ("add", (2,), {"_warn": True}),
    ]
    # The session's defaults filled in, by keyword, as SQLAlchemy's proxy does.
    assert Session.get_bind() == (None, GET_BIND_DEFAULTS)
    assert Session.get_bind("m", clause="c") == ("m", {**GET_BIND_DEFAULTS, "clause": "c"})
    assert Session.get_bind("m", extra=1) == ("m", {**GET_BIND_DEFAULTS, "extra": 1})
    Session.remove()


def test_arguments_the_signature_refuses_make_no_session() -> None:
    """A call the member's signature refuses is a TypeError before the caller's
    session is read: none is made."""
    Session: t.Any = ScopedSession(Recording)
    calls: list[t.Callable[[], object]] = [
        lambda: Session.add(),
        lambda: Session.add(1, 2, 3),
        lambda: Session.add(1, warn=False),
        lambda: Session.get_bind("m", "extra"),
        lambda: Session.commit(True),
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()
    assert not Session.registry.has()
    assert Session.stats().created == 0


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("in_transaction", "Session().in_transaction()"),
        ("get_transaction", "Session().get_transaction()"),
        ("expire_on_commit", "Session().expire_on_commit"),
        ("dispatch", "Session().dispatch"),
    ],
)
def test_the_sessions_other_members_are_attribute_errors(name: str, hint: str) -> None:
    """A member of SQLAlchemy's Session that its proxy does not forward is not
    forwarded either: an AttributeError at once that says to use the session, and
    no session is made."""
    Session = ScopedSession(Recording)
    assert not hasattr(Session, name)
    assert not hasattr(ScopedSession, name)
    with pytest.raises(AttributeError) as caught:
        getattr(Session, name)
    assert str(caught.value) == (
        f"'ScopedSession' object has no attribute '{name}': ScopedSession does not forward"
        f" the session's {name}, like SQLAlchemy's scoped_session. Use it on the session: {hint}"
    )
    assert caught.value.name == name
    assert caught.value.obj is Session
    assert not Session.registry.has()
    assert Session.stats().created == 0


def test_other_names_are_attribute_errors_and_make_no_session() -> None:
    """A typo, a private name, or a member only a custom session has: the registry
    has no ``__getattr__``; the session's own members are reached with ``Session()``."""
    Session: t.Any = ScopedSession(Recording)
    for name in ("exceute", "_private", "kw", "calls", "__wrapped__"):
        with pytest.raises(AttributeError, match=f"has no attribute '{name}'"):
            getattr(Session, name)
    assert not Session.registry.has()
    assert Session().kw == {}
    assert not any(hasattr(cls, "__getattr__") for cls in type(Session).__mro__)
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


def test_the_async_proxy_passes_arguments_as_sqlalchemys_does() -> None:
    Session: t.Any = AsyncScopedSession(AsyncRecording)

    async def main() -> None:
        with pytest.raises(TypeError):
            Session(1)
        assert not Session.registry.has()
        with pytest.raises(TypeError):
            Session.add(1, two=2)
        assert not Session.registry.has()
        session = Session(flag=True)
        assert session.kw == {"flag": True}
        assert Session.add(1) == "added"
        Session.add(2, _warn=False)
        assert session.calls == [("add", (1,), {"_warn": True}), ("add", (2,), {"_warn": False})]
        # AsyncSession.get_bind takes fewer parameters than Session's.
        assert Session.get_bind("m", clause="c") == ("m", {"clause": "c", "bind": None})
        Session.autoflush = False
        assert session.autoflush is False
        await Session.remove()
        assert session.closed == 1
        assert not Session.registry.has()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("in_transaction", "Session().in_transaction()"),
        ("sync_session", "Session().sync_session"),
        ("run_sync", "await Session().run_sync(...)"),
    ],
)
def test_the_async_sessions_other_members_are_attribute_errors(name: str, hint: str) -> None:
    Session = AsyncScopedSession(AsyncRecording)
    assert not hasattr(Session, name)
    with pytest.raises(AttributeError, match=re.escape(f"Use it on the session: {hint}")):
        getattr(Session, name)
    assert not Session.registry.has()
    assert Session.stats().created == 0
