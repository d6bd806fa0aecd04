"""SQLAlchemy compatibility of the registries: what code written for SQLAlchemy's
``scoped_session`` / ``async_scoped_session`` catches, filters, listens to and
inspects behaves the same, with real sessions on SQLite files."""

from __future__ import annotations

import asyncio
import gc
import inspect
import pydoc
import re
import threading
import typing as t
import warnings
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="SQLAlchemy compatibility needs SQLAlchemy")
import sqlalchemy as sa
from helpers import AsyncDatabase, AsyncDB, Note, checkedout, make_async_engine
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm import scoped_session as sa_scoped_session

from scoped_session import (
    ScopedSession,
    ScopedSessionError,
    ScopedSessionWarning,
    SessionAlreadyPresent,
)

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

#: Seconds any wait may take before the test fails instead of hanging.
TIMEOUT = 30.0

#: Threads (or requests) that each commit once in the event tests.
N = 4


def async_engine(tmp_path: Path) -> AsyncEngine:
    """An async engine on a SQLite file, never connected (nothing to dispose)."""
    pytest.importorskip("aiosqlite")
    engine: AsyncEngine = make_async_engine("sqlite", str(tmp_path / "async.db"))[0]
    return engine


def count_notes(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM notes")).scalar_one())


# -- Session(**kw) when a session exists ------------------------------------------------


def test_arguments_when_a_session_exists_raise_what_sqlalchemy_raises(
    sqlite_engine: sa.Engine,
) -> None:
    theirs = sa_scoped_session(sessionmaker(sqlite_engine))
    theirs()
    with pytest.raises(sa_exc.InvalidRequestError) as sqlalchemys:
        theirs(bind=sqlite_engine)
    theirs.remove()

    Scoped = ScopedSession(sessionmaker(sqlite_engine))
    session = Scoped()
    note = Note(text="pending")
    Scoped.add(note)
    with pytest.raises(sa_exc.InvalidRequestError) as caught:
        Scoped(bind=sqlite_engine)
    error = caught.value
    assert isinstance(error, SessionAlreadyPresent)
    assert isinstance(error, ScopedSessionError)
    assert isinstance(error, RuntimeError)
    assert str(error).startswith("Scoped session is already present")
    assert str(sqlalchemys.value).startswith("Scoped session is already present")
    # The session is the same, with its pending work.
    assert Scoped() is session
    assert list(Scoped.new) == [note]
    assert Scoped.stats().created == 1
    Scoped.commit()
    Scoped.remove()
    assert count_notes(sqlite_engine) == 1
    assert checkedout(sqlite_engine) == 0


# -- configure() ---------------------------------------------------------------------------


def test_configure_warns_as_sqlalchemy_does_while_a_session_exists(
    sqlite_engine: sa.Engine,
) -> None:
    theirs = sa_scoped_session(sessionmaker(sqlite_engine))
    theirs()
    with pytest.warns(sa_exc.SAWarning) as sqlalchemys:
        theirs.configure(autoflush=False)
    theirs.remove()

    factory = sessionmaker(sqlite_engine)
    Scoped = ScopedSession(factory)
    session = Scoped()
    with pytest.warns(ScopedSessionWarning) as caught:
        Scoped.configure(autoflush=False)
    [warning] = caught
    assert issubclass(warning.category, ScopedSessionWarning)
    assert issubclass(warning.category, UserWarning)
    assert issubclass(warning.category, sa_exc.SAWarning)
    prefix = "At least one scoped session is already present."
    assert str(warning.message).startswith(prefix)
    assert str(sqlalchemys[0].message).startswith(prefix)
    assert warning.filename == __file__  # it points at the caller
    # Reconfigured all the same; the session made before keeps its settings.
    assert factory.kw["autoflush"] is False
    assert Scoped() is session
    assert session.autoflush is True
    Scoped.remove()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no session: no warning
        Scoped.configure(expire_on_commit=False)
    assert factory.kw["expire_on_commit"] is False
    session = Scoped()
    assert (session.autoflush, session.expire_on_commit) == (False, False)
    Scoped.remove()
    assert checkedout(sqlite_engine) == 0


# -- events ----------------------------------------------------------------------------------


class Fired:
    """A ``before_commit`` listener that keeps the sessions it saw (alive, so that
    their identities stay distinct)."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.lock = threading.Lock()

    def __call__(self, session: Session) -> None:
        with self.lock:
            self.sessions.append(session)


def commit_in_threads(Scoped: t.Any) -> list[Session]:
    """Commit a note from each of N threads, which all hold their sessions at once
    before removing them; return the N sessions."""
    barrier = threading.Barrier(N, timeout=TIMEOUT)
    sessions: list[Session | None] = [None] * N
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            Scoped.add(Note(text=f"note {threading.current_thread().name}"))
            Scoped.commit()
            sessions[i] = Scoped()
            barrier.wait()
            Scoped.remove()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(N)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert errors == []
    found = [session for session in sessions if session is not None]
    assert len(found) == N
    return found


def thread_key() -> object:
    return threading.current_thread()


REGISTRIES: dict[str, t.Callable[[sessionmaker[Session]], t.Any]] = {
    "thread": lambda factory: ScopedSession(factory),
    "context": lambda factory: ScopedSession(factory, scope="context"),
    "scopefunc": lambda factory: ScopedSession(factory, thread_key),
    "sqlalchemy": lambda factory: sa_scoped_session(factory),
}


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_session_events_reach_every_session_the_registry_makes(
    kind: str, sqlite_engine: sa.Engine
) -> None:
    Scoped = REGISTRIES[kind](sessionmaker(sqlite_engine))
    ours = isinstance(Scoped, ScopedSession)
    fired = Fired()
    hasattr(Scoped, "dispatch")  # what SQLAlchemy's event machinery asks first
    event.listen(Scoped, "before_commit", fired)
    try:
        assert event.contains(Scoped, "before_commit", fired)
        assert not Scoped.registry.has()
        if ours:
            assert Scoped.stats().created == 0

        sessions = commit_in_threads(Scoped)
        assert len({id(session) for session in sessions}) == N
        assert {id(session) for session in fired.sessions} == {id(s) for s in sessions}
        assert len(fired.sessions) == N
    finally:
        event.remove(Scoped, "before_commit", fired)
    assert not event.contains(Scoped, "before_commit", fired)
    commit_in_threads(Scoped)
    assert len(fired.sessions) == N  # removed: fired no more
    assert count_notes(sqlite_engine) == 2 * N
    if ours:
        assert Scoped.stats().created == 2 * N
    assert checkedout(sqlite_engine) == 0


@pytest.mark.parametrize("kind", ["thread", "context", "scopefunc", "flask"])
def test_asking_for_dispatch_makes_no_session(kind: str, sqlite_engine: sa.Engine) -> None:
    """What SQLAlchemy's event machinery reads first, outside any scope (for Flask:
    at import time, with no application context)."""
    if kind == "flask":
        pytest.importorskip("flask")
        from scoped_session.flask import FlaskScopedSession

        Scoped: ScopedSession[Session] = FlaskScopedSession(sessionmaker(sqlite_engine))
    else:
        Scoped = REGISTRIES[kind](sessionmaker(sqlite_engine))
    hasattr(Scoped, "dispatch")  # whatever it answers, it asks no scope
    assert not Scoped.registry.has()
    assert Scoped.stats().created == 0


def test_session_events_on_a_flask_registry_listened_to_before_any_app_context(
    sqlite_engine: sa.Engine,
) -> None:
    pytest.importorskip("flask")
    import flask

    from scoped_session.flask import FlaskScopedSession

    # As at import time: no app exists yet and no application context is pushed.
    assert not flask.has_app_context()
    Scoped = FlaskScopedSession(sessionmaker(sqlite_engine))
    fired = Fired()
    hasattr(Scoped, "dispatch")
    event.listen(Scoped, "before_commit", fired)
    assert event.contains(Scoped, "before_commit", fired)
    assert not Scoped.registry.has()
    assert Scoped.stats().created == 0

    app = flask.Flask(__name__)
    Scoped.init_app(app)

    @app.post("/notes/<text>")
    def add_note(text: str) -> dict[str, int]:
        Scoped.add(Note(text=text))
        Scoped.commit()
        return {"count": len(fired.sessions)}

    client = app.test_client()
    try:
        for i in range(N):
            response = client.post(f"/notes/{i}")
            assert response.status_code == 200
            assert response.json == {"count": i + 1}
        assert len({id(session) for session in fired.sessions}) == N
    finally:
        event.remove(Scoped, "before_commit", fired)
    assert not event.contains(Scoped, "before_commit", fired)
    assert client.post("/notes/after").status_code == 200
    assert len(fired.sessions) == N
    assert Scoped.stats().created == N + 1
    assert count_notes(sqlite_engine) == N + 1
    assert checkedout(sqlite_engine) == 0


def test_async_registry_refuses_session_events_as_sqlalchemy_does(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker

    from scoped_session.asyncio import AsyncScopedSession

    engine = async_engine(tmp_path)
    ours = AsyncScopedSession(async_sessionmaker(engine))
    theirs = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
    assert hasattr(ours, "dispatch") == hasattr(theirs, "dispatch")

    def before_commit(session: Session) -> None:
        raise AssertionError("never registered")

    errors: dict[str, list[BaseException]] = {"ours": [], "theirs": []}
    for name, registry in (("ours", ours), ("theirs", theirs)):
        for op in (event.listen, event.contains, event.remove):
            with pytest.raises(
                sa_exc.InvalidRequestError, match=r"^No such event 'before_commit' for target "
            ) as caught:
                op(registry, "before_commit", before_commit)
            errors[name].append(caught.value)
    assert [type(e) for e in errors["ours"]] == [type(e) for e in errors["theirs"]]
    assert ours.stats().created == 0


# -- class-level helpers ----------------------------------------------------------------------


def test_class_level_helpers_make_no_session(sqlite_engine: sa.Engine) -> None:
    Scoped = ScopedSession(sessionmaker(sqlite_engine))
    theirs = sa_scoped_session(sessionmaker(sqlite_engine))
    note = Note(text="a")
    for helper in (Scoped, ScopedSession, theirs, sa_scoped_session):
        assert helper.object_session(note) is None
        assert helper.identity_key(Note, 1) == (Note, (1,), None)
    with Session(sqlite_engine) as real:
        real.add(note)
        real.flush()
        for helper in (Scoped, ScopedSession, theirs, sa_scoped_session):
            assert helper.object_session(note) is real
            assert helper.identity_key(instance=note) == Session.identity_key(instance=note)
    assert not Scoped.registry.has()
    assert Scoped.stats().created == 0
    assert checkedout(sqlite_engine) == 0


def test_async_class_level_helpers_make_no_session(sqlite_adb: AsyncDB) -> None:
    from sqlalchemy.ext import asyncio as sa_asyncio
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker

    from scoped_session.asyncio import AsyncScopedSession

    # SQLAlchemy's own AsyncSession.close_all() fails before 2.0.23, which fixed it,
    # deprecated it and added close_all_sessions(): the proxies do what it does.
    close_all_works = hasattr(sa_asyncio, "close_all_sessions")

    async def body(db: AsyncDatabase) -> None:
        ours = AsyncScopedSession(async_sessionmaker(db.engine))
        theirs = async_scoped_session(async_sessionmaker(db.engine), asyncio.current_task)
        helpers: tuple[t.Any, ...] = (ours, AsyncScopedSession, theirs, async_scoped_session)
        note = Note(text="a")
        for helper in helpers:
            assert helper.object_session(note) is None
            assert helper.identity_key(Note, 1) == (Note, (1,), None)
        for helper in helpers:
            # close_all() closes every session in the process, as SQLAlchemy's
            # (deprecated) one does: a real one here.
            real = AsyncSession(db.engine)
            note = Note(text="b")
            real.add(note)
            await real.flush()
            # The sync Session, as SQLAlchemy's AsyncSession.object_session() says.
            assert helper.object_session(note) is real.sync_session
            assert helper.object_session(note) is AsyncSession.object_session(note)
            assert helper.identity_key(instance=note) == (Note, (1,), None)
            assert db.checkedout() == 1
            if close_all_works:
                with pytest.warns(sa_exc.SADeprecationWarning, match=r"close_all\(\) method"):
                    assert await helper.close_all() is None
            else:
                with pytest.raises(AttributeError, match="sync_session"):
                    await helper.close_all()
                await real.close()
            assert note not in real
            assert helper.object_session(note) is None
            assert db.checkedout() == 0
        assert ours.stats().created == 0
        assert not ours.registry.has()

    sqlite_adb.run(body)


# -- sync and async factories --------------------------------------------------------------


def test_sync_registry_refuses_an_async_sessionmaker(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    with pytest.raises(TypeError, match=r"AsyncScopedSession\(async_sessionmaker"):
        ScopedSession(async_sessionmaker(async_engine(tmp_path)))


def test_sync_registry_refuses_async_sessions_at_first_use(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = async_engine(tmp_path)
    made: list[AsyncSession] = []

    def factory() -> AsyncSession:
        made.append(AsyncSession(engine))
        return made[-1]

    Scoped: ScopedSession[t.Any] = ScopedSession(factory)
    gc.collect()  # what earlier tests left, before recording
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for use in (Scoped, lambda: Scoped.execute(sa.select(1)), lambda: Scoped.is_active):
            with pytest.raises(TypeError, match="AsyncScopedSession") as refused:
                use()
            del refused  # its frames hold the refused session
            assert not Scoped.registry.has()
        made.clear()
        gc.collect()
    # No "coroutine 'AsyncSession.close' was never awaited", nor anything else.
    assert [str(warning.message) for warning in caught] == []
    assert Scoped.stats() == (0, 0, 0, 0)


def test_async_registry_refuses_a_sync_sessionmaker(sqlite_engine: sa.Engine) -> None:
    from scoped_session.asyncio import AsyncScopedSession

    with pytest.raises(TypeError, match=r"async_sessionmaker"):
        AsyncScopedSession(sessionmaker(sqlite_engine))  # type: ignore[type-var]


# -- AsyncScopedSession with a scopefunc ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["ours", "sqlalchemy"])
def test_async_registry_keeps_a_session_per_key(kind: str, sqlite_adb: AsyncDB) -> None:
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker

    from scoped_session.asyncio import AsyncScopedSession

    key = ["a"]

    async def body(db: AsyncDatabase) -> None:
        factory = async_sessionmaker(db.engine)
        registry = AsyncScopedSession if kind == "ours" else async_scoped_session
        Scoped: t.Any = registry(factory, scopefunc=lambda: key[0])
        a = Scoped()
        assert Scoped() is a
        assert (await Scoped.execute(sa.select(1))).scalar_one() == 1
        key[0] = "b"
        assert not Scoped.registry.has()
        b = Scoped()
        assert b is not a
        await Scoped.execute(sa.select(1))
        assert db.checkedout() == 2  # each in a transaction of its own
        await Scoped.remove()  # b: closed and forgotten
        assert db.checkedout() == 1
        assert not Scoped.registry.has()
        key[0] = "a"
        assert Scoped.registry.has()
        assert Scoped() is a
        await Scoped.remove()
        assert db.checkedout() == 0
        assert not Scoped.registry.has()
        if kind == "ours":
            assert Scoped.stats() == (0, 2, 2, 0)

    sqlite_adb.run(body)


@pytest.mark.parametrize("kind", ["ours", "sqlalchemy"])
def test_async_registry_with_current_task_keeps_a_session_per_task(
    kind: str, sqlite_adb: AsyncDB
) -> None:
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker

    from scoped_session.asyncio import AsyncScopedSession

    async def body(db: AsyncDatabase) -> None:
        factory = async_sessionmaker(db.engine)
        registry = AsyncScopedSession if kind == "ours" else async_scoped_session
        Scoped: t.Any = registry(factory, scopefunc=asyncio.current_task)
        both = asyncio.Barrier(2)

        async def task() -> object:
            session = Scoped()
            await Scoped.execute(sa.select(1))
            await asyncio.wait_for(both.wait(), TIMEOUT)  # both hold theirs at once
            assert Scoped() is session
            await Scoped.remove()
            assert not Scoped.registry.has()
            return session

        first, second = await asyncio.gather(task(), task())
        assert first is not second
        assert db.checkedout() == 0
        if kind == "ours":
            assert Scoped.stats() == (0, 2, 2, 0)

    sqlite_adb.run(body)


# -- introspection ----------------------------------------------------------------------------

SIGNATURES = (
    *("add", "begin", "connection", "delete", "execute", "flush"),
    *("get", "merge", "query", "refresh", "scalar", "scalars"),
)


@pytest.mark.parametrize("name", SIGNATURES)
def test_signatures_are_the_sessions(name: str) -> None:
    """On every supported SQLAlchemy (a generated module per line)."""
    assert inspect.signature(getattr(ScopedSession, name)) == inspect.signature(
        getattr(Session, name)
    )
    assert inspect.signature(getattr(ScopedSession, name)) == inspect.signature(
        getattr(sa_scoped_session, name)
    )
    bound = ScopedSession(Session)
    assert inspect.signature(getattr(bound, name)) == inspect.signature(getattr(Session(), name))
    assert bound.stats().created == 0


def help_sections(cls: type[t.Any]) -> dict[str, list[str]]:
    """The headings of ``help(cls)`` each member is listed under, by name."""
    text = pydoc.plain(pydoc.render_doc(cls))
    found: dict[str, list[str]] = {}
    heading = ""
    for line in text.splitlines():
        if not line.startswith(" |  "):
            continue
        entry = line[4:]
        if not entry or entry[0] in " -":  # documentation, or a separator
            continue
        if entry.endswith(":"):
            heading = entry
            continue
        found.setdefault(re.split(r"[\s(]", entry, maxsplit=1)[0], []).append(heading)
    return found


PROPERTY = re.compile(r"^(Readonly properties|Data descriptors) (defined here|inherited from .+):$")


@pytest.mark.parametrize("name", ["dirty", "is_active", "new", "deleted", "info"])
def test_help_lists_properties_as_properties(name: str) -> None:
    ours = help_sections(ScopedSession)[name]
    theirs = help_sections(sa_scoped_session)[name]
    assert ours
    assert all(PROPERTY.match(heading) for heading in ours), ours
    assert all(PROPERTY.match(heading) for heading in theirs), theirs
    assert all(
        heading.startswith("Methods ") for heading in help_sections(ScopedSession)["execute"]
    )


# -- arguments as SQLAlchemy's proxy passes them ---------------------------------------------


def test_arguments_reach_a_session_subclass_as_sqlalchemys_proxy_passes_them(
    sqlite_engine: sa.Engine,
) -> None:
    calls: list[tuple[tuple[t.Any, ...], dict[str, t.Any]]] = []

    class Recording(Session):
        def get_bind(self, mapper: t.Any = None, **kw: t.Any) -> t.Any:
            calls.append(((mapper,), kw))
            return super().get_bind(mapper, **kw)

    Scoped = ScopedSession(sessionmaker(sqlite_engine, class_=Recording))
    theirs = sa_scoped_session(sessionmaker(sqlite_engine, class_=Recording))
    for registry in (Scoped, theirs):
        assert registry.get_bind(Note) is sqlite_engine
        assert registry.get_bind(Note, clause=None) is sqlite_engine
    # Every parameter by keyword, defaults included.
    assert calls[:2] == calls[2:]
    defaults = {"bind": None, "_sa_skip_events": None, "_sa_skip_for_implicit_returning": False}
    assert calls[:2] == [((Note,), {"clause": None, **defaults})] * 2
    Scoped.remove()
    theirs.remove()
    assert checkedout(sqlite_engine) == 0


class Recorder:
    """A session that is not SQLAlchemy's: ``add`` records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[t.Any, ...], dict[str, t.Any]]] = []

    def add(self, /, *args: t.Any, **kw: t.Any) -> None:
        self.calls.append((args, kw))

    def close(self) -> None:
        pass


def test_arguments_reach_any_session_as_sqlalchemys_proxy_passes_them() -> None:
    Scoped = ScopedSession(Recorder)
    theirs = sa_scoped_session(t.cast("t.Any", Recorder))
    for registry in (Scoped, theirs):
        registry.add(1)
        registry.add(instance=2)
        registry.add(3, _warn=False)
    expected = [((1,), {"_warn": True}), ((2,), {"_warn": True}), ((3,), {"_warn": False})]
    assert Scoped().calls == theirs.registry().calls == expected
    Scoped.remove()
    theirs.remove()


def test_a_sync_registry_warns_about_a_session_that_serves_asyncio() -> None:
    """SQLAlchemy's own test_config_errors: a plain callable makes a sync Session
    flagged as an asyncio one's; the warning says which registry to use."""
    from sqlalchemy import exc
    from sqlalchemy.orm import Session as SASession

    def go() -> SASession:
        session = SASession()
        session._is_asyncio = True
        return session

    Session = ScopedSession(go)
    with pytest.warns(exc.SADeprecationWarning, match=r"^Using `scoped_session` with asyncio"):
        made = Session()
    assert isinstance(made, SASession)
    Session.remove()  # a sync close: nothing is left un-awaited
    assert not Session.registry.has()
