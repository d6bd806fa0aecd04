"""Everyday use of our registries: must type-check with no error under mypy --strict and
pyright strict (checked by ``test_typing.py``). Never imported.
"""

from __future__ import annotations

import asyncio
import typing as t

import sqlalchemy as sa
from sqlalchemy import event, orm
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from scoped_session import ScopedSession, UnitOfWork, scoped_session
from scoped_session.asyncio import AsyncScopedSession


class Base(orm.DeclarativeBase):
    pass


engine = sa.create_engine("sqlite://")
Session = ScopedSession(orm.sessionmaker(engine))
# The drop-in spelling, with a scopefunc as SQLAlchemy's takes it.
Legacy = scoped_session(orm.sessionmaker(bind=engine), scopefunc=lambda: 1)


class User(Base):
    __tablename__ = "user"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str]

    query: t.ClassVar[orm.QueryPropertyDescriptor] = Session.query_property()


def create(name: str) -> User:
    user = User(name=name)
    Session.add(user)
    Session.add_all([User(name=f"{name}-2")])
    Session.flush()
    Session.commit()
    return user


def read(user_id: int) -> str | None:
    user = Session.get(User, user_id)
    if user is None:
        return None
    same: User = Session.get_one(User, user_id)
    merged: User = Session.merge(same)
    names: t.Sequence[User] = Session.scalars(sa.select(User)).all()
    count: int | None = Session.scalar(sa.select(sa.func.count(User.id)))
    row = Session.execute(sa.select(User.id, User.name)).one()
    user_id_again, name = row
    text_rows = Session.execute(sa.text("select 1")).all()
    legacy: list[User] = User.query.filter_by(name=user.name).all()
    by_query: User | None = Session.query(User).filter(User.id == user_id_again).first()
    print(merged, names, count, name, text_rows, legacy, by_query)
    return user.name


def transactions() -> None:
    with Session.begin():
        Session.add(User(name="a"))
    with Session.begin_nested() as savepoint:
        Session.add(User(name="b"))
        savepoint.rollback()
    with Session.no_autoflush:
        Session.add(User(name="c"))
    if Session.is_active and not Session.dirty and not Session.new and not Session.deleted:
        Session.info["seen"] = True
    Session.expire_all()
    Session.rollback()
    Session.remove()


def units() -> None:
    with Session.scope(commit=True) as session:
        session.add(User(name="d"))
        found: orm.Session = session
        print(found)
    unit: UnitOfWork[orm.Session] = Session.scope()
    with unit:
        Session.add(User(name="e"))


@Session.scope(commit=True)
def job(name: str) -> int:
    user = User(name=name)
    Session.add(user)
    Session.flush()
    return user.id


def registry_and_helpers(user: User) -> None:
    session: orm.Session = Session()
    again: orm.Session = Session.registry()
    if Session.registry.has():
        Session.registry.clear()
    key = Session.identity_key(User, 1)
    owner: orm.Session | None = ScopedSession.object_session(user)
    Session.configure(autoflush=False)
    bind = Session.bind
    print(session, again, key, owner, bind, Session.stats().live, job("f"))


@event.listens_for(orm.Session, "before_commit")
def before_commit(session: orm.Session) -> None:
    print(session)


async_engine = create_async_engine("sqlite+aiosqlite://")
AsyncSessionRegistry = AsyncScopedSession(async_sessionmaker(async_engine))
# The drop-in spelling of SQLAlchemy's async_scoped_session.
AsyncLegacy = AsyncScopedSession(async_sessionmaker(async_engine), scopefunc=asyncio.current_task)


async def async_use(user_id: int) -> list[str]:
    S = AsyncSessionRegistry
    S.add(User(name="g"))
    await S.flush()
    user: User | None = await S.get(User, user_id)
    users: t.Sequence[User] = (await S.scalars(sa.select(User))).all()
    row = (await S.execute(sa.select(User.id, User.name))).one()
    names = [name async for _, name in await S.stream(sa.select(User.id, User.name))]
    async with S.begin():
        S.add(User(name="h"))
    async with S.scope(commit=True) as session:
        session.add(User(name="i"))
        mine: AsyncSession = session
        print(mine)
    await S.commit()
    current: AsyncSession = S()
    print(user, users, row, current)
    await S.remove()
    await AsyncLegacy.remove()
    return names


@AsyncSessionRegistry.scope(commit=True)
async def async_job(name: str) -> None:
    AsyncSessionRegistry.add(User(name=name))
