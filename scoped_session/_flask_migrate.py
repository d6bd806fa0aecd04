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
``get_engine()`` (or reads ``engine``) and ``metadata`` on it, after asking
``hasattr(db, "metadatas")``. A FlaskScopedSession cannot be passed itself: it
forwards names it lacks to the current session, so that probe would make a session,
and it has no metadata to give. This small object answers those names and nothing
else; Flask-Migrate itself is not imported.
"""

from __future__ import annotations

import typing as t

from ._arguments import sqlalchemy_module

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

    def get_engine(self) -> Engine:
        """The current app's engine, which ``flask db ...`` migrates; made by
        :meth:`FlaskScopedSession.get_engine`, so no session is made and no
        connection is opened."""
        return self._session.get_engine()

    @property
    def engine(self) -> Engine:
        """:meth:`get_engine`, as Flask-SQLAlchemy 3 names it."""
        return self.get_engine()

    def __repr__(self) -> str:
        # The metadata's tables, not the engine: its URL can hold a password.
        return f"<MigrateTarget tables={len(self._metadata.tables)}>"
