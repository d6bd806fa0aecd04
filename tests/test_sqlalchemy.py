"""The proxy and the registry with real SQLAlchemy sessions on real databases."""

from __future__ import annotations

import gc
import threading
import typing as t

import pytest

pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy is not installed: these tests are about its sessions"
)

import sqlalchemy as sa
from helpers import Database, Note, checkedout, reaches_the_session, refused_with_a_hint
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Query, Session, mapped_column, sessionmaker
from sqlalchemy.orm import scoped_session as sa_scoped_session

from scoped_session import ScopedSession, ScopedSessionError

#: Methods the proxy defines with no arguments, checked below to reach the session.
WRITTEN_OUT = ("close", "commit", "rollback", "reset", "expunge_all", "expire_all")


def test_every_public_session_name_is_forwarded_or_refused(sqlite_engine: sa.Engine) -> None:
    """The names SQLAlchemy's scoped_session forwards reach the caller's session;
    every other public name of the session is an AttributeError that says to use
    ``Session()``, and makes no session."""
    Scoped = ScopedSession(sessionmaker(sqlite_engine))
    session = Scoped()
    names = {n for n in dir(Session) if not n.startswith("_")} | {
        n for n in vars(session) if not n.startswith("_")
    }
    forwarded = {n for n in names if hasattr(sa_scoped_session, n)}
    assert len(forwarded) > 30
    assert len(names - forwarded) > 5
    missing = [n for n in sorted(forwarded) if not reaches_the_session(Scoped, session, n)]
    assert missing == []
    Scoped.remove()
    not_refused = [n for n in sorted(names - forwarded) if not refused_with_a_hint(Scoped, n)]
    assert not_refused == []
    assert not Scoped.registry.has()
    assert Scoped.stats().created == 1


def test_written_out_methods_forward(sqlite_engine: sa.Engine) -> None:
    called: list[str] = []

    def recorder(name: str) -> t.Callable[[Session], None]:
        original = getattr(Session, name)

        def method(self: Session) -> None:
            called.append(name)
            original(self)

        return method

    Recording = type("Recording", (Session,), {n: recorder(n) for n in WRITTEN_OUT})
    Scoped: ScopedSession[Session] = ScopedSession(sessionmaker(sqlite_engine, class_=Recording))
    for name in WRITTEN_OUT:
        called.clear()
        getattr(Scoped, name)()
        assert called[:1] == [name]  # then whatever SQLAlchemy calls inside
    Scoped.remove()


def test_arguments_reach_a_subclass_as_sqlalchemys_proxy_passes_them(
    sqlite_engine: sa.Engine,
) -> None:
    calls: list[tuple[tuple[t.Any, ...], dict[str, t.Any]]] = []

    class MySession(Session):
        def get_bind(self, mapper: t.Any = None, **kw: t.Any) -> t.Any:
            calls.append(((mapper,), kw))
            return super().get_bind(mapper, **kw)

    Scoped = ScopedSession(sessionmaker(sqlite_engine, class_=MySession))
    assert Scoped.get_bind(Note) is sqlite_engine
    # Every parameter by keyword, SQLAlchemy's defaults included.
    defaults = {"bind": None, "_sa_skip_events": None, "_sa_skip_for_implicit_returning": False}
    assert calls == [((Note,), {"clause": None, **defaults})]
    Scoped.add(Note(text="a"))
    Scoped.commit()
    assert Scoped.scalar(sa.select(sa.func.count()).select_from(Note)) == 1
    Scoped.remove()
    assert checkedout(sqlite_engine) == 0


def test_settable_attributes(sqlite_engine: sa.Engine, tmp_path: t.Any) -> None:
    Scoped = ScopedSession(sessionmaker(sqlite_engine))
    Scoped.autoflush = False
    assert Scoped().autoflush is False
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    Scoped.bind = other
    assert Scoped().bind is other
    identity_map = Scoped().identity_map
    Scoped.identity_map = identity_map
    assert Scoped.identity_map is identity_map
    Scoped.remove()
    other.dispose()


def test_info_dirty_new_deleted_is_active(sqlite_engine: sa.Engine) -> None:
    Scoped = ScopedSession(sessionmaker(sqlite_engine))
    Scoped.info["owner"] = "test"
    assert Scoped().info == {"owner": "test"}
    note = Note(text="x")
    Scoped.add(note)
    assert note in Scoped.new
    assert note in Scoped
    assert list(Scoped) == [note]
    assert Scoped.is_active
    Scoped.flush()
    Scoped.delete(note)
    assert note in Scoped.deleted
    Scoped.rollback()
    assert not Scoped.dirty
    Scoped.remove()


class QBase(DeclarativeBase):
    pass


class Item(QBase):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


def test_query_property_object_session_identity_key(sqlite_engine: sa.Engine) -> None:
    QBase.metadata.create_all(sqlite_engine)
    Scoped = ScopedSession(sessionmaker(sqlite_engine))

    class Custom(Query[t.Any]):
        pass

    plain = Scoped.query_property()
    custom = Scoped.query_property(Custom)
    Scoped.add(Item(name="one"))
    Scoped.commit()
    q = plain.__get__(None, Item)
    assert q.filter_by(name="one").one().name == "one"
    assert isinstance(custom.__get__(None, Item), Custom)
    item = Scoped.get(Item, 1)
    assert Scoped.object_session(item) is Scoped()
    assert Scoped.identity_key(Item, 1)[1] == (1,)
    with pytest.raises(ScopedSessionError, match="not mapped"):
        plain.__get__(None, str)
    Scoped.remove()
    assert checkedout(sqlite_engine) == 0


def test_close_resets_only_false_needs_remove(sqlite_engine: sa.Engine) -> None:
    Scoped = ScopedSession(sessionmaker(sqlite_engine, close_resets_only=False))
    Scoped.execute(sa.text("SELECT 1"))
    Scoped.close()
    assert checkedout(sqlite_engine) == 0
    with pytest.raises(sa_exc.InvalidRequestError):
        Scoped.execute(sa.text("SELECT 1"))
    Scoped.remove()
    assert Scoped.execute(sa.text("SELECT 1")).scalar() == 1
    Scoped.remove()


def test_remove_returns_the_connection(db: Database) -> None:
    Scoped = ScopedSession(sessionmaker(db.engine))
    Scoped.add(Note(text="held"))
    Scoped.flush()
    assert checkedout(db.engine) == 1
    if db.kind == "postgres":
        assert db.idle_in_transaction() == 1
    Scoped.remove()
    assert checkedout(db.engine) == 0
    assert db.idle_in_transaction() == 0
    assert db.count_notes() == 0  # never committed


def test_scope_commits_and_rolls_back_for_real(db: Database) -> None:
    Scoped = ScopedSession(sessionmaker(db.engine))
    with Scoped.scope(commit=True):
        Scoped.add(Note(text="kept"))
    with pytest.raises(RuntimeError), Scoped.scope(commit=True):
        Scoped.add(Note(text="dropped"))
        Scoped.flush()
        raise RuntimeError("view failed")
    with pytest.raises(sa_exc.IntegrityError), Scoped.scope(commit=True):
        Scoped.add(Note(text="kept"))  # violates the unique constraint at commit
    assert db.count_notes() == 1
    assert checkedout(db.engine) == 0
    assert db.idle_in_transaction() == 0


@pytest.mark.parametrize("scope", ["thread", "context"])
def test_threads_exiting_without_remove_return_connections(db: Database, scope: str) -> None:
    n = 12
    connect_args = {"application_name": db.app_name} if db.kind == "postgres" else {}
    engine = sa.create_engine(
        db.engine.url, pool_size=n, max_overflow=0, pool_timeout=5, connect_args=connect_args
    )
    Scoped = ScopedSession(sessionmaker(engine), scope=scope)
    held = threading.Barrier(n + 1)
    leave = threading.Event()

    def work() -> None:
        Scoped.execute(sa.text("SELECT 1"))
        held.wait(timeout=10)
        leave.wait(timeout=10)

    threads = [threading.Thread(target=work) for _ in range(n)]
    gc.disable()
    try:
        for thread in threads:
            thread.start()
        held.wait(timeout=10)
        assert checkedout(engine) == n  # really all held at once
        if db.kind == "postgres":
            assert db.idle_in_transaction() == n
        leave.set()
        for thread in threads:
            thread.join(timeout=10)
            assert not thread.is_alive()
        assert checkedout(engine) == 0
        assert Scoped._stats.reaped == n
        assert db.idle_in_transaction() == 0
    finally:
        leave.set()
        gc.enable()
        engine.dispose()


def test_remove_all_returns_every_threads_connection(db: Database) -> None:
    Scoped = ScopedSession(sessionmaker(db.engine))
    n = 4
    ready = threading.Barrier(n + 1)
    done = threading.Event()

    def hold() -> None:
        Scoped.execute(sa.text("SELECT 1"))
        ready.wait(timeout=10)
        done.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for thread in threads:
        thread.start()
    try:
        ready.wait(timeout=10)
        assert checkedout(db.engine) == n
        assert Scoped.remove_all() == n
        assert checkedout(db.engine) == 0
        assert db.idle_in_transaction() == 0
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)
            assert not thread.is_alive()
    assert Scoped._stats.reaped == 0


def test_typing_follows_the_factory(sqlite_engine: sa.Engine) -> None:
    Scoped = ScopedSession(sessionmaker(sqlite_engine))
    session = Scoped()
    t.assert_type(session, Session)
    assert isinstance(session, Session)
    Scoped.remove()
