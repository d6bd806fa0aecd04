"""Where sessions live: context scope (threads, tasks, greenlets), custom keys,
thread exit, and cells that are never confused with reused keys."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib.util
import logging
import threading
import typing as t

import pytest
from fakes import TrivialSession

from scoped_session import ScopedSession


def run_threads(target: t.Callable[[], object], n: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_context_scope_per_thread() -> None:
    Session = ScopedSession(TrivialSession, scope="context")
    n = 6
    barrier = threading.Barrier(n)
    seen: set[int] = set()
    lock = threading.Lock()

    def work() -> None:
        session = Session()
        barrier.wait(timeout=10)
        assert Session() is session
        with lock:
            seen.add(id(session))
        Session.remove()

    run_threads(work, n)
    assert len(seen) == n


def test_context_scope_per_task() -> None:
    Session = ScopedSession(TrivialSession, scope="context")

    async def task(started: asyncio.Barrier) -> TrivialSession:
        session = Session()
        await started.wait()  # all tasks hold a session at once
        assert Session() is session
        Session.remove()
        return session

    async def main() -> list[TrivialSession]:
        started = asyncio.Barrier(5)
        return await asyncio.gather(*(task(started) for _ in range(5)))

    sessions = asyncio.run(main())
    assert len({id(s) for s in sessions}) == 5
    assert all(s.closed == 1 for s in sessions)


@pytest.mark.skipif(
    importlib.util.find_spec("greenlet") is None, reason="greenlet is not installed"
)
def test_context_scope_per_greenlet() -> None:
    import greenlet

    Session = ScopedSession(TrivialSession, scope="context")
    seen: list[TrivialSession] = []

    def body() -> None:
        seen.append(Session())
        parent = greenlet.getcurrent().parent
        assert parent is not None
        parent.switch()
        seen.append(Session())
        Session.remove()

    first, second = greenlet.greenlet(body), greenlet.greenlet(body)
    first.switch()
    second.switch()
    first.switch()
    second.switch()
    assert seen[0] is seen[2]
    assert seen[1] is seen[3]
    assert seen[0] is not seen[1]
    assert Session() not in seen


def test_context_scope_in_copied_context_is_separate_after_remove() -> None:
    Session = ScopedSession(TrivialSession, scope="context")
    ctx = contextvars.copy_context()
    inner = ctx.run(Session)
    outer = Session()
    assert inner is not outer


def test_scopefunc_keys() -> None:
    key = "a"
    Session = ScopedSession(TrivialSession, lambda: key)
    a = Session()
    key = "b"
    b = Session()
    assert a is not b
    key = "a"
    assert Session() is a
    Session.remove()
    assert a.closed == 1
    key = "b"
    assert Session() is b
    Session.remove()
    assert b.closed == 1


def test_scopefunc_unhashable_key_is_a_type_error() -> None:
    Session = ScopedSession(TrivialSession, lambda: ["not", "hashable"])
    with pytest.raises(TypeError, match="unhashable key of type list"):
        Session()
    with pytest.raises(TypeError, match="unhashable key of type list"):
        Session.close()


def test_scopefunc_shared_key_across_threads_makes_one_session() -> None:
    Session = ScopedSession(TrivialSession, lambda: "shared")
    n = 8
    barrier = threading.Barrier(n)
    seen: list[TrivialSession] = []

    def work() -> None:
        barrier.wait(timeout=10)
        seen.append(Session())

    run_threads(work, n)
    assert len({id(s) for s in seen}) == 1
    Session.remove()


def test_thread_exit_closes_session_with_gc_disabled(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(TrivialSession)
    made: list[TrivialSession] = []
    gc.disable()
    try:
        with caplog.at_level(logging.WARNING, "scoped_session"):
            run_threads(lambda: made.append(Session()), 10)
    finally:
        gc.enable()
    assert len(made) == 10
    assert all(s.closed == 1 for s in made)
    assert Session._stats.reaped == 10
    assert sum("remove()" in r.getMessage() for r in caplog.records) == 10


def test_thread_exit_after_remove_closes_nothing_twice() -> None:
    Session = ScopedSession(TrivialSession)
    made: list[TrivialSession] = []

    def work() -> None:
        made.append(Session())
        Session.remove()

    run_threads(work, 4)
    assert [s.closed for s in made] == [1, 1, 1, 1]
    assert Session._stats.reaped == 0


def test_thread_exit_reap_logs_a_failing_close(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(TrivialSession):
        def close(self) -> None:
            raise OSError("socket gone")

    Session = ScopedSession(Broken)
    with caplog.at_level(logging.WARNING, "scoped_session"):
        run_threads(Session.registry.__call__, 1)
    assert any(r.exc_info and "socket gone" in str(r.exc_info[1]) for r in caplog.records)


def test_reused_thread_idents_never_inherit_a_session() -> None:
    # Thread idents are reused as soon as a thread ends; a registry keyed on
    # them hands a dead thread's session to the next thread.
    Session = ScopedSession(TrivialSession)
    idents: dict[int, TrivialSession] = {}
    reused = 0
    box: list[tuple[int, TrivialSession]] = []

    def work() -> None:
        box.append((threading.get_ident(), Session()))

    for _ in range(50):
        box.clear()
        run_threads(work, 1)
        ident, session = box[0]
        if ident in idents:
            reused += 1
            assert session is not idents[ident]
        idents[ident] = session
    assert reused > 0  # the test only means something if idents were reused


def test_context_scope_task_exit_closes_unremoved_session() -> None:
    Session = ScopedSession(TrivialSession, scope="context")

    async def leave_it() -> TrivialSession:
        return Session()

    async def main() -> TrivialSession:
        return await asyncio.create_task(leave_it())

    session = asyncio.run(main())
    gc.collect()  # the finished task and its context are garbage now
    assert session.closed == 1
