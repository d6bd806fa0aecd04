"""Mistakes that type checkers must report on our registries as on SQLAlchemy's
(checked by ``test_typing.py``).

Each ``theirs_*`` function has an ``ours_*`` twin with the same body. Every line marked
``# type: ignore[...]`` must be an error, with the same error codes, for both; no other
line may be. The test checks a copy without the comments. The comments keep the project's
own mypy run clean, and there ``warn_unused_ignores`` reports a line that is no error.
Never imported.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

from scoped_session import ScopedSession
from scoped_session.asyncio import AsyncScopedSession


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str]


def theirs_sync(Session: orm.scoped_session[orm.Session], user: User) -> None:
    Session.exceute(sa.select(User))  # type: ignore[attr-defined]
    Session.in_transaction()  # type: ignore[attr-defined]
    Session.get_transaction()  # type: ignore[attr-defined]
    Session.close_all()  # type: ignore[attr-defined]  # SQLAlchemy >= 2.1
    Session.close_all(True)  # type: ignore[call-arg]  # SQLAlchemy < 2.1
    Session.stream(sa.select(User))  # type: ignore[attr-defined]
    Session.add(user, "x")  # type: ignore[arg-type, call-arg]
    Session.add()  # type: ignore[call-arg]
    Session.add(user, warn=False)  # type: ignore[call-arg]
    Session.add_all(user)  # type: ignore[arg-type]
    Session.get("User", 1)  # type: ignore[arg-type]
    Session.get(User)  # type: ignore[call-arg]
    Session.get(User, 1, populate_existing="yes")  # type: ignore[arg-type]
    Session.get(User, 1, options=[1])  # type: ignore[list-item]
    Session.get(User, 1, option=None)  # type: ignore[call-arg]
    Session.get_one(User, 1, "x")  # type: ignore[arg-type, call-arg]
    name: int = Session.get_one(User, 1).name  # type: ignore[assignment]
    user = Session.get(User, 1)  # type: ignore[assignment]
    _row = Session.scalars(sa.select(User)).all()[0].nme  # type: ignore[attr-defined]
    _col = Session.execute(sa.select(User.id, User.name)).one()[2]  # type: ignore[misc]  # SQLAlchemy >= 2.1
    _id = Session.scalar(sa.select(User.id)).bit_length()  # type: ignore[union-attr]
    Session.execute("select 1")  # type: ignore[call-overload]
    Session.merge(user, load="no")  # type: ignore[arg-type]
    Session.begin(nested="yes")  # type: ignore[arg-type]
    Session.query(User).al()  # type: ignore[attr-defined]
    Session.is_active = False  # type: ignore[misc]
    Session.dirty = Session.new  # type: ignore[misc]
    Session.autoflush = "yes"  # type: ignore[assignment]
    Session.object_session()  # type: ignore[call-arg]
    Session.commit(True)  # type: ignore[call-arg]
    Session.remove(True)  # type: ignore[call-arg]
    Session.configure(True)  # type: ignore[call-arg]
    Session(True)  # type: ignore[call-arg]
    Session.query_property(User)  # type: ignore[arg-type]
    print(name)


def ours_sync(Session: ScopedSession[orm.Session], user: User) -> None:
    Session.exceute(sa.select(User))  # type: ignore[attr-defined]
    Session.in_transaction()  # type: ignore[attr-defined]
    Session.get_transaction()  # type: ignore[attr-defined]
    Session.close_all()  # type: ignore[attr-defined]  # SQLAlchemy >= 2.1
    Session.close_all(True)  # type: ignore[call-arg]  # SQLAlchemy < 2.1
    Session.stream(sa.select(User))  # type: ignore[attr-defined]
    Session.add(user, "x")  # type: ignore[arg-type, call-arg]
    Session.add()  # type: ignore[call-arg]
    Session.add(user, warn=False)  # type: ignore[call-arg]
    Session.add_all(user)  # type: ignore[arg-type]
    Session.get("User", 1)  # type: ignore[arg-type]
    Session.get(User)  # type: ignore[call-arg]
    Session.get(User, 1, populate_existing="yes")  # type: ignore[arg-type]
    Session.get(User, 1, options=[1])  # type: ignore[list-item]
    Session.get(User, 1, option=None)  # type: ignore[call-arg]
    Session.get_one(User, 1, "x")  # type: ignore[arg-type, call-arg]
    name: int = Session.get_one(User, 1).name  # type: ignore[assignment]
    user = Session.get(User, 1)  # type: ignore[assignment]
    _row = Session.scalars(sa.select(User)).all()[0].nme  # type: ignore[attr-defined]
    _col = Session.execute(sa.select(User.id, User.name)).one()[2]  # type: ignore[misc]  # SQLAlchemy >= 2.1
    _id = Session.scalar(sa.select(User.id)).bit_length()  # type: ignore[union-attr]
    Session.execute("select 1")  # type: ignore[call-overload]
    Session.merge(user, load="no")  # type: ignore[arg-type]
    Session.begin(nested="yes")  # type: ignore[arg-type]
    Session.query(User).al()  # type: ignore[attr-defined]
    Session.is_active = False  # type: ignore[misc]
    Session.dirty = Session.new  # type: ignore[misc]
    Session.autoflush = "yes"  # type: ignore[assignment]
    Session.object_session()  # type: ignore[call-arg]
    Session.commit(True)  # type: ignore[call-arg]
    Session.remove(True)  # type: ignore[call-arg]
    Session.configure(True)  # type: ignore[call-arg]
    Session(True)  # type: ignore[call-arg]
    Session.query_property(User)  # type: ignore[arg-type]
    print(name)


async def theirs_async(Session: async_scoped_session[AsyncSession], user: User) -> None:
    await Session.exceute(sa.select(User))  # type: ignore[attr-defined]
    Session.query(User)  # type: ignore[attr-defined]
    Session.bulk_save_objects([user])  # type: ignore[attr-defined]
    Session.in_transaction()  # type: ignore[attr-defined]
    Session.query_property()  # type: ignore[attr-defined]
    Session.execute(sa.select(User))  # type: ignore[unused-coroutine]
    Session.commit()  # type: ignore[unused-coroutine]
    Session.remove()  # type: ignore[unused-coroutine]
    _name = Session.get(User, 1).name  # type: ignore[attr-defined]
    await Session.add(user)  # type: ignore[func-returns-value, misc]
    Session.add(user, "x")  # type: ignore[arg-type, call-arg]
    Session.add_all(user)  # type: ignore[arg-type]
    await Session.get("User", 1)  # type: ignore[arg-type]
    await Session.get(User, 1, populate_existing="yes")  # type: ignore[arg-type]
    name: int = (await Session.get_one(User, 1)).name  # type: ignore[assignment]
    _col = (await Session.execute(sa.select(User.id, User.name))).one()[2]  # type: ignore[misc]  # SQLAlchemy >= 2.1
    async for _row in Session.stream(sa.select(User)):  # type: ignore[attr-defined]
        pass
    Session.begin(nested=True)  # type: ignore[call-arg]
    Session.is_active = False  # type: ignore[misc]
    Session(True)  # type: ignore[call-arg]
    print(name)


async def ours_async(Session: AsyncScopedSession[AsyncSession], user: User) -> None:
    await Session.exceute(sa.select(User))  # type: ignore[attr-defined]
    Session.query(User)  # type: ignore[attr-defined]
    Session.bulk_save_objects([user])  # type: ignore[attr-defined]
    Session.in_transaction()  # type: ignore[attr-defined]
    Session.query_property()  # type: ignore[attr-defined]
    Session.execute(sa.select(User))  # type: ignore[unused-coroutine]
    Session.commit()  # type: ignore[unused-coroutine]
    Session.remove()  # type: ignore[unused-coroutine]
    _name = Session.get(User, 1).name  # type: ignore[attr-defined]
    await Session.add(user)  # type: ignore[func-returns-value, misc]
    Session.add(user, "x")  # type: ignore[arg-type, call-arg]
    Session.add_all(user)  # type: ignore[arg-type]
    await Session.get("User", 1)  # type: ignore[arg-type]
    await Session.get(User, 1, populate_existing="yes")  # type: ignore[arg-type]
    name: int = (await Session.get_one(User, 1)).name  # type: ignore[assignment]
    _col = (await Session.execute(sa.select(User.id, User.name))).one()[2]  # type: ignore[misc]  # SQLAlchemy >= 2.1
    async for _row in Session.stream(sa.select(User)):  # type: ignore[attr-defined]
        pass
    Session.begin(nested=True)  # type: ignore[call-arg]
    Session.is_active = False  # type: ignore[misc]
    Session(True)  # type: ignore[call-arg]
    print(name)
