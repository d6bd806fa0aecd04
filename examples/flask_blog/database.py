"""The blog's registry and declarative base.

``Session`` is made at import time without an engine: each app made by
``create_app()`` gives it one (``Session.init_app(app)`` reads the app's
``SCOPED_SESSION_DATABASE_URI``). ``Base`` names each model's table the way
Flask-SQLAlchemy 3 does, so a database made with Flask-SQLAlchemy keeps working.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.orm import DeclarativeBase, declared_attr, sessionmaker

from scoped_session.flask import FlaskScopedSession

Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(sessionmaker())

# A word starts at a capital after a small letter or a digit ("userID" -> "user_id"),
# and at a capital followed by a small letter after an acronym ("HTTPLog" ->
# "http_log"): the same rule as Flask-SQLAlchemy 3's camel_to_snake_case().
_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?!^)(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """A class name as Flask-SQLAlchemy names its table: ``BlogPost`` -> ``blog_post``."""
    return _WORD_START.sub("_", name).lower().lstrip("_")


class Base(DeclarativeBase):
    """The models' base: each model's table is named after its class in snake_case
    unless it sets ``__tablename__`` itself.

    A subclass mapped to its parent's table (single-table inheritance) sets
    ``__tablename__ = None``; one with a table of its own (joined-table
    inheritance) gets a name as any model does.
    """

    # Named constraints: Alembic can then drop and alter them, also on SQLite,
    # where Flask-Migrate rebuilds the table ("batch" mode) to change it.
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )

    @declared_attr.directive
    def __tablename__(cls) -> str | None:
        return snake_case(cls.__name__)
