"""SQLAlchemy's ``scoped_session`` and ours, side by side (checked by ``test_typing.py``).

Each ``reveal_type`` on a ``theirs`` line is followed by the same expression on ``ours``;
the test requires both checkers to reveal the same type for each pair. Never imported.
"""

from __future__ import annotations

import typing as t
from typing import reveal_type

import sqlalchemy as sa
from sqlalchemy import orm

import scoped_session


class Base(orm.DeclarativeBase):
    pass


engine = sa.create_engine("sqlite://")
theirs = orm.scoped_session(orm.sessionmaker(engine))
ours = scoped_session.ScopedSession(orm.sessionmaker(engine))
Theirs = orm.scoped_session
Ours = scoped_session.ScopedSession


class User(Base):
    __tablename__ = "user"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str]

    theirs_query: t.ClassVar[orm.QueryPropertyDescriptor] = theirs.query_property()
    ours_query: t.ClassVar[orm.QueryPropertyDescriptor] = ours.query_property()


def results(user: User) -> None:
    reveal_type(theirs)
    reveal_type(ours)
    reveal_type(theirs())
    reveal_type(ours())
    reveal_type(theirs(autoflush=False))
    reveal_type(ours(autoflush=False))

    reveal_type(theirs.get(User, 1))
    reveal_type(ours.get(User, 1))
    reveal_type(theirs.get(User, (1,), populate_existing=True))
    reveal_type(ours.get(User, (1,), populate_existing=True))
    reveal_type(theirs.get_one(User, 1))
    reveal_type(ours.get_one(User, 1))

    reveal_type(theirs.scalars(sa.select(User)))
    reveal_type(ours.scalars(sa.select(User)))
    reveal_type(theirs.scalars(sa.select(User)).all())
    reveal_type(ours.scalars(sa.select(User)).all())
    reveal_type(theirs.scalars(sa.text("select 1")))
    reveal_type(ours.scalars(sa.text("select 1")))
    reveal_type(theirs.scalar(sa.select(User.id)))
    reveal_type(ours.scalar(sa.select(User.id)))
    reveal_type(theirs.scalar(sa.select(User)))
    reveal_type(ours.scalar(sa.select(User)))
    reveal_type(theirs.scalar(sa.text("select 1")))
    reveal_type(ours.scalar(sa.text("select 1")))

    reveal_type(theirs.execute(sa.select(User.id, User.name)))
    reveal_type(ours.execute(sa.select(User.id, User.name)))
    reveal_type(theirs.execute(sa.select(User.id, User.name)).one())
    reveal_type(ours.execute(sa.select(User.id, User.name)).one())
    reveal_type(theirs.execute(sa.select(User.id, User.name)).one()[1])
    reveal_type(ours.execute(sa.select(User.id, User.name)).one()[1])
    reveal_type(theirs.execute(sa.select(User)).scalars().first())
    reveal_type(ours.execute(sa.select(User)).scalars().first())
    reveal_type(theirs.execute(sa.text("select 1")))
    reveal_type(ours.execute(sa.text("select 1")))
    reveal_type(theirs.execute(sa.text("select :x"), {"x": 1}).all())
    reveal_type(ours.execute(sa.text("select :x"), {"x": 1}).all())
    reveal_type(theirs.execute(sa.update(User).values(name="n")))
    reveal_type(ours.execute(sa.update(User).values(name="n")))

    reveal_type(theirs.merge(user))
    reveal_type(ours.merge(user))
    reveal_type(theirs.merge(user, load=False))
    reveal_type(ours.merge(user, load=False))
    reveal_type(theirs.merge_all([user]))  # SQLAlchemy >= 2.1
    reveal_type(ours.merge_all([user]))  # SQLAlchemy >= 2.1
    reveal_type(theirs.refresh)
    reveal_type(ours.refresh)

    # add / add_all / delete return None: their signatures are compared, and the calls
    # below must type-check.
    reveal_type(theirs.add)
    reveal_type(ours.add)
    reveal_type(theirs.add_all)
    reveal_type(ours.add_all)
    reveal_type(theirs.delete)
    reveal_type(ours.delete)
    theirs.add(user)
    ours.add(user)
    theirs.add_all([user, User(name="n")])
    ours.add_all([user, User(name="n")])
    theirs.add_all(u for u in [user])
    ours.add_all(u for u in [user])
    theirs_add: t.Callable[[object], None] = theirs.add
    ours_add: t.Callable[[object], None] = ours.add
    theirs_add_all: t.Callable[[t.Iterable[User]], None] = theirs.add_all
    ours_add_all: t.Callable[[t.Iterable[User]], None] = ours.add_all
    reveal_type(theirs_add)
    reveal_type(ours_add)
    reveal_type(theirs_add_all)
    reveal_type(ours_add_all)

    reveal_type(theirs.begin())
    reveal_type(ours.begin())
    reveal_type(theirs.begin(nested=True))
    reveal_type(ours.begin(nested=True))
    reveal_type(theirs.begin_nested())
    reveal_type(ours.begin_nested())
    with theirs.begin() as theirs_tx:
        reveal_type(theirs_tx)
    with ours.begin() as ours_tx:
        reveal_type(ours_tx)
    with theirs.begin_nested() as theirs_nested:
        reveal_type(theirs_nested)
    with ours.begin_nested() as ours_nested:
        reveal_type(ours_nested)
    reveal_type(theirs.connection())
    reveal_type(ours.connection())
    reveal_type(theirs.get_bind())
    reveal_type(ours.get_bind())
    reveal_type(theirs.get_bind(User))
    reveal_type(ours.get_bind(User))
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
    reveal_type(theirs.binds)  # SQLAlchemy >= 2.1
    reveal_type(ours.binds)  # SQLAlchemy >= 2.1
    reveal_type(theirs.autoflush)
    reveal_type(ours.autoflush)
    reveal_type(theirs.no_autoflush)
    reveal_type(ours.no_autoflush)
    with theirs.no_autoflush as theirs_no_autoflush:
        reveal_type(theirs_no_autoflush)
    with ours.no_autoflush as ours_no_autoflush:
        reveal_type(ours_no_autoflush)
    reveal_type(theirs.dirty)
    reveal_type(ours.dirty)
    reveal_type(theirs.new)
    reveal_type(ours.new)
    reveal_type(theirs.deleted)
    reveal_type(ours.deleted)
    reveal_type(theirs.identity_map)
    reveal_type(ours.identity_map)
    reveal_type(theirs.execution_options)  # SQLAlchemy >= 2.1
    reveal_type(ours.execution_options)  # SQLAlchemy >= 2.1
    theirs.autoflush = False
    ours.autoflush = False
    theirs.bind = engine
    ours.bind = engine
    theirs.info["key"] = "value"
    ours.info["key"] = "value"

    reveal_type(theirs.identity_key(User, 1))
    reveal_type(ours.identity_key(User, 1))
    reveal_type(theirs.identity_key(instance=user))
    reveal_type(ours.identity_key(instance=user))
    reveal_type(Theirs.identity_key(User, 1))
    reveal_type(Ours.identity_key(User, 1))
    reveal_type(theirs.object_session(user))
    reveal_type(ours.object_session(user))
    reveal_type(Theirs.object_session(user))
    reveal_type(Ours.object_session(user))

    reveal_type(theirs.query(User))
    reveal_type(ours.query(User))
    reveal_type(theirs.query(User).all())
    reveal_type(ours.query(User).all())
    reveal_type(theirs.query(User).filter_by(name="n").first())
    reveal_type(ours.query(User).filter_by(name="n").first())
    reveal_type(theirs.query(User.id, User.name))
    reveal_type(ours.query(User.id, User.name))
    reveal_type(theirs.query(User.id))
    reveal_type(ours.query(User.id))
    reveal_type(theirs.query_property())
    reveal_type(ours.query_property())
    reveal_type(User.theirs_query)
    reveal_type(User.ours_query)
    reveal_type(User.theirs_query.all())
    reveal_type(User.ours_query.all())

    reveal_type(theirs.configure)
    reveal_type(ours.configure)
    reveal_type(theirs.remove)
    reveal_type(ours.remove)
    theirs.configure(autoflush=False)
    ours.configure(autoflush=False)
    theirs.remove()
    ours.remove()
    theirs.commit()
    ours.commit()
    theirs.rollback()
    ours.rollback()
    theirs.flush()
    ours.flush()
    theirs.expire(user, ["name"])
    ours.expire(user, ["name"])
    theirs.expunge(user)
    ours.expunge(user)
    theirs.refresh(user, ["name"], with_for_update=True)
    ours.refresh(user, ["name"], with_for_update=True)
    theirs.close()
    ours.close()

    theirs_session: orm.Session = theirs()
    ours_session: orm.Session = ours()
    reveal_type(theirs_session)
    reveal_type(ours_session)
    reveal_type(theirs.registry())
    reveal_type(ours.registry())
    reveal_type(theirs.registry.has())
    reveal_type(ours.registry.has())


def members() -> None:
    # Every member as an attribute: the whole signature is compared.
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
    reveal_type(theirs.bulk_insert_mappings)
    reveal_type(ours.bulk_insert_mappings)
    reveal_type(theirs.bulk_save_objects)
    reveal_type(ours.bulk_save_objects)
    reveal_type(theirs.bulk_update_mappings)
    reveal_type(ours.bulk_update_mappings)
    reveal_type(theirs.close)
    reveal_type(ours.close)
    reveal_type(theirs.close_all)  # SQLAlchemy < 2.1
    reveal_type(ours.close_all)  # SQLAlchemy < 2.1
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
    reveal_type(theirs.query)
    reveal_type(ours.query)
    reveal_type(theirs.query_property)
    reveal_type(ours.query_property)
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
    reveal_type(Theirs.close_all)  # SQLAlchemy < 2.1
    reveal_type(Ours.close_all)  # SQLAlchemy < 2.1
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
