"""A small blog on Flask with FlaskScopedSession, Flask-Migrate and an app factory.

Run it from the repository's root (SQLite ``flask_blog.db`` in the current
directory by default; ``FLASK_SCOPED_SESSION_DATABASE_URI`` for another
database, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/blog``)::

    flask --app examples/flask_blog db upgrade   # make the tables (migrations/)
    flask --app examples/flask_blog seed         # a few users and posts
    flask --app examples/flask_blog run          # then open http://127.0.0.1:5000/

    curl -X POST localhost:5000/api/users -H 'Content-Type: application/json' -d '{"name": "ada"}'
    curl -X POST localhost:5000/api/users/ada/posts -H 'Content-Type: application/json' \\
        -d '{"title": "Hello", "body": "First post"}'
    curl 'localhost:5000/api/posts?page=1&per_page=5'

After changing the models: ``flask --app examples/flask_blog db migrate -m "..."``,
then ``db upgrade``.

- ``database.py``: ``Session`` (one FlaskScopedSession for every app) and ``Base``
  (Flask-SQLAlchemy's automatic table names);
- ``models.py``: ``User`` and ``BlogPost`` (tables ``user`` and ``blog_post``);
- ``pages.py``: HTML pages, a page of posts at a time;
- ``api.py``: the JSON API under ``/api``;
- ``migrations/``: made by ``flask db init`` and ``flask db migrate``.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import click
from flask import Flask
from flask.cli import with_appcontext
from flask_migrate import Migrate  # type: ignore[import-untyped]

from scoped_session.flask import MigrateTarget

from . import api, pages
from .database import Base, Session
from .models import BlogPost, User

__all__ = ["Base", "BlogPost", "Session", "User", "create_app"]

#: Flask-Migrate's ``env.py`` asks ``MigrateTarget`` for the current app's engine
#: and the models' metadata. The folder is found wherever ``flask`` runs from.
migrate = Migrate(
    db=MigrateTarget(Session, Base.metadata), directory=Path(__file__).parent / "migrations"
)


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Make a blog app; ``config`` overrides its settings (tests pass a database).

    :param config: Flask config keys, such as ``SCOPED_SESSION_DATABASE_URI``.
    """
    app = Flask(__name__)
    app.config.from_mapping(
        SCOPED_SESSION_DATABASE_URI="sqlite:///flask_blog.db",
        # Commit each request's session once its response is ready and below 400.
        SCOPED_SESSION_COMMIT=True,
    )
    app.config.from_prefixed_env()  # FLASK_SCOPED_SESSION_DATABASE_URI=...
    if config is not None:
        app.config.from_mapping(config)

    Session.init_app(app)  # the app's own engine, from SCOPED_SESSION_DATABASE_URI
    migrate.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp, url_prefix="/api")
    app.cli.add_command(seed)
    return app


@click.command()
@click.option("--users", default=3, show_default=True)
@click.option("--posts", default=12, show_default=True, help="Posts per user.")
@with_appcontext
def seed(users: int, posts: int) -> None:
    """Add users and posts to try the pages with."""
    # A CLI command runs in an app context, which has its own session; it never
    # commits on its own.
    for n in range(1, users + 1):
        user = User(name=f"user{n}")
        user.posts = [BlogPost(title=f"Post {i} by {user.name}") for i in range(1, posts + 1)]
        Session.add(user)
    Session.commit()
    click.echo(f"Added {users} users and {users * posts} posts.")
