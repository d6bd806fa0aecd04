"""ScopedSession's registry, remove(), remove_all(), configure() and units of work."""

from __future__ import annotations

import logging
import threading
import typing as t

import pytest
from fakes import TrivialSession

import scoped_session
from scoped_session import (
    ScopedSession,
    ScopedSessionError,
    SessionAlreadyPresent,
    UnitOfWork,
)


class FailingClose(TrivialSession):
    def close(self) -> None:
        super().close()
        raise OSError("close failed")


class FailingCommit(TrivialSession):
    def commit(self) -> None:
        raise OSError("commit failed")


@pytest.fixture
def Session() -> ScopedSession[TrivialSession]:
    return ScopedSession(TrivialSession)


def test_public_names() -> None:
    assert scoped_session.scoped_session is ScopedSession
    assert scoped_session.__all__ == sorted(scoped_session.__all__)
    for name in scoped_session.__all__:
        assert hasattr(scoped_session, name)
    assert issubclass(ScopedSessionError, RuntimeError)
    assert issubclass(SessionAlreadyPresent, ScopedSessionError)


def test_same_session_until_removed(Session: ScopedSession[TrivialSession]) -> None:
    first = Session()
    assert Session() is first
    assert Session.registry() is first
    Session.remove()
    assert first.closed == 1
    second = Session()
    assert second is not first


def test_session_factory_is_kept(Session: ScopedSession[TrivialSession]) -> None:
    assert Session.session_factory is TrivialSession


def test_kwargs_make_the_session(Session: ScopedSession[TrivialSession]) -> None:
    session = Session(autoflush=False)
    assert session.kw == {"autoflush": False}
    with pytest.raises(SessionAlreadyPresent, match="already present"):
        Session(autoflush=True)
    assert Session() is session


def test_registry_has_set_clear(Session: ScopedSession[TrivialSession]) -> None:
    assert not Session.registry.has()
    mine = TrivialSession()
    Session.registry.set(mine)
    assert Session.registry.has()
    assert Session() is mine
    Session.registry.clear()
    assert not Session.registry.has()
    assert mine.closed == 0  # clear forgets without closing
    assert Session() is not mine


def test_remove_without_session_is_a_noop(Session: ScopedSession[TrivialSession]) -> None:
    Session.remove()
    Session.remove()
    assert not Session.registry.has()


def test_remove_forgets_even_when_close_raises() -> None:
    Session = ScopedSession(FailingClose)
    broken = Session()
    with pytest.raises(OSError, match="close failed"):
        Session.remove()
    assert not Session.registry.has()
    assert Session() is not broken


def test_factory_that_raises_leaves_nothing() -> None:
    calls = []

    def factory() -> TrivialSession:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("db down")
        return TrivialSession()

    Session = ScopedSession(factory)
    with pytest.raises(ConnectionError):
        Session()
    assert not Session.registry.has()
    assert Session._scope.cells() == []
    assert isinstance(Session(), TrivialSession)


def test_close_through_the_proxy_keeps_the_session(Session: ScopedSession[TrivialSession]) -> None:
    session = Session()
    Session.close()
    assert session.closed == 1
    assert Session() is session


def test_proxy_makes_the_session_on_first_use(Session: ScopedSession[TrivialSession]) -> None:
    Session.commit()
    assert Session.registry.has()
    assert Session().committed == 1


def test_names_the_proxy_lacks_are_attribute_errors(
    Session: ScopedSession[TrivialSession],
) -> None:
    """No ``__getattr__``: a name SQLAlchemy's proxy lacks fails at once, public or
    private, and makes no session; the session's own are reached with ``Session()``."""
    with pytest.raises(AttributeError, match="'kw'"):
        _ = Session.kw  # type: ignore[attr-defined]  # not forwarded
    with pytest.raises(AttributeError):
        _ = Session._private_thing  # type: ignore[attr-defined]  # not forwarded
    with pytest.raises(AttributeError, match="nope"):
        _ = Session.nope  # type: ignore[attr-defined]  # not forwarded
    assert not Session.registry.has()
    assert Session().kw == {}


def test_threads_get_their_own_sessions(Session: ScopedSession[TrivialSession]) -> None:
    n = 8
    barrier = threading.Barrier(n)
    seen: list[TrivialSession] = []
    lock = threading.Lock()

    def work() -> None:
        session = Session()
        barrier.wait(timeout=10)  # all alive at once: none can reuse another's
        with lock:
            seen.append(session)
        assert Session() is session
        Session.remove()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert len({id(s) for s in seen}) == n
    assert all(s.closed == 1 for s in seen)


def test_remove_all_closes_every_thread_and_counts(Session: ScopedSession[TrivialSession]) -> None:
    n = 5
    ready = threading.Barrier(n + 1)
    done = threading.Event()
    made: list[TrivialSession] = []

    def hold() -> None:
        made.append(Session())
        ready.wait(timeout=10)
        done.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=10)
    mine = Session()
    try:
        assert Session.remove_all() == n + 1
        assert all(s.closed == 1 for s in [*made, mine])
        assert not Session.registry.has()
        assert Session.remove_all() == 0
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
            assert not thread.is_alive()
    assert all(s.closed == 1 for s in made)  # not closed again at thread exit


def test_remove_all_closes_the_rest_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    sessions: list[TrivialSession] = []
    factories: list[type[TrivialSession]] = [FailingClose, TrivialSession, FailingClose]

    def factory() -> TrivialSession:
        session = factories[len(sessions)]()
        sessions.append(session)
        return session

    Session = ScopedSession(factory, scopefunc=lambda: key)
    for key in range(3):  # noqa: B007 (read by the scopefunc)
        Session()
    with caplog.at_level(logging.ERROR, "scoped_session"), pytest.raises(ExceptionGroup) as info:
        Session.remove_all()
    assert len(info.value.exceptions) == 2
    assert all(s.closed == 1 for s in sessions)
    assert len([r for r in caplog.records if r.exc_info]) == 2
    assert Session._scope.cells() == [] or all(c.session is None for c in Session._scope.cells())


def test_configure_warns_when_a_session_exists_in_any_thread() -> None:
    class Factory:
        def __init__(self) -> None:
            self.options: dict[str, object] = {}

        def __call__(self) -> TrivialSession:
            return TrivialSession(**self.options)

        def configure(self, **kw: object) -> None:
            self.options.update(kw)

    factory = Factory()
    Session = ScopedSession(factory)
    Session.configure(autoflush=False)  # no session anywhere: no warning
    assert factory.options == {"autoflush": False}

    made = threading.Event()
    release = threading.Event()

    def hold() -> None:
        Session()
        made.set()
        release.wait(timeout=10)
        Session.remove()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert made.wait(timeout=10)
        assert not Session.registry.has()  # the caller itself has none
        with pytest.warns(UserWarning, match="already present"):
            Session.configure(expire_on_commit=False)
        assert factory.options["expire_on_commit"] is False
    finally:
        release.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_configure_needs_a_configurable_factory(Session: ScopedSession[TrivialSession]) -> None:
    with pytest.raises(TypeError, match="sessionmaker"):
        Session.configure(autoflush=False)


# -- units of work ------------------------------------------------------------


def test_scope_commits_closes_and_forgets(Session: ScopedSession[TrivialSession]) -> None:
    with Session.scope(commit=True) as session:
        assert Session() is session
    assert session.committed == 1
    assert session.closed == 1
    assert not Session.registry.has()


def test_scope_without_commit_only_closes(Session: ScopedSession[TrivialSession]) -> None:
    with Session.scope() as session:
        pass
    assert (session.committed, session.closed) == (0, 1)


def test_scope_on_error_closes_without_commit(Session: ScopedSession[TrivialSession]) -> None:
    with pytest.raises(KeyError), Session.scope(commit=True) as session:
        raise KeyError("boom")
    assert (session.committed, session.closed) == (0, 1)
    assert not Session.registry.has()


def test_nested_scope_joins_the_outer_one(Session: ScopedSession[TrivialSession]) -> None:
    with Session.scope(commit=True) as outer:
        with Session.scope(commit=True) as inner:
            assert inner is outer
        assert (outer.committed, outer.closed) == (0, 0)
        assert Session() is outer
    assert (outer.committed, outer.closed) == (1, 1)


def test_scope_shadows_a_session_made_outside_it(Session: ScopedSession[TrivialSession]) -> None:
    before = Session()
    with Session.scope() as inside:
        assert inside is not before
    assert inside.closed == 1
    assert Session() is before
    assert before.closed == 0


def test_scope_is_lazy(Session: ScopedSession[TrivialSession]) -> None:
    unit = Session.scope(commit=True).start()
    assert unit.active
    assert unit.session is None
    unit.end()
    assert not unit.active
    assert Session._stats.created == 0


def test_scope_as_decorator_runs_each_call_in_its_own_unit(
    Session: ScopedSession[TrivialSession],
) -> None:
    seen: list[TrivialSession] = []

    @Session.scope(commit=True)
    def job(x: int) -> int:
        seen.append(Session())
        return x * 2

    assert job(2) == 4
    assert job(3) == 6
    assert seen[0] is not seen[1]
    assert [(s.committed, s.closed) for s in seen] == [(1, 1), (1, 1)]


def test_scope_decorator_needs_parentheses(Session: ScopedSession[TrivialSession]) -> None:
    with pytest.raises(TypeError, match="parentheses"):
        Session.scope(lambda: None)  # type: ignore[arg-type]


def test_scope_commit_must_be_a_bool(Session: ScopedSession[TrivialSession]) -> None:
    with pytest.raises(TypeError, match="commit must be True or False, not an object of type str"):
        Session.scope(commit="yes")  # type: ignore[arg-type]
    assert not Session.registry.has()


def test_a_session_class_of_the_other_kind_is_refused_when_passed() -> None:
    from fakes import AsyncTrivialSession

    with pytest.raises(TypeError, match="factory of async sessions"):
        ScopedSession(AsyncTrivialSession)


def test_failed_commit_raises_and_still_closes() -> None:
    Session = ScopedSession(FailingCommit)
    with pytest.raises(OSError, match="commit failed"), Session.scope(commit=True) as session:
        pass
    assert session.closed == 1
    assert not Session.registry.has()


def test_close_failure_never_hides_the_work_error(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(FailingClose)
    with caplog.at_level(logging.ERROR, "scoped_session"), pytest.raises(KeyError), Session.scope():
        Session()
        raise KeyError("the request's own error")
    assert any("close failed" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert not Session.registry.has()


def test_unit_end_is_idempotent(Session: ScopedSession[TrivialSession]) -> None:
    unit = Session.scope(commit=True).start()
    session = Session()
    unit.end()
    unit.end()
    assert (session.committed, session.closed) == (1, 1)


def test_unit_cannot_start_twice(Session: ScopedSession[TrivialSession]) -> None:
    unit = Session.scope().start()
    with pytest.raises(ScopedSessionError, match=r"Session\.scope\(\)"):
        unit.start()
    unit.end()


def test_unit_ended_from_another_thread(Session: ScopedSession[TrivialSession]) -> None:
    outside = Session()
    unit: UnitOfWork[TrivialSession] = Session.scope().start()
    inside = Session()
    thread = threading.Thread(target=unit.end)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert inside.closed == 1
    # The owner's next use sees the unit ended and gets its earlier session back.
    assert Session() is outside
    assert outside.closed == 0
    # A new unit on this thread gets a fresh session.
    with Session.scope() as fresh:
        assert fresh is not inside


def test_unit_started_while_another_thread_commits_the_old_one_is_fresh() -> None:
    committing, finish = threading.Event(), threading.Event()

    class SlowCommit(TrivialSession):
        def commit(self) -> None:
            committing.set()
            assert finish.wait(timeout=10)
            super().commit()

    Session = ScopedSession(SlowCommit)
    old_unit = Session.scope(commit=True).start()
    old = Session()
    thread = threading.Thread(target=old_unit.end)
    thread.start()
    try:
        assert committing.wait(timeout=10)
        new_unit = Session.scope().start()  # the owner's next request, mid-commit
        assert not new_unit.joined
        assert Session() is not old
    finally:
        finish.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
    new_unit.end()
    assert (old.committed, old.closed) == (1, 1)


def test_remove_inside_a_unit_keeps_the_unit(Session: ScopedSession[TrivialSession]) -> None:
    with Session.scope() as first:
        Session.remove()
        assert first.closed == 1
        second = Session()
        assert second is not first
    assert second.closed == 1


def test_ending_from_other_threads_races_safely(Session: ScopedSession[TrivialSession]) -> None:
    unit = Session.scope(commit=True).start()
    session = Session()
    n = 8
    barrier = threading.Barrier(n)

    def end() -> None:
        barrier.wait(timeout=10)
        unit.end()

    threads = [threading.Thread(target=end) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert (session.committed, session.closed) == (1, 1)


def test_get_remove_cycles_leave_no_entries() -> None:
    Session = ScopedSession(TrivialSession, scopefunc=lambda: key)
    for key in range(1000):  # noqa: B007 (read by the scopefunc)
        Session()
        Session.remove()
    assert Session._scope.cells() == []
    threaded = ScopedSession(TrivialSession)
    for _ in range(1000):
        threaded()
        threaded.remove()
    assert len(threaded._scope.cells()) == 1  # one empty cell, reused
    assert all(c.session is None for c in threaded._scope.cells())


def test_repr_names_the_scope_not_the_factory() -> None:
    secret = "postgresql://user:hunter2@db/app"

    def factory(url: str = secret) -> TrivialSession:
        return TrivialSession()

    assert "hunter2" not in repr(ScopedSession(factory))
    assert repr(ScopedSession(factory, scope="context")) == "<ScopedSession scope=context>"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((42,), {}, TypeError, "sessionmaker"),
        ((TrivialSession,), {"scope": "request"}, ValueError, "scope='thread'"),
        ((TrivialSession, lambda: 1), {"scope": "thread"}, TypeError, "not both"),
        ((TrivialSession, "key"), {}, TypeError, "hashable key"),
    ],
)
def test_bad_arguments(
    args: tuple[t.Any, ...], kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ScopedSession(*args, **kwargs)


class TenantSession(TrivialSession):
    """A session class with names of its own: one on the class, one only on
    instances (set in ``__init__``), which no proxy can know in advance."""

    def __init__(self, **kw: t.Any) -> None:
        super().__init__(**kw)
        self.tenant = "acme"

    def tenant_name(self) -> str:
        return self.tenant.upper()


def test_names_only_the_session_has_are_reached_through_it_in_every_thread() -> None:
    Session = ScopedSession(TenantSession)
    # Not forwarded, before any session exists and after.
    for _ in range(2):
        assert not hasattr(Session, "tenant")
        assert not hasattr(Session, "tenant_name")
        assert Session().tenant == "acme"
    assert Session().tenant_name() == "ACME"
    seen: list[object] = []

    def fresh_thread() -> None:
        seen.append(hasattr(Session, "tenant"))
        seen.append(Session().tenant)
        seen.append(Session().tenant_name())
        Session.remove()

    thread = threading.Thread(target=fresh_thread)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert seen == [False, "acme", "ACME"]
    Session.remove()


def test_the_registry_is_of_the_class_the_user_made() -> None:
    """No class switching: the object is of the class it was made with, whatever
    the scope and whatever sessions it has made."""
    keyed = ScopedSession(TrivialSession, lambda: "key")
    threaded = ScopedSession(TrivialSession)
    for registry in (keyed, threaded):
        registry()
        assert type(registry) is ScopedSession
        assert type(registry).__mro__.count(ScopedSession) == 1
        registry.close()
        registry.remove()
        assert type(registry) is ScopedSession
    assert repr(keyed) == "<ScopedSession scope=scopefunc>"


def test_a_subclass_override_survives_a_custom_key() -> None:
    calls: list[str] = []

    class Audited(ScopedSession[TrivialSession]):
        def close(self) -> None:
            calls.append("close")
            super().close()

    Session = Audited(TrivialSession, lambda: "key")
    Session()
    Session.close()
    assert calls == ["close"]
    assert Session().closed == 1
    Session.remove()


def test_factory_returning_none_is_a_clear_error() -> None:
    Session: ScopedSession[t.Any] = ScopedSession(lambda: None)
    with pytest.raises(TypeError, match="returned None; it must return a new session"):
        Session()
    assert not Session.registry.has()
    assert Session.stats() == (0, 0, 0, 0)  # nothing was made, nothing is owed


def test_settable_names_set_the_sessions_attribute(
    Session: ScopedSession[TrivialSession],
) -> None:
    Session.autoflush = False
    assert Session().autoflush is False  # type: ignore[attr-defined]
    assert Session.autoflush is False
    Session.remove()


def test_what_is_forwarded_does_not_depend_on_the_session() -> None:
    """The proxy's names are SQLAlchemy's proxy's, whatever kind of session the
    caller has now or had before: a session's other names are never forwarded."""

    class Plain:
        def close(self) -> None:
            pass

    kinds: list[type[t.Any]] = [Plain, TenantSession]
    Session: ScopedSession[t.Any] = ScopedSession(lambda: kinds.pop(0)())
    assert isinstance(Session(), Plain)
    assert not hasattr(Session, "tenant")
    Session.remove()
    assert isinstance(Session(), TenantSession)
    assert not hasattr(Session, "tenant")
    assert Session().tenant == "acme"
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(hasattr(Session, "tenant_name")))
    kinds.append(TenantSession)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert found == [False]
    assert Session.stats().created == 2  # the thread's hasattr() made none
    Session.remove_all()


# -- diagnostics --------------------------------------------------------------


def test_stats_count_live_created_removed_and_reaped(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(TrivialSession)
    assert Session.stats() == scoped_session.SessionStats(0, 0, 0, 0)
    Session()
    with Session.scope():
        Session()
        assert Session.stats().live == 2
    Session.remove()

    def forget() -> None:
        Session()  # and the thread ends without remove()

    thread = threading.Thread(target=forget, name="forgetful")
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert Session.stats() == scoped_session.SessionStats(live=0, created=3, removed=2, reaped=1)


def test_a_reap_names_the_thread_and_where_the_session_was_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = ScopedSession(TrivialSession)

    def forget() -> None:
        Session.commit()  # the session is made here, through the proxy

    line = forget.__code__.co_firstlineno + 1
    thread = threading.Thread(target=forget, name="forgetful-worker")
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    (record,) = [r for r in caplog.records if "finalizer" in r.getMessage()]
    message = record.getMessage()
    assert "the thread 'forgetful-worker'" in message
    assert f"{__file__}:{line}" in message
    assert record.levelno == logging.WARNING


def test_a_reap_names_the_line_of_the_leaked_session_not_an_earlier_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = ScopedSession(TrivialSession)

    def work() -> None:
        Session.commit()  # made here, then removed: not the leak
        Session.remove()
        Session.commit()  # made here, and the thread ends without remove()

    first = work.__code__.co_firstlineno + 1
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    (record,) = [r for r in caplog.records if "finalizer" in r.getMessage()]
    assert f"{__file__}:{first + 2})" in record.getMessage()
    assert f"{__file__}:{first})" not in record.getMessage()


@pytest.mark.parametrize("how", ["Session()", "Session.registry()", "Session.commit()"])
def test_a_reap_names_the_users_line_whichever_way_the_session_was_made(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    Session = ScopedSession(TrivialSession)
    make = {
        "Session()": lambda: Session(),
        "Session.registry()": lambda: Session.registry(),
        "Session.commit()": lambda: Session.commit(),
    }[how]
    line = make.__code__.co_firstlineno
    thread = threading.Thread(target=make)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    (record,) = [r for r in caplog.records if "finalizer" in r.getMessage()]
    assert f"{__file__}:{line})" in record.getMessage()


def test_a_reaped_unit_is_named_by_its_label(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(TrivialSession)

    def leak() -> None:
        UnitOfWork(Session, label="the request POST /notes").start()  # never ended
        Session()

    thread = threading.Thread(target=leak)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert "the request POST /notes ended without remove()" in caplog.text
    assert Session.stats().reaped == 1


def test_strict_refuses_sessions_outside_a_unit_of_work() -> None:
    Session = ScopedSession(TrivialSession, strict=True)
    with pytest.raises(scoped_session.NoScopeError, match=r"Session\.scope\(\)"):
        Session()
    with pytest.raises(scoped_session.NoScopeError):
        Session.commit()
    assert Session.stats().created == 0
    with Session.scope(commit=True) as session:
        assert Session() is session
    assert session.committed == 1
    assert Session.stats() == scoped_session.SessionStats(0, 1, 1, 0)
    with pytest.raises(TypeError, match="strict must be True or False"):
        ScopedSession(TrivialSession, strict="yes")  # type: ignore[arg-type]
