"""AsyncScopedSession: a session per task, units of work shared with the tasks they
start, detection of two tasks on one session; real AsyncSession objects on SQLite
(aiosqlite) and PostgreSQL (asyncpg and psycopg)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import re
import threading
import typing as t
import warnings
import weakref

import pytest
from fakes import HAS_SQLALCHEMY, AsyncTrivialSession, TrivialSession

from scoped_session import ScopedSessionError, SessionAlreadyPresent
from scoped_session._tasks import drain_closing
from scoped_session.asyncio import AsyncScopedSession, ConcurrentUseError, ConcurrentUseWarning

# The tests on real databases skip without SQLAlchemy, or greenlet, which its asyncio
# extension needs (their fixtures: adb, sqlite_adb).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import AsyncDatabase, AsyncDB, Note, reaches_the_session, refused_with_a_hint
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker


def scoped(db: AsyncDatabase, **kw: t.Any) -> AsyncScopedSession[AsyncSession]:
    return AsyncScopedSession(async_sessionmaker(db.engine), **kw)


def assert_clean(db: AsyncDatabase) -> None:
    assert db.checkedout() == 0
    assert db.idle_in_transaction() == 0


# -- the proxy on real sessions ------------------------------------------------------------


def test_proxy_awaits_the_async_methods_and_calls_the_plain_ones(adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)
        session = Session()
        Session.add(Note(text="a"))
        Session.add_all([Note(text="b"), Note(text="c")])
        await Session.flush()
        assert Session().in_transaction()
        assert await Session.scalar(sa.select(sa.func.count()).select_from(Note)) == 3
        texts = (await Session.scalars(sa.select(Note.text).order_by(Note.id))).all()
        assert texts == ["a", "b", "c"]
        rows = (await Session.execute(sa.select(Note.id, Note.text).order_by(Note.id))).all()
        note = await Session.get(Note, rows[0].id)
        assert note is not None
        assert note.text == "a"
        note.text = "A"
        await Session.refresh(note)  # the change is thrown away
        assert note.text == "a"
        merged = await Session.merge(Note(id=rows[1].id, text="B"))
        assert merged in Session
        await Session.delete(note)
        await Session.commit()
        stream = await Session.stream(sa.select(Note.text).order_by(Note.id))
        assert [row.text async for row in stream] == ["B", "c"]
        Session.expunge(merged)
        assert merged not in Session
        await Session.rollback()
        Session.info["seen"] = True
        assert session.info == {"seen": True}
        assert not hasattr(Session, "sync_session")  # not forwarded: Session().sync_session
        await Session.close()  # through the proxy: closed, still registered
        assert Session() is session
        assert Session.registry.has()
        await Session.remove()
        assert not Session.registry.has()
        assert Session._stats.created == Session._stats.removed == 1
        assert await db.count_notes() == 2
        assert_clean(db)

    adb.run(body)


def test_every_public_async_session_name_is_forwarded_or_refused(sqlite_adb: AsyncDB) -> None:
    """The names SQLAlchemy's async_scoped_session forwards reach the caller's
    session; every other public name of the session is an AttributeError that says
    to use ``Session()``, and makes no session."""

    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)
        session = Session()
        names = {n for n in dir(AsyncSession) if not n.startswith("_")} | {
            n for n in vars(session) if not n.startswith("_")
        }
        forwarded = {n for n in names if hasattr(async_scoped_session, n)}
        assert len(forwarded) > 30
        assert len(names - forwarded) > 5
        missing = [n for n in sorted(forwarded) if not reaches_the_session(Session, session, n)]
        assert missing == []
        Session.autoflush = False  # set through the proxy
        assert session.autoflush is False
        await Session.commit()  # the written-out methods reach the session
        await Session.reset()
        Session.expire_all()
        Session.expunge_all()
        await Session.rollback()
        await Session.remove()
        not_refused = [n for n in sorted(names - forwarded) if not refused_with_a_hint(Session, n)]
        assert not_refused == []
        assert not Session.registry.has()
        assert Session.stats().created == 1

    sqlite_adb.run(body)


def test_names_the_proxy_does_not_forward_are_attribute_errors() -> None:
    """No name is forwarded but SQLAlchemy's proxy's: another is an AttributeError at
    once, which makes no session; the session's own members are reached with
    ``Session()``."""

    class Extra(AsyncTrivialSession):
        def shout(self) -> str:
            return "hi"

    Session = AsyncScopedSession(AsyncTrivialSession)
    Other = AsyncScopedSession(Extra)

    async def main() -> None:
        for name in ("shout", "kw", "closed", "nothing_like_this", "_private"):
            with pytest.raises(AttributeError, match=f"has no attribute '{name}'"):
                getattr(Other, name)  # before any session: the lookup makes none
        # AsyncSession's members that SQLAlchemy's proxy lacks say what to use.
        hints = {
            "in_transaction": "Session().in_transaction()",
            "run_sync": "await Session().run_sync(...)",
            "sync_session": "Session().sync_session",
        }
        for name, hint in hints.items():
            with pytest.raises(AttributeError, match=re.escape(hint)):
                getattr(Other, name)
        assert not Other.registry.has()
        assert Other.stats().created == 0
        assert Other().shout() == "hi"
        assert Session().kw == {}  # an instance attribute
        assert Session().closed == 0
        extra = Extra()
        Session.registry.set(extra)
        assert Session() is extra
        with pytest.raises(AttributeError):
            Session.shout  # type: ignore[attr-defined]  # noqa: B018  # the session's own: still not
        await Session.remove()
        await Other.remove()

    asyncio.run(main())


# -- a session per task ----------------------------------------------------------------


def test_each_task_gets_its_own_session_not_its_parents(caplog: pytest.LogCaptureFixture) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def child(ready: asyncio.Barrier) -> AsyncTrivialSession:
        session = Session()
        await ready.wait()  # all of them hold a session at once
        assert Session() is session
        return session

    async def main() -> tuple[AsyncTrivialSession, list[AsyncTrivialSession]]:
        parent = Session()  # made before the children start: they must not inherit it
        ready = asyncio.Barrier(5)
        children = await asyncio.gather(*(child(ready) for _ in range(5)))
        assert Session() is parent
        await drain_closing()
        await Session.remove()
        return parent, children

    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        parent, children = asyncio.run(main())
    assert len({id(s) for s in [parent, *children]}) == 6
    # The children never removed theirs: each was closed when its task ended.
    assert [s.closed for s in children] == [1] * 5
    assert parent.closed == 1
    assert Session._stats.reaped == 5
    assert sum("without remove()" in r.getMessage() for r in caplog.records) == 5


def test_a_unit_is_shared_with_child_tasks_only_while_open(sqlite_adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)
        used, ended = asyncio.Event(), asyncio.Event()
        seen: dict[str, AsyncSession] = {}

        async def child() -> None:
            seen["during"] = Session()
            await Session.execute(sa.text("SELECT 1"))
            used.set()
            await ended.wait()
            seen["after"] = Session()
            await Session.remove()

        async with Session.scope() as unit_session:
            task = asyncio.create_task(child())
            await used.wait()
            assert seen["during"] is unit_session
        ended.set()
        await task
        assert seen["after"] is not unit_session
        assert not Session.registry.has()
        assert_clean(db)

    sqlite_adb.run(body)


def test_scope_nested_in_one_task_joins_in_another_task_is_its_own() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def child() -> AsyncTrivialSession:
        async with Session.scope() as own:
            return own

    async def main() -> None:
        async with Session.scope() as outer:
            async with Session.scope() as inner:
                assert inner is outer
            assert outer.closed == 0  # the joined unit ended nothing
            own = await asyncio.create_task(child())
            assert own is not outer
            assert own.closed == 1
            assert Session() is outer
            assert outer.closed == 0
        assert outer.closed == 1
        assert not Session.registry.has()

    asyncio.run(main())


def test_a_bare_session_comes_back_after_a_unit() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> None:
        bare = Session()
        async with Session.scope() as unit_session:
            assert unit_session is not bare
        assert Session() is bare
        assert bare.closed == 0
        await Session.remove()
        assert bare.closed == 1

    asyncio.run(main())


# -- units of work on real databases -------------------------------------------------------


def test_scope_commits_or_rolls_back_and_always_closes(adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)
        async with Session.scope(commit=True):
            Session.add(Note(text="kept"))
        with pytest.raises(ValueError, match="boom"):
            async with Session.scope(commit=True):
                Session.add(Note(text="dropped"))
                await Session.flush()
                raise ValueError("boom")

        @Session.scope(commit=True)
        async def job(text: str) -> int:
            Session.add(Note(text=text))
            await Session.flush()
            return 7

        assert await job("decorated") == 7
        async with Session.scope():  # commit=False: rolled back
            Session.add(Note(text="not committed"))
        async with db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(Note.text).order_by(Note.text))).scalars().all()
        assert rows == ["decorated", "kept"]
        assert Session._stats.created == Session._stats.removed == 4
        assert not Session.registry.has()
        assert_clean(db)

    adb.run(body)


def test_a_cancelled_task_has_its_unit_rolled_back_and_closed(adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)
        inside = asyncio.Event()

        async def work() -> None:
            async with Session.scope(commit=True):
                Session.add(Note(text="never"))
                await Session.flush()  # a transaction is open on a connection now
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(work())
        await inside.wait()
        assert db.checkedout() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.count_notes() == 0
        assert_clean(db)

    adb.run(body)


def test_tasks_that_never_remove_have_their_sessions_closed(adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)

        async def query(i: int) -> int:
            return int((await Session.scalars(sa.select(sa.literal(i)))).one())

        assert await asyncio.gather(*(query(i) for i in range(20))) == list(range(20))
        await drain_closing()
        assert Session._stats.reaped == 20
        assert_clean(db)

    logging.getLogger("scoped_session").setLevel(logging.ERROR)
    try:
        adb.run(body, pool_size=20)
    finally:
        logging.getLogger("scoped_session").setLevel(logging.NOTSET)


class WaitingSession:
    """An async session with a method that stays inside until told to leave."""

    def __init__(self) -> None:
        self.closed = 0

    async def wait_inside(self, leave: asyncio.Event, inside: asyncio.Event) -> None:
        inside.set()
        await leave.wait()

    def add(self, instance: object, *, _warn: bool = True) -> None:
        pass

    async def close(self) -> None:
        self.closed += 1


def test_concurrent_use_by_two_tasks_warns() -> None:
    Session = AsyncScopedSession(WaitingSession)

    async def main() -> None:
        leave, inside = asyncio.Event(), asyncio.Event()

        async def first_user() -> None:
            await Session().wait_inside(leave, inside)

        async with Session.scope():
            first = asyncio.create_task(first_user())
            await inside.wait()

            async def other() -> None:
                with pytest.warns(ConcurrentUseWarning, match="in use by task"):
                    Session.add(object())

            await asyncio.create_task(other())
            leave.set()
            await first

    asyncio.run(main())


def test_the_owner_inside_the_session_is_seen_by_a_child() -> None:
    Session = AsyncScopedSession(WaitingSession, strict=True)

    async def main() -> None:
        leave, inside = asyncio.Event(), asyncio.Event()
        errors: list[BaseException] = []

        async def child() -> None:
            await inside.wait()
            try:
                Session.add(object())
            except ConcurrentUseError as exc:
                errors.append(exc)
            leave.set()

        async with Session.scope():
            task = asyncio.create_task(child())
            await Session().wait_inside(leave, inside)  # the owner, on the fast path
            await task
        assert len(errors) == 1
        assert isinstance(errors[0], ScopedSessionError)

    asyncio.run(main())


def test_the_owner_is_checked_once_a_child_used_its_unit() -> None:
    Session = AsyncScopedSession(WaitingSession, strict=True)

    async def main() -> None:
        leave, inside = asyncio.Event(), asyncio.Event()

        async def child() -> None:
            await Session().wait_inside(leave, inside)

        async with Session.scope():
            Session.add(object())  # the owner alone: the fast path
            task = asyncio.create_task(child())
            await inside.wait()
            with pytest.raises(ConcurrentUseError):
                Session.add(object())  # the owner again, while the child is inside
            leave.set()
            await task
            Session.add(object())  # the child is done: fine

    asyncio.run(main())


def test_taking_turns_is_not_concurrent_use(sqlite_adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db, strict=True)

        async def child(i: int) -> None:
            Session.add(Note(text=f"child{i}"))
            await Session.flush()

        async with Session.scope(commit=True):
            await Session.execute(sa.text("SELECT 1"))
            for i in range(3):
                await asyncio.create_task(child(i))  # one after the other
            Session.add(Note(text="parent"))
        assert await db.count_notes() == 4
        assert_clean(db)

    sqlite_adb.run(body)


def test_two_tasks_on_a_real_async_session_are_detected(sqlite_adb: AsyncDB) -> None:
    class SlowSession(AsyncSession):
        async def wait_inside(self, leave: asyncio.Event, inside: asyncio.Event) -> None:
            await self.execute(sa.text("SELECT 1"))
            inside.set()
            await leave.wait()

    async def body(db: AsyncDatabase) -> None:
        Session = AsyncScopedSession(async_sessionmaker(db.engine, class_=SlowSession), strict=True)
        leave, inside = asyncio.Event(), asyncio.Event()

        async def second() -> None:
            await inside.wait()
            with pytest.raises(ConcurrentUseError):
                await Session.execute(sa.text("SELECT 2"))
            leave.set()

        async def first() -> None:
            await Session().wait_inside(leave, inside)

        async with Session.scope():
            await asyncio.gather(first(), second())
        assert_clean(db)

    sqlite_adb.run(body)


# -- what the registry keeps ---------------------------------------------------------------


def test_ten_thousand_tasks_without_remove_leave_nothing(caplog: pytest.LogCaptureFixture) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)
    n = 10_000

    async def use() -> AsyncTrivialSession:
        return Session()

    async def main() -> tuple[list[AsyncTrivialSession], list[weakref.ref[t.Any]]]:
        tasks = [asyncio.create_task(use()) for _ in range(n)]
        sessions = await asyncio.gather(*tasks)
        refs = [weakref.ref(task) for task in tasks]
        del tasks
        await drain_closing()
        return sessions, refs

    gc.collect()
    gc.disable()  # reference counting alone must free every task and every entry
    try:
        with caplog.at_level(logging.ERROR, logger="scoped_session"):
            sessions, refs = asyncio.run(main())
        assert len({id(s) for s in sessions}) == n
        assert all(s.closed == 1 for s in sessions)
        assert Session._stats.reaped == n
        assert Session._scope.cells() == []
        assert sum(ref() is not None for ref in refs) == 0
    finally:
        gc.enable()


def test_a_context_dropped_on_the_loop_outside_a_task_is_closed_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> AsyncTrivialSession:
        made: list[AsyncTrivialSession] = []
        done = asyncio.Event()

        def callback() -> None:  # a plain callback: no task is running
            made.append(Session())
            done.set()

        asyncio.get_running_loop().call_soon(callback, context=contextvars.Context())
        await done.wait()
        await asyncio.sleep(0)  # the callback's context is gone by now
        await drain_closing()
        return made[0]

    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        session = asyncio.run(main())
    assert session.closed == 1
    assert Session._stats.reaped == 1
    assert any("context was dropped" in r.getMessage() for r in caplog.records)


def test_a_context_dropped_without_a_loop_is_logged_not_awaited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)
    context = contextvars.Context()
    session = context.run(Session)
    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        del context  # no loop to close it on; close() is never called half-way
    assert session.closed == 0
    assert Session._stats.reaped == 1
    assert any("event loop is gone" in r.getMessage() for r in caplog.records)


# -- ending ----------------------------------------------------------------------------


class GatedClose:
    """A session whose close() waits for a gate, and counts when it got through."""

    def __init__(self) -> None:
        self.closed = 0
        self.closing = asyncio.Event()
        self.gate = asyncio.Event()

    async def close(self) -> None:
        self.closing.set()
        await self.gate.wait()
        self.closed += 1


def test_a_unit_finishes_closing_when_cancelled_meanwhile() -> None:
    Session = AsyncScopedSession(GatedClose)

    async def main() -> GatedClose:
        made: list[GatedClose] = []

        async def work() -> None:
            async with Session.scope() as session:
                made.append(session)

        task = asyncio.create_task(work())
        while not made:
            await asyncio.sleep(0)
        await made[0].closing.wait()
        task.cancel()  # while the unit's close() is waiting
        for _ in range(3):
            await asyncio.sleep(0)
        assert not task.done()
        made[0].gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return made[0]

    assert asyncio.run(main()).closed == 1


class FailingClose(AsyncTrivialSession):
    async def close(self) -> None:
        await super().close()
        raise OSError("close failed")


def test_remove_forgets_even_when_close_raises() -> None:
    Session = AsyncScopedSession(FailingClose)

    async def main() -> None:
        session = Session()
        with pytest.raises(OSError, match="close failed"):
            await Session.remove()
        assert session.closed == 1
        assert not Session.registry.has()
        await Session.remove()  # nothing left: a no-op

    asyncio.run(main())


def test_a_failing_close_never_hides_the_work_error(caplog: pytest.LogCaptureFixture) -> None:
    Session = AsyncScopedSession(FailingClose)

    async def main() -> None:
        with pytest.raises(KeyError):
            async with Session.scope():
                Session()
                raise KeyError("work")
        with pytest.raises(OSError, match="close failed"):
            async with Session.scope():
                Session()

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        asyncio.run(main())
    assert any("Closing a session failed" in r.getMessage() for r in caplog.records)


def test_remove_all_closes_every_tasks_session() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> tuple[int, list[AsyncTrivialSession]]:
        release = asyncio.Event()
        made: list[AsyncTrivialSession] = []

        async def hold() -> None:
            made.append(Session())
            await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(4)]
        while len(made) < 4:
            await asyncio.sleep(0)
        closed = await Session.remove_all()
        release.set()
        await asyncio.gather(*tasks)
        return closed, made

    closed, made = asyncio.run(main())
    assert closed == 4
    assert all(s.closed == 1 for s in made)
    assert Session._stats.reaped == 0  # nothing was left for the tasks' ends


def test_remove_all_closes_all_even_when_some_fail(caplog: pytest.LogCaptureFixture) -> None:
    Session = AsyncScopedSession(FailingClose)

    async def main() -> None:
        async def make() -> None:
            Session()
            await asyncio.sleep(0)

        tasks = [asyncio.create_task(make()) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ExceptionGroup) as info:
            await Session.remove_all()
        assert len(info.value.exceptions) == 2
        await asyncio.gather(*tasks)

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        asyncio.run(main())


# -- the registry and bad input ------------------------------------------------------------


def test_keyword_arguments_and_the_registry() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> None:
        session = Session(bind="x")
        assert session.kw == {"bind": "x"}
        with pytest.raises(SessionAlreadyPresent, match="already present"):
            Session(bind="y")
        Session.registry.clear()  # forgotten, not closed
        assert session.closed == 0
        assert not Session.registry.has()
        mine = AsyncTrivialSession()
        Session.registry.set(mine)
        assert Session() is mine
        assert Session.registry() is mine
        await Session.remove()
        assert mine.closed == 1

    asyncio.run(main())


def test_configure_warns_when_sessions_exist(sqlite_adb: AsyncDB) -> None:
    async def body(db: AsyncDatabase) -> None:
        Session = scoped(db)
        Session.configure(expire_on_commit=False)
        assert Session().sync_session.expire_on_commit is False
        with pytest.warns(UserWarning, match="already present"):
            Session.configure(expire_on_commit=True)
        await Session.remove()

    sqlite_adb.run(body)


def test_bad_arguments_say_what_to_do() -> None:
    with pytest.raises(TypeError, match="async_sessionmaker"):
        AsyncScopedSession(42)  # type: ignore[arg-type]
    # Any scopefunc, as SQLAlchemy's async_scoped_session takes; current_task is
    # the registry's own per-task scope.
    assert AsyncScopedSession(AsyncTrivialSession, lambda: 1).scope_kind == "scopefunc"
    assert repr(AsyncScopedSession(AsyncTrivialSession, asyncio.current_task)) == (
        "<AsyncScopedSession scope=context>"
    )
    with pytest.raises(ValueError, match="scope='context'"):
        AsyncScopedSession(AsyncTrivialSession, scope="thread")
    with pytest.raises(TypeError, match="strict"):
        AsyncScopedSession(AsyncTrivialSession, strict="yes")  # type: ignore[arg-type]
    Session = AsyncScopedSession(AsyncTrivialSession)
    with pytest.raises(TypeError, match="async with"), Session.scope():
        pass
    with pytest.raises(TypeError, match="with parentheses"):
        Session.scope(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine functions"):
        Session.scope()(lambda: None)
    with pytest.raises(TypeError, match="commit must be True or False"):
        Session.scope(commit="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="factory of sync sessions"):
        AsyncScopedSession(TrivialSession)  # type: ignore[type-var]


def test_a_unit_cannot_start_twice() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> None:
        unit = Session.scope().start()
        with pytest.raises(ScopedSessionError, match="already started"):
            unit.start()
        await unit.end()
        await unit.end()  # again: nothing
        assert not unit.active

    asyncio.run(main())


def exit_code_in_fork_child(check: t.Callable[[], bool]) -> int:
    """Fork; the child exits 0 when ``check()`` is true. Returns its exit code."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            status = 0 if check() else 1
        finally:
            os.write(write, b"x")
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_fork_child_starts_with_no_sessions_and_closes_none() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)
    parent = Session()  # outside any loop: the caller's context holds it

    def child_sees_none() -> bool:
        async def child() -> bool:
            return Session.registry.has() or Session() is parent

        return not Session.registry.has() and not asyncio.run(child()) and parent.closed == 0

    assert exit_code_in_fork_child(child_sees_none) == 0
    assert Session() is parent
    assert parent.closed == 0


# -- who is calling: the running loop per thread (a cache on Python 3.11) ----------------


def test_the_caller_is_found_across_loops_threads_and_a_loop_moving_threads() -> None:
    import threading

    from scoped_session._tasks import owner

    async def me() -> bool:
        return owner() is asyncio.current_task()

    assert owner() is None
    assert asyncio.run(me())
    assert owner() is None  # the loop has stopped
    assert asyncio.run(me())  # a new loop in the same thread

    # One loop run in this thread, stopped, then run in another thread: this
    # thread, running nothing, must not take that loop's task as its own.
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(me())
    seen: list[object] = []
    running, done = threading.Event(), threading.Event()

    async def elsewhere() -> None:
        running.set()
        while not done.is_set():
            await asyncio.sleep(0.001)

    thread = threading.Thread(target=loop.run_until_complete, args=(elsewhere(),))
    thread.start()
    assert running.wait(30)
    for _ in range(200):
        seen.append(owner())
    done.set()
    thread.join(30)
    loop.close()
    assert seen == [None] * 200

    # A session made in a task is that task's, also right after a loop change.
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def own() -> tuple[AsyncTrivialSession, AsyncTrivialSession]:
        first = Session()
        again = Session()
        await Session.remove()
        return first, again

    for _ in range(3):
        first, again = asyncio.run(own())
        assert first is again
        assert first.closed == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_fork_child_forked_inside_a_task_sees_no_running_loop_or_task() -> None:
    from scoped_session._tasks import owner

    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> int:
        parent = Session()

        def child_sees_no_task() -> bool:
            # The parent's loop and task do not run here: no owner, and the
            # parent task's session is not handed out as the caller's own.
            return owner() is None and Session() is not parent and parent.closed == 0

        code = exit_code_in_fork_child(child_sees_no_task)
        assert Session() is parent
        await Session.remove()
        return code

    assert asyncio.run(main()) == 0


# -- who may use a cell without checks ---------------------------------------------------
# The proxy's fast path hands a cell's session to its gate task only: each case below
# is one where a cheaper test (the context alone, the thread, the loop) would give
# the wrong task a session.


def test_tasks_given_one_context_do_not_share_a_session() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def first(holding: asyncio.Event, go: asyncio.Event) -> list[AsyncTrivialSession]:
        mine = Session()
        holding.set()
        await go.wait()
        return [mine, Session()]

    async def second() -> AsyncTrivialSession:
        return Session()

    async def main() -> tuple[list[AsyncTrivialSession], AsyncTrivialSession]:
        loop = asyncio.get_running_loop()
        shared = contextvars.copy_context()
        holding, go = asyncio.Event(), asyncio.Event()
        one = loop.create_task(first(holding, go), context=shared)
        await holding.wait()
        # Same context object, same thread, another task: not the first one's.
        theirs = await loop.create_task(second(), context=shared)
        go.set()
        ours = await one
        await drain_closing()
        return ours, theirs

    ours, theirs = asyncio.run(main())
    assert theirs is not ours[0]
    assert theirs not in ours
    assert all(s.closed == 1 for s in [*ours, theirs])


def test_a_tasks_session_is_its_own_in_a_context_it_copied() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> None:
        mine = Session()
        assert contextvars.copy_context().run(Session) is mine
        assert Session() is mine
        await Session.remove()
        assert mine.closed == 1

    asyncio.run(main())


def test_a_tasks_session_stays_its_own_when_its_loop_moves_threads() -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)
    loop = asyncio.new_event_loop()
    made = loop.create_future()
    resume = asyncio.Event()

    async def body() -> tuple[AsyncTrivialSession, AsyncTrivialSession]:
        first = Session()
        made.set_result(None)
        await resume.wait()  # resumed by the loop running in another thread
        again = Session()
        await Session.remove()
        return first, again

    task = loop.create_task(body())
    loop.run_until_complete(made)
    results: list[tuple[AsyncTrivialSession, AsyncTrivialSession]] = []

    def run_elsewhere() -> None:
        loop.call_soon(resume.set)
        results.append(loop.run_until_complete(task))

    thread = threading.Thread(target=run_elsewhere)
    thread.start()
    thread.join(30)
    loop.close()
    first, again = results[0]
    assert first is again
    assert first.closed == 1


def test_a_thread_in_a_copied_context_never_gets_the_tasks_own_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> None:
        mine = Session()
        async with Session.scope():
            unit = Session()
            # A unit is shared with what it starts, threads included.
            assert await asyncio.to_thread(Session) is unit
        # A session made outside a unit is the task's alone: the thread gets one
        # of its own (which, with no event loop there, cannot be closed).
        theirs = await asyncio.to_thread(Session)
        assert theirs is not mine
        assert Session() is mine
        await Session.remove()
        assert mine.closed == 1

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        asyncio.run(main())
    assert "dropped without being closed" in caplog.text


def test_a_thread_never_gets_the_session_of_the_task_running_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def main() -> None:
        mine = Session()
        copied = contextvars.copy_context()  # sees this task's cell
        seen: list[AsyncTrivialSession] = []

        def worker() -> None:
            seen.append(copied.run(Session))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)  # blocks inside this task's step: it is the loop's running task
        assert seen
        assert seen[0] is not mine
        assert Session() is mine
        await Session.remove()

    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        asyncio.run(main())


def test_a_thread_never_gets_the_session_of_a_task_whose_loop_moved_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The task made its session on this thread; its loop now runs elsewhere and
    # the task is running there while this thread looks in a copied context.
    Session = AsyncScopedSession(AsyncTrivialSession)
    loop = asyncio.new_event_loop()
    made = loop.create_future()
    resume = asyncio.Event()
    in_step, looked = threading.Event(), threading.Event()
    copied: list[contextvars.Context] = []

    async def body() -> AsyncTrivialSession:
        mine = Session()
        copied.append(contextvars.copy_context())
        made.set_result(None)
        await resume.wait()
        in_step.set()
        looked.wait(30)  # blocks inside this task's step, on the other thread
        assert Session() is mine
        await Session.remove()
        return mine

    task = loop.create_task(body())
    loop.run_until_complete(made)
    results: list[AsyncTrivialSession] = []

    def run_elsewhere() -> None:
        loop.call_soon(resume.set)
        results.append(loop.run_until_complete(task))

    thread = threading.Thread(target=run_elsewhere)
    thread.start()
    assert in_step.wait(30)
    with caplog.at_level(logging.ERROR, logger="scoped_session"):
        seen = copied[0].run(Session)
        looked.set()
        thread.join(30)
        loop.close()
        mine = results[0]
        assert seen is not mine
        assert mine.closed == 1
        del seen, copied[:]


# -- misuses get one message each, naming what to use ------------------------------


def test_async_with_on_a_sync_registry_names_the_async_registry() -> None:
    from scoped_session import ScopedSession

    Session = ScopedSession(TrivialSession, scope="context")

    async def main() -> None:
        async with Session.scope():  # type: ignore[attr-defined]
            pass  # pragma: no cover - never entered

    with pytest.raises(TypeError, match=r"AsyncScopedSession") as info:
        asyncio.run(main())
    assert "async with Session.scope()" in str(info.value)
    assert not Session.registry.has()


def test_a_forgotten_remove_at_loop_shutdown_is_one_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)
    made: list[AsyncTrivialSession] = []

    async def main() -> None:
        made.append(Session())  # and no 'await Session.remove()'

    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        asyncio.run(main())
    (record,) = [r for r in caplog.records if r.name == "scoped_session"]
    message = record.getMessage()
    assert "without remove()" in message
    assert "'await Session.remove()'" in message
    assert "could not be closed" in message  # the loop was shutting down
    assert Session.stats().reaped == 1


def test_a_forgotten_remove_closed_in_time_is_one_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = AsyncScopedSession(AsyncTrivialSession)

    async def forget() -> AsyncTrivialSession:
        return Session()  # and no 'await Session.remove()'

    async def main() -> AsyncTrivialSession:
        session = await asyncio.create_task(forget())
        await drain_closing()
        return session

    with caplog.at_level(logging.WARNING, logger="scoped_session"):
        session = asyncio.run(main())
    assert session.closed == 1
    (record,) = [r for r in caplog.records if r.name == "scoped_session"]
    assert "it was closed now" in record.getMessage()
    assert "'await Session.remove()'" in record.getMessage()
