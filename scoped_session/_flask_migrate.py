"""What Flask-Migrate needs from a FlaskScopedSession: the app's engine and the
models' metadata. ``scoped_session.flask`` is the public module; this one is its
implementation.

::

    from flask_migrate import Migrate
    from scoped_session.flask import FlaskScopedSession, MigrateTarget

    Session = FlaskScopedSession(sessionmaker())
    migrate = Migrate(db=MigrateTarget(Session, Base.metadata))

    def create_app():
        app = Flask(__name__)
        Session.init_app(app, bind=create_engine(url))
        migrate.init_app(app)
        return app

Flask-Migrate's ``env.py`` reads ``current_app.extensions["migrate"].db`` and calls
``get_engine()`` (or reads ``engine``) and ``metadatas[None]`` (or ``metadata``) on
it. Its multi-database template (``flask db init --multidb``) also calls
``bind_names()``, then ``get_engine(bind=name)`` and ``metadatas[name]`` for each
bind of the app. A FlaskScopedSession cannot be passed itself: it has no metadata to
give. This small object answers those names and nothing else; Flask-Migrate itself
is not imported.
"""

from __future__ import annotations

import typing as t

from ._arguments import sqlalchemy_module
from ._exceptions import ScopedSessionError
from ._flask_scope import bind_metadata, bind_name, describe_key

if t.TYPE_CHECKING:
    from sqlalchemy import Engine, MetaData

    from .flask import FlaskScopedSession

__all__ = ["MigrateTarget"]


class MigrateTarget:
    """The ``db`` to give Flask-Migrate's ``Migrate(app, db)``: the engine of the
    current app's :class:`~scoped_session.flask.FlaskScopedSession` and the
    metadata to compare the database with.

    One object serves every app of an app factory: the engine is looked up in the
    app context that ``flask db ...`` runs in, so each app migrates its own
    database. The app needs an engine of its own, given with
    ``Session.init_app(app, bind=engine)`` or the ``SCOPED_SESSION_DATABASE_URI``
    config key.

    An app with ``binds`` (``init_app(app, binds={AuthBase: engine})``) is
    migrated by Flask-Migrate's multi-database template, ``flask db init
    --multidb``: each bind is a database of its own, named by its base's metadata
    (``MetaData(info={"bind_key": "auth"})``), with that metadata's tables.

    :param session: the FlaskScopedSession registered on the apps.
    :param metadata: the models' ``MetaData``, usually ``Base.metadata``.
    """

    __slots__ = ("_metadata", "_session")

    def __init__(self, session: FlaskScopedSession[t.Any], metadata: MetaData) -> None:
        # By its scope, not its class: scoped_session.flask imports this module.
        if getattr(session, "scope_kind", None) != "flask":
            raise TypeError(
                "MigrateTarget() takes the app's FlaskScopedSession, such as"
                " Session = FlaskScopedSession(sessionmaker()); got an object of type"
                f" {type(session).__name__}."
            )
        sa = sqlalchemy_module("sqlalchemy", "MigrateTarget()")
        if not isinstance(metadata, sa.MetaData):
            hint = ""
            if isinstance(getattr(metadata, "metadata", None), sa.MetaData):
                hint = " Pass the declarative base's metadata: Base.metadata, not Base."
            raise TypeError(
                "MigrateTarget() takes the models' SQLAlchemy MetaData, such as"
                f" Base.metadata; got an object of type {type(metadata).__name__}.{hint}"
            )
        self._session: FlaskScopedSession[t.Any] = session
        self._metadata: MetaData = metadata

    @property
    def metadata(self) -> MetaData:
        """The metadata that ``flask db migrate`` compares the database with."""
        return self._metadata

    @property
    def metadatas(self) -> dict[str | None, MetaData]:
        """The metadata of each database of the current app, by bind name: the
        default one under None, as Flask-SQLAlchemy 3 gives them."""
        found: dict[str | None, MetaData] = {None: self._metadata}
        for key in self._session.get_binds():
            name, metadata = bind_name(key), bind_metadata(key)
            if name is not None and metadata is not None:
                found[name] = metadata
        return found

    def bind_names(self) -> list[str]:
        """The names of the current app's binds, which the multi-database
        template migrates besides the default database."""
        names: list[str] = []
        for key in self._session.get_binds():
            name, metadata = bind_name(key), bind_metadata(key)
            if name is None or metadata is None or metadata is self._metadata:
                raise ScopedSessionError(
                    f"Flask-Migrate migrates each bind as a database of its own, named"
                    f" by its metadata; the bind {describe_key(key)} has"
                    f" {'no name' if metadata is not self._metadata else 'the default metadata'}."
                    " Key it by a declarative base with a MetaData of its own that names"
                    " it: class AuthBase(DeclarativeBase): metadata ="
                    " MetaData(info={'bind_key': 'auth'})."
                )
            if name in names:
                raise ScopedSessionError(
                    f"Two binds of the app are named {name!r}: give each base's metadata"
                    " a name of its own (info={'bind_key': ...})."
                )
            names.append(name)
        return names

    def get_engine(self, bind: str | None = None) -> Engine:
        """The current app's engine, which ``flask db ...`` migrates, or that of
        its bind named ``bind``; made by
        :meth:`FlaskScopedSession.get_engine`, so no session is made and no
        connection is opened."""
        return self._session.get_engine(bind_key=bind)

    @property
    def engine(self) -> Engine:
        """:meth:`get_engine`, as Flask-SQLAlchemy 3 names it."""
        return self.get_engine()

    def __repr__(self) -> str:
        # The metadata's tables, not the engine: its URL can hold a password.
        return f"<MigrateTarget tables={len(self._metadata.tables)}>"
