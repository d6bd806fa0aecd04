"""The Flask mistakes of issue #16, each stopped at the call that made it with an
error that says what to pass, and the pattern that commits where ``commit=True``
cannot (CLI commands, ``app.app_context()`` blocks).

The checks of the app factories' arguments (``bind``, the engine's config keys,
``get_engine()``) live with them, in ``test_flask_apps.py``.
"""

from __future__ import annotations

import typing as t

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")

from fakes import HAS_SQLALCHEMY, TrivialSession
from flask import Flask, Response, stream_with_context

from scoped_session import NoScopeError
from scoped_session.flask import FlaskScopedSession

if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import click
    import sqlalchemy as sa
    from helpers import Database, Note
    from sqlalchemy import orm


def texts(engine: sa.Engine) -> list[str]:
    """The notes committed to ``engine``'s database, read on a connection of its own."""
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Note.text).order_by(Note.id)))


# -- arguments -------------------------------------------------------------------------


def test_the_app_passed_as_the_session_factory() -> None:
    """``FlaskScopedSession(app)``, as ``SQLAlchemy(app)`` is written: a Flask app
    is callable, so only this check stops it before the first request."""
    app = Flask("blog")
    with pytest.raises(TypeError) as info:
        FlaskScopedSession(app)  # type: ignore[type-var]  # mypy sees it too
    message = str(info.value)
    assert "takes the session factory first and the app second" in message
    assert "FlaskScopedSession(sessionmaker(engine), app)" in message
    assert "'blog'" in message
    assert "scoped_session" not in app.extensions  # nothing was registered


@pytest.mark.parametrize("app", ["app", 42])
def test_constructor_without_a_flask_app(app: object) -> None:
    with pytest.raises(TypeError) as info:
        FlaskScopedSession(TrivialSession, app)  # type: ignore[arg-type]
    assert str(info.value) == (
        "FlaskScopedSession(session_factory, app) takes a Flask app, such as"
        f" app = Flask(__name__); got an object of type {type(app).__name__}."
    )


@pytest.mark.parametrize("app", [None, "app", 42])
def test_init_app_without_a_flask_app(app: object) -> None:
    Session = FlaskScopedSession(TrivialSession)
    with pytest.raises(TypeError) as info:
        Session.init_app(app)  # type: ignore[arg-type]
    assert str(info.value) == (
        "init_app() takes a Flask app, such as app = Flask(__name__); got an object"
        f" of type {type(app).__name__}."
    )


@pytest.mark.parametrize("value", ["yes", 1])
def test_commit_other_than_a_flag_is_refused(value: object) -> None:
    with pytest.raises(TypeError) as info:
        FlaskScopedSession(TrivialSession, commit=value)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"commit must be True or False, not an object of type {type(value).__name__}."
    )


@pytest.mark.parametrize("value", ["false", "yes", 0])
def test_commit_config_key_other_than_a_flag_is_refused(value: object) -> None:
    """A string such as "false" is true: it would commit every request."""
    app = Flask(__name__)
    app.config["SCOPED_SESSION_COMMIT"] = value
    Session = FlaskScopedSession(TrivialSession)
    with pytest.raises(TypeError) as info:
        Session.init_app(app)
    assert str(info.value) == (
        "app.config['SCOPED_SESSION_COMMIT'] must be True or False, not an object of"
        f" type {type(value).__name__}."
    )
    assert Session not in app.extensions.get("scoped_session", {})
    app.config["SCOPED_SESSION_COMMIT"] = False
    Session.init_app(app)  # fixed, it registers


# -- a streamed body without stream_with_context ---------------------------------------


def streaming_app(engine: sa.Engine, *, wrap: bool) -> tuple[Flask, list[orm.Session]]:
    """An app whose view streams a body that uses the session, wrapped in
    ``stream_with_context`` or not; the list gets the view's session."""
    app = Flask(__name__)
    Session = FlaskScopedSession(orm.sessionmaker(engine), app, commit=True)
    used: list[orm.Session] = []

    @app.get("/export")
    def export() -> Response:
        used.append(Session())
        Session.add(Note(text="view"))

        def generate() -> t.Iterator[str]:
            yield "start\n"
            Session.add(Note(text="body"))
            yield "done\n"

        return Response(stream_with_context(generate()) if wrap else generate())

    return app, used


def test_streamed_body_without_stream_with_context_says_to_wrap_it(db: Database) -> None:
    app, used = streaming_app(db.engine, wrap=False)
    response = app.test_client().get("/export", buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"start\n"
    with pytest.raises(NoScopeError) as info:
        next(chunks)  # the body runs after the request's context was popped
    message = str(info.value)
    assert "No Flask application context is active" in message
    assert "Response(stream_with_context(generate()))" in message
    response.close()
    # The view's session was closed all the same, with the response.
    (session,) = used
    assert not session.in_transaction()
    assert not session.new
    assert db.checkedout() == 0


def test_the_same_body_wrapped_in_stream_with_context_works(db: Database) -> None:
    app, _ = streaming_app(db.engine, wrap=True)
    with app.test_client().get("/export") as response:
        assert response.data == b"start\ndone\n"
    assert db.checkedout() == 0
    assert texts(db.engine) == ["view", "body"]


# -- commit where there is no response -------------------------------------------------


def cli_app(engine: sa.Engine) -> Flask:
    """An app with ``commit=True`` and CLI commands that write, with and without a
    unit of work."""
    app = Flask(__name__)
    Session = FlaskScopedSession(orm.sessionmaker(), commit=True)
    Session.init_app(app, bind=engine)  # the unit's session must get the app's engine

    @app.cli.command("plain")
    @click.argument("text")
    def plain(text: str) -> None:
        Session.add(Note(text=text))  # commit=True has no response to wait for

    @app.cli.command("seed")
    @click.argument("text")
    @Session.scope(commit=True)
    def seed(text: str) -> None:
        Session.add(Note(text=text))
        if text == "fail":
            raise click.ClickException("the command failed")

    @app.cli.command("block")
    @click.argument("text")
    def block(text: str) -> None:
        with Session.scope(commit=True):
            Session.add(Note(text=text))

    app.extensions["test.session"] = Session
    return app


def test_commit_true_does_nothing_in_a_cli_command(db: Database) -> None:
    """As documented: a CLI command has no response to commit after."""
    app = cli_app(db.engine)
    result = app.test_cli_runner().invoke(args=["plain", "lost"])
    assert result.exit_code == 0, result.output
    assert texts(db.engine) == []
    assert db.checkedout() == 0


def test_a_unit_of_work_commits_in_a_cli_command(db: Database) -> None:
    app = cli_app(db.engine)
    runner = app.test_cli_runner()
    for args in (["seed", "decorated"], ["block", "with-block"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
    assert texts(db.engine) == ["decorated", "with-block"]
    failed = runner.invoke(args=["seed", "fail"])
    assert failed.exit_code == 1
    assert "the command failed" in failed.output
    assert texts(db.engine) == ["decorated", "with-block"]  # rolled back
    assert db.checkedout() == 0
    stats = app.extensions["test.session"].stats()
    assert (stats.live, stats.created, stats.removed) == (0, 3, 3)


def test_a_unit_of_work_commits_in_an_app_context_block(db: Database) -> None:
    app = cli_app(db.engine)
    Session: FlaskScopedSession[orm.Session] = app.extensions["test.session"]
    with app.app_context():
        Session.add(Note(text="lost"))  # commit=True: no response, no commit
    with app.app_context(), Session.scope(commit=True):
        Session.add(Note(text="kept"))
    with app.app_context():
        Session.add(Note(text="before"))  # the context's own session
        with Session.scope(commit=True):
            Session.add(Note(text="in the unit"))  # a unit of its own
        Session.flush()
    assert texts(db.engine) == ["kept", "in the unit"]
    assert db.checkedout() == 0
