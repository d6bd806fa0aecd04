"""SQLAlchemy's ``async_scoped_session`` and our ``AsyncScopedSession``, side by side
(checked by ``test_typing.py``).

Each ``reveal_type`` on a ``theirs`` line is followed by the same expression on ``ours``;
the test requires both checkers to reveal the same type for each pair. Never imported.
"""

from __future__ import annotations

import asyncio
import typing as t
from typing import reveal_type

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine

from scoped_session.asyncio import AsyncScopedSession


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str]


engine = create_async_engine("sqlite+aiosqlite://")
theirs = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
ours = AsyncScopedSession(async_sessionmaker(engine), scopefunc=asyncio.current_task)
Theirs = async_scoped_session
Ours = AsyncScopedSession


async def results(user: User) -> None:
    reveal_type(theirs)
    reveal_type(ours)
    reveal_type(theirs())
    reveal_type(ours())
    reveal_type(theirs(autoflush=False))
    reveal_type(ours(autoflush=False))

    reveal_type(await theirs.get(User, 1))
    reveal_type(await ours.get(User, 1))
    reveal_type(await theirs.get(User, (1,), populate_existing=True))
    reveal_type(await ours.get(User, (1,), populate_existing=True))
    reveal_type(await theirs.get_one(User, 1))
    reveal_type(await ours.get_one(User, 1))

    reveal_type(await theirs.scalars(sa.select(User)))
    reveal_type(await ours.scalars(sa.select(User)))
    reveal_type((await theirs.scalars(sa.select(User))).all())
    reveal_type((await ours.scalars(sa.select(User))).all())
    reveal_type(await theirs.scalar(sa.select(User.id)))
    reveal_type(await ours.scalar(sa.select(User.id)))
    reveal_type(await theirs.scalar(sa.text("select 1")))
    reveal_type(await ours.scalar(sa.text("select 1")))

    reveal_type(await theirs.execute(sa.select(User.id, User.name)))
    reveal_type(await ours.execute(sa.select(User.id, User.name)))
    reveal_type((await theirs.execute(sa.select(User.id, User.name))).one())
    reveal_type((await ours.execute(sa.select(User.id, User.name))).one())
    reveal_type(await theirs.execute(sa.text("select 1")))
    reveal_type(await ours.execute(sa.text("select 1")))

    reveal_type(await theirs.stream(sa.select(User.id, User.name)))
    reveal_type(await ours.stream(sa.select(User.id, User.name)))
    reveal_type(await (await theirs.stream(sa.select(User.id, User.name))).all())
    reveal_type(await (await ours.stream(sa.select(User.id, User.name))).all())
    reveal_type(await theirs.stream(sa.text("select 1")))
    reveal_type(await ours.stream(sa.text("select 1")))
    reveal_type(await theirs.stream_scalars(sa.select(User)))
    reveal_type(await ours.stream_scalars(sa.select(User)))
    async for theirs_row in await theirs.stream(sa.select(User.id, User.name)):
        reveal_type(theirs_row)
    async for ours_row in await ours.stream(sa.select(User.id, User.name)):
        reveal_type(ours_row)

    reveal_type(await theirs.merge(user))
    reveal_type(await ours.merge(user))
    reveal_type(await theirs.merge_all([user]))  # SQLAlchemy >= 2.1
    reveal_type(await ours.merge_all([user]))  # SQLAlchemy >= 2.1

    # Plain methods stay plain, coroutine methods are awaited: their signatures are
    # compared, and the calls below must type-check.
    reveal_type(theirs.add)
    reveal_type(ours.add)
    reveal_type(theirs.add_all)
    reveal_type(ours.add_all)
    reveal_type(theirs.delete)
    reveal_type(ours.delete)
    reveal_type(theirs.commit)
    reveal_type(ours.commit)
    reveal_type(theirs.remove)
    reveal_type(ours.remove)
    theirs.add(user)
    ours.add(user)
    theirs.add_all([user, User(name="n")])
    ours.add_all([user, User(name="n")])
    theirs_add: t.Callable[[object], None] = theirs.add
    ours_add: t.Callable[[object], None] = ours.add
    reveal_type(theirs_add)
    reveal_type(ours_add)
    await theirs.delete(user)
    await ours.delete(user)
    await theirs.flush()
    await ours.flush()
    await theirs.commit()
    await ours.commit()
    await theirs.rollback()
    await ours.rollback()
    await theirs.refresh(user, ["name"])
    await ours.refresh(user, ["name"])
    await theirs.close()
    await ours.close()
    await theirs.remove()
    await ours.remove()

    reveal_type(theirs.begin())
    reveal_type(ours.begin())
    reveal_type(theirs.begin_nested())
    reveal_type(ours.begin_nested())
    async with theirs.begin() as theirs_tx:
        reveal_type(theirs_tx)
    async with ours.begin() as ours_tx:
        reveal_type(ours_tx)
    reveal_type(await theirs.connection())
    reveal_type(await ours.connection())
    reveal_type(theirs.get_bind())
    reveal_type(ours.get_bind())
    reveal_type(theirs.is_modified(user))
    reveal_type(ours.is_modified(user))
    reveal_type(user in theirs)
    reveal_type(user in ours)
    reveal_type(iter(theirs))
    reveal_type(iter(ours))

    reveal_type(theirs.is_active)
    reveal_type(ours.is_active)
    reveal_type(theirs.info)
    reveal_type(ours.info)
    reveal_type(theirs.bind)
    reveal_type(ours.bind)
    reveal_type(theirs.no_autoflush)
    reveal_type(ours.no_autoflush)
    reveal_type(theirs.dirty)
    reveal_type(ours.dirty)
    reveal_type(theirs.new)
    reveal_type(ours.new)
    reveal_type(theirs.deleted)
    reveal_type(ours.deleted)
    reveal_type(theirs.identity_key(User, 1))
    reveal_type(ours.identity_key(User, 1))
    reveal_type(Theirs.object_session(user))
    reveal_type(Ours.object_session(user))

    theirs_session: orm.Session = theirs().sync_session
    ours_session: orm.Session = ours().sync_session
    reveal_type(theirs_session)
    reveal_type(ours_session)
    reveal_type(theirs.registry())
    reveal_type(ours.registry())
    theirs.configure(expire_on_commit=False)
    ours.configure(expire_on_commit=False)


def members() -> None:
    # Every member as an attribute: the whole signature is compared.
    reveal_type(theirs.aclose)
    reveal_type(ours.aclose)
    reveal_type(theirs.add)
    reveal_type(ours.add)
    reveal_type(theirs.add_all)
    reveal_type(ours.add_all)
    reveal_type(theirs.autoflush)
    reveal_type(ours.autoflush)
    reveal_type(theirs.begin)
    reveal_type(ours.begin)
    reveal_type(theirs.begin_nested)
    reveal_type(ours.begin_nested)
    reveal_type(theirs.bind)
    reveal_type(ours.bind)
    reveal_type(theirs.binds)  # SQLAlchemy >= 2.1
    reveal_type(ours.binds)  # SQLAlchemy >= 2.1
    reveal_type(theirs.close)
    reveal_type(ours.close)
    reveal_type(theirs.close_all)
    reveal_type(ours.close_all)
    reveal_type(theirs.commit)
    reveal_type(ours.commit)
    reveal_type(theirs.configure)
    reveal_type(ours.configure)
    reveal_type(theirs.connection)
    reveal_type(ours.connection)
    reveal_type(theirs.delete)
    reveal_type(ours.delete)
    reveal_type(theirs.delete_all)  # SQLAlchemy >= 2.1
    reveal_type(ours.delete_all)  # SQLAlchemy >= 2.1
    reveal_type(theirs.deleted)
    reveal_type(ours.deleted)
    reveal_type(theirs.dirty)
    reveal_type(ours.dirty)
    reveal_type(theirs.execute)
    reveal_type(ours.execute)
    reveal_type(theirs.execution_options)  # SQLAlchemy >= 2.1
    reveal_type(ours.execution_options)  # SQLAlchemy >= 2.1
    reveal_type(theirs.expire)
    reveal_type(ours.expire)
    reveal_type(theirs.expire_all)
    reveal_type(ours.expire_all)
    reveal_type(theirs.expunge)
    reveal_type(ours.expunge)
    reveal_type(theirs.expunge_all)
    reveal_type(ours.expunge_all)
    reveal_type(theirs.flush)
    reveal_type(ours.flush)
    reveal_type(theirs.get)
    reveal_type(ours.get)
    reveal_type(theirs.get_async_bind)  # SQLAlchemy >= 2.1
    reveal_type(ours.get_async_bind)  # SQLAlchemy >= 2.1
    reveal_type(theirs.get_bind)
    reveal_type(ours.get_bind)
    reveal_type(theirs.get_one)
    reveal_type(ours.get_one)
    reveal_type(theirs.identity_key)
    reveal_type(ours.identity_key)
    reveal_type(theirs.identity_map)
    reveal_type(ours.identity_map)
    reveal_type(theirs.info)
    reveal_type(ours.info)
    reveal_type(theirs.invalidate)
    reveal_type(ours.invalidate)
    reveal_type(theirs.is_active)
    reveal_type(ours.is_active)
    reveal_type(theirs.is_modified)
    reveal_type(ours.is_modified)
    reveal_type(theirs.merge)
    reveal_type(ours.merge)
    reveal_type(theirs.merge_all)  # SQLAlchemy >= 2.1
    reveal_type(ours.merge_all)  # SQLAlchemy >= 2.1
    reveal_type(theirs.new)
    reveal_type(ours.new)
    reveal_type(theirs.no_autoflush)
    reveal_type(ours.no_autoflush)
    reveal_type(theirs.object_session)
    reveal_type(ours.object_session)
    reveal_type(theirs.refresh)
    reveal_type(ours.refresh)
    reveal_type(theirs.remove)
    reveal_type(ours.remove)
    reveal_type(theirs.reset)
    reveal_type(ours.reset)
    reveal_type(theirs.rollback)
    reveal_type(ours.rollback)
    reveal_type(theirs.scalar)
    reveal_type(ours.scalar)
    reveal_type(theirs.scalars)
    reveal_type(ours.scalars)
    reveal_type(theirs.stream)
    reveal_type(ours.stream)
    reveal_type(theirs.stream_scalars)
    reveal_type(ours.stream_scalars)
    reveal_type(Theirs.close_all)
    reveal_type(Ours.close_all)
    reveal_type(Theirs.identity_key)
    reveal_type(Ours.identity_key)
    reveal_type(Theirs.object_session)
    reveal_type(Ours.object_session)


def attributes() -> None:
    # Public attributes of SQLAlchemy's registry that are not proxied members.
    reveal_type(theirs.session_factory)
    reveal_type(ours.session_factory)
    reveal_type(theirs.registry)
    reveal_type(ours.registry)
