"""FlaskScopedSession: one session per application context, closed when it is over."""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
import threading
import typing as t
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")

from fakes import HAS_SQLALCHEMY, TrivialSession, needs_sqlalchemy
from flask import Flask, Response, stream_with_context
from flask.globals import request_ctx
from werkzeug.test import EnvironBuilder

from scoped_session import NoScopeError, ScopedSessionError
from scoped_session.flask import FlaskScopedSession

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"


# The tests on real databases skip without SQLAlchemy (their fixtures, or the mark).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Database, Note, checkedout
    from sqlalchemy import orm

    class CountingSession(orm.Session):
        """A real SQLAlchemy session that counts its close() calls."""

        closes: int = 0

        def close(self) -> None:
            self.closes += 1
            super().close()


def make(
    engine: sa.Engine, **kw: t.Any
) -> tuple[Flask, FlaskScopedSession[CountingSession], list[CountingSession]]:
    """An app with a FlaskScopedSession on ``engine``, and a list the views
    append the sessions they used to."""
    app = Flask(__name__)
    Session = FlaskScopedSession(orm.sessionmaker(engine, class_=CountingSession), app, **kw)
    return app, Session, []


def assert_clean(db: Database, Session: FlaskScopedSession[t.Any]) -> None:
    assert db.checkedout() == 0
    assert db.idle_in_transaction() == 0
    stats = Session._stats
    assert stats.created == stats.removed
    assert stats.reaped == 0


# -- 1. a request's session ------------------------------------------------------


def test_request_session_is_closed_and_forgotten(db: Database) -> None:
    app, Session, used = make(db.engine)

    @app.get("/")
    def view() -> str:
        session = Session()
        assert Session() is session
        assert Session.scalar(sa.text("SELECT 1")) == 1
        assert db.checkedout() == 1
        used.append(session)
        return "ok"

    client = app.test_client()
    assert client.get("/").data == b"ok"
    assert client.get("/").data == b"ok"
    first, second = used
    assert first is not second
    assert (first.closes, second.closes) == (1, 1)
    assert_clean(db, Session)
    assert Session._stats.created == 2


@pytest.mark.parametrize("propagate", [True, False])
def test_session_is_closed_when_the_view_raises(db: Database, propagate: bool) -> None:
    app, Session, used = make(db.engine, commit=True)
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.get("/")
    def view() -> str:
        Session.add(Note(text="never"))
        Session.flush()  # holds a write transaction until the session is closed
        used.append(Session())
        raise LookupError("the view failed")

    client = app.test_client()
    if propagate:
        with pytest.raises(LookupError, match="the view failed"):
            client.get("/")
    else:
        assert client.get("/").status_code == 500
    assert used[0].closes == 1
    assert db.count_notes() == 0
    assert_clean(db, Session)


def test_one_object_serves_several_apps(sqlite_engine: sa.Engine) -> None:
    factory = orm.sessionmaker(sqlite_engine, class_=CountingSession)
    Session = FlaskScopedSession(factory)
    apps = [Flask("one"), Flask("two")]
    used: list[tuple[str, CountingSession]] = []
    for app in apps:
        Session.init_app(app)
        assert Session in app.extensions["scoped_session"]

        @app.get("/")
        def view() -> str:
            from flask import current_app

            used.append((current_app.name, Session()))
            return "ok"

    for app in apps:
        assert app.test_client().get("/").data == b"ok"
    (name1, s1), (name2, s2) = used
    assert (name1, name2) == ("one", "two")
    assert s1 is not s2
    assert (s1.closes, s2.closes) == (1, 1)


def test_init_app_twice_on_one_app_raises() -> None:
    app = Flask(__name__)
    Session = FlaskScopedSession(TrivialSession, app)
    with pytest.raises(ScopedSessionError, match="already registered on the app") as info:
        Session.init_app(app)
    assert "once per app" in str(info.value)
    # Another FlaskScopedSession on the same app is fine.
    FlaskScopedSession(TrivialSession, app)
    assert len(app.extensions["scoped_session"]) == 2


def test_app_without_init_app_gets_an_error_that_says_what_to_do() -> None:
    Session = FlaskScopedSession(TrivialSession, Flask("registered"))
    with Flask("other").app_context(), pytest.raises(ScopedSessionError, match="init_app"):
        Session()


def test_remove_inside_a_request_starts_a_new_session(sqlite_engine: sa.Engine) -> None:
    app, Session, used = make(sqlite_engine)

    @app.get("/")
    def view() -> str:
        first = Session()
        Session.remove()
        used.extend([first, Session()])
        return "ok"

    app.test_client().get("/")
    first, second = used
    assert first is not second
    assert (first.closes, second.closes) == (1, 1)


# -- 2. nested contexts, leaked entries ---------------------------------------------


def test_nested_app_context_gets_its_own_session(db: Database) -> None:
    app, Session, used = make(db.engine)

    @app.get("/")
    def view() -> str:
        outer = Session()
        outer.execute(sa.text("SELECT 1"))
        with app.app_context():
            inner = Session()
            assert inner is not outer
            inner.execute(sa.text("SELECT 1"))
            assert db.checkedout() == 2
        assert inner.closes == 1
        assert outer.closes == 0
        assert Session() is outer
        assert db.checkedout() == 1
        used.extend([outer, inner])
        return "ok"

    assert app.test_client().get("/").data == b"ok"
    assert [s.closes for s in used] == [1, 1]
    assert_clean(db, Session)


def test_a_lost_context_is_never_handed_to_a_later_one(caplog: pytest.LogCaptureFixture) -> None:
    """A context dropped without being popped (its thread ended) takes its
    session with it; a later context, even one at the same address, gets a new
    session: nothing is keyed by id()."""
    app = Flask(__name__)
    Session = FlaskScopedSession(TrivialSession, app)
    lost: list[tuple[int, TrivialSession]] = []

    def leak() -> None:
        context = app.app_context()
        context.push()  # never popped
        lost.append((id(context), Session()))

    thread = threading.Thread(target=leak)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    gc.collect()  # the context's tokens and the thread's Context form a cycle
    ((address, leaked),) = lost
    # The context died with its thread: its session was closed by the cell.
    assert leaked.closed == 1
    assert Session._stats.reaped == 1
    assert "closed by its cell's finalizer" in caplog.text

    # Try to get a context at the dead one's address: an id()-keyed registry
    # would hand it the leaked session there.
    for _ in range(200):
        context = app.app_context()
        with context:
            assert Session() is not leaked
        if id(context) == address:
            break


# -- 3. stream_with_context --------------------------------------------------------


def stream_app(
    engine: sa.Engine, **kw: t.Any
) -> tuple[Flask, FlaskScopedSession[t.Any], dict[str, t.Any]]:
    app, Session, _ = make(engine, **kw)
    seen: dict[str, t.Any] = {"teardowns": []}

    @app.teardown_appcontext
    def record(exc: BaseException | None) -> None:
        session = seen.get("view")
        seen["teardowns"].append((type(exc).__name__, None if session is None else session.closes))

    @app.get("/stream")
    def view() -> Response:
        session = seen["view"] = Session()
        session.add(Note(text="view"))

        def body() -> t.Iterator[str]:
            assert Session() is session
            yield "a"
            Session.add(Note(text="body"))
            assert Session.scalar(sa.text("SELECT 1")) == 1
            yield "b"
            yield "c"

        return Response(stream_with_context(body()))

    return app, Session, seen


@pytest.mark.parametrize("commit", [True, False])
def test_stream_uses_the_view_session_and_closes_it_once(db: Database, commit: bool) -> None:
    app, Session, seen = stream_app(db.engine, commit=commit)
    response = app.test_client().get("/stream", buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"a"
    session = seen["view"]
    # Flask 3.1 popped the context once already (its first teardown; 3.0 keeps
    # it pushed), and the session is still open: the body is using it.
    assert seen["teardowns"] in ([("NoneType", 0)], [])
    assert session.closes == 0
    assert list(chunks) == [b"b", b"c"]
    # The body is over, which popped the context again: that ends the session,
    # without waiting for close() (werkzeug's server skips close() when the
    # client resets the connection after a complete body).
    assert seen["teardowns"][-1] == ("NoneType", 0)
    assert session.closes == 1
    response.close()
    assert session.closes == 1
    # With commit, the view's write and the body's were committed once the body
    # was over; without it, both were rolled back.
    assert db.count_notes() == (2 if commit else 0)
    assert_clean(db, Session)


def test_stream_closed_by_a_client_that_went_away(db: Database) -> None:
    app, Session, seen = stream_app(db.engine, commit=True)
    response = app.test_client().get("/stream", buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"a"
    assert next(chunks) == b"b"  # the body added a note and holds a connection
    assert db.checkedout() == 1
    response.close()  # what a server does when the client disconnects
    session = seen["view"]
    assert session.closes == 1
    assert seen["teardowns"][-1] == ("GeneratorExit", 0)
    # A stream cut short is rolled back as a whole: the view's note too.
    assert db.count_notes() == 0
    assert_clean(db, Session)


def test_stream_reads_a_result_the_view_opened_inside_its_transaction(db: Database) -> None:
    """With commit=True the commit waits for the body: committing before it
    would hand the connection under the view's open result to the pool."""
    app, Session, _ = make(db.engine, commit=True)
    with Session.session_factory() as setup:
        setup.add_all([Note(text=f"n{i}") for i in range(3)])
        setup.commit()
    during: list[tuple[bool, int]] = []

    @app.get("/export")
    def export() -> Response:
        notes = Session.scalars(sa.select(Note).order_by(Note.id))  # read lazily

        def body() -> t.Iterator[str]:
            for note in notes:
                during.append((Session().in_transaction(), db.checkedout()))
                yield note.text + "\n"
            Session.add(Note(text="exported"))

        return Response(stream_with_context(body()))

    with app.test_client().get("/export") as response:
        assert response.data == b"n0\nn1\nn2\n"
    assert during == [(True, 1)] * 3
    assert db.count_notes() == 4  # the body ran to its end: committed
    assert_clean(db, Session)


@pytest.mark.parametrize("commit", [False, True])
def test_stream_that_never_ran_is_closed_with_its_response(
    sqlite_engine: sa.Engine, commit: bool
) -> None:
    """A client gone before the first chunk: the body never ran to its end, so
    nothing is committed, even with commit=True (as when it leaves mid-stream)."""
    app, _, seen = stream_app(sqlite_engine, commit=commit)
    started: list[str] = []
    environ = EnvironBuilder("/stream").get_environ()

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
        started.append(status)

    body = app.wsgi_app(environ, start_response)
    assert started == ["200 OK"]
    assert seen["view"].closes == 0
    body.close()  # type: ignore[attr-defined]  # before the body ran: never pushed again
    assert seen["view"].closes == 1
    # Flask 3.1 popped the context before the body; 3.0 pops it when the
    # body's generator is closed.
    assert seen["teardowns"] in ([("NoneType", 0)], [("GeneratorExit", 0)])
    assert checkedout(sqlite_engine) == 0
    with sqlite_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM notes")) == 0


@pytest.mark.parametrize("commit", [True, False])
def test_body_that_uses_the_session_first_gets_one_closed_at_the_end(
    sqlite_engine: sa.Engine, commit: bool
) -> None:
    app, Session, used = make(sqlite_engine, commit=commit)

    @app.get("/")
    def view() -> Response:
        def body() -> t.Iterator[str]:
            used.append(Session())
            Session.add(Note(text="from the body"))
            yield "x"

        return Response(stream_with_context(body()))

    response = app.test_client().get("/")
    assert response.data == b"x"
    response.close()
    assert used[0].closes == 1
    with sqlite_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM notes")) == (1 if commit else 0)
    assert checkedout(sqlite_engine) == 0


def test_stream_after_a_nested_context_and_a_unit_is_ended_once(db: Database) -> None:
    """Without commit, a request watches its response from its first session on:
    a nested context's session and a unit's come and go before the response,
    and the view's own session is still handed to the body, once."""
    app, Session, used = make(db.engine)
    outer: list[t.Any] = []

    @app.get("/")
    def view() -> Response:
        with app.app_context():
            used.append(Session())  # the nested context's, closed at its end
        with Session.scope():
            used.append(Session())  # the unit's, closed when it ends
        session = Session()
        outer.append(session)
        notes = Session.scalars(sa.select(Note))

        def body() -> t.Iterator[str]:
            assert Session() is session
            yield str(len(notes.all()))

        return Response(stream_with_context(body()))

    with app.test_client().get("/", buffered=False) as response:
        assert [session.closes for session in used] == [1, 1]
        assert outer[0].closes == 0  # kept for the body
        assert response.get_data() == b"0"
    assert [session.closes for session in [*used, *outer]] == [1, 1, 1]
    assert_clean(db, Session)


def test_a_request_that_never_uses_the_session_runs_only_the_teardown(
    sqlite_engine: sa.Engine,
) -> None:
    """Flask's dispatch of each handler costs every request of the app: without
    commit there is no app-wide after_request handler, and a request watches its
    response only once it made a session."""
    app, Session, _ = make(sqlite_engine)
    committing, _, _ = make(sqlite_engine, commit=True)
    watched: list[int] = []

    @app.get("/<int:use>")
    def view(use: int) -> str:
        if use:
            Session.info  # noqa: B018
        watched.append(len(request_ctx._after_request_functions))
        return "ok"

    assert app.after_request_funcs == {}
    assert len(app.teardown_appcontext_funcs) == 1
    assert len(committing.after_request_funcs[None]) == 1
    client = app.test_client()
    assert client.get("/0").status_code == client.get("/1").status_code == 200
    assert watched == [0, 1]


# -- 4. no context; CLI and scripts ------------------------------------------------


def test_outside_any_app_context_raises_no_scope_error() -> None:
    calls: list[object] = []

    def factory() -> TrivialSession:
        calls.append(None)
        return TrivialSession()

    Session = FlaskScopedSession(factory, Flask(__name__))
    for use in (Session, lambda: Session.add(object()), lambda: Session.commit()):
        with pytest.raises(NoScopeError) as info:
            use()
        assert isinstance(info.value, ScopedSessionError)
        assert isinstance(info.value, RuntimeError)
        assert "app.app_context()" in str(info.value)
        assert "inside a request" in str(info.value)
    assert calls == []  # no session was made that nobody would close
    Session.remove()  # nothing to remove: a no-op, as everywhere


def test_script_app_context_gets_a_session_removed_at_its_end(db: Database) -> None:
    app, Session, _ = make(db.engine)
    with app.app_context():
        session = Session()
        Session.add(Note(text="uncommitted"))
        Session.flush()
    assert session.closes == 1
    assert db.count_notes() == 0  # contexts without a response never commit
    with app.app_context(), Session.scope(commit=True):
        Session.add(Note(text="committed"))
    assert db.count_notes() == 1
    assert_clean(db, Session)


def test_cli_command_gets_a_session_removed_at_its_end(sqlite_engine: sa.Engine) -> None:
    app, Session, used = make(sqlite_engine)

    @app.cli.command("add-note")
    def add_note() -> None:
        used.append(Session())
        Session.add(Note(text="cli"))
        Session.commit()
        assert Session() is used[0]

    result = app.test_cli_runner().invoke(args=["add-note"])
    assert result.exit_code == 0, result.output
    assert used[0].closes == 1
    assert checkedout(sqlite_engine) == 0
    with sqlite_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM notes")) == 1


def test_close_failure_at_the_end_of_a_context() -> None:
    class FailingClose(TrivialSession):
        def close(self) -> None:
            super().close()
            raise OSError("close failed")

    app = Flask(__name__)
    Session = FlaskScopedSession(FailingClose, app)
    with pytest.raises(OSError, match="close failed"), app.app_context():
        Session()
    assert Session._stats.created == Session._stats.removed == 1


def test_close_failure_never_hides_the_block_error(caplog: pytest.LogCaptureFixture) -> None:
    class FailingClose(TrivialSession):
        def close(self) -> None:
            raise OSError("close failed")

    app = Flask(__name__)
    Session = FlaskScopedSession(FailingClose, app)
    with pytest.raises(KeyError, match="own error"), app.app_context():
        Session()
        raise KeyError("own error")
    failures = [r for r in caplog.records if r.name == "scoped_session" and r.exc_info]
    assert len(failures) == 1
    assert "close failed" in str(failures[0].exc_info[1])  # type: ignore[index]


def test_remove_all_closes_every_context_session() -> None:
    app = Flask(__name__)
    Session = FlaskScopedSession(TrivialSession, app)
    with app.app_context():
        outer = Session()
        with app.app_context():
            inner = Session()
            assert Session.remove_all() == 2
            assert (outer.closed, inner.closed) == (1, 1)
            assert Session() is not inner
    assert Session._stats.created == Session._stats.removed == 3


# -- 5. commit=True ----------------------------------------------------------------


def commit_app(engine: sa.Engine, **kw: t.Any) -> tuple[Flask, FlaskScopedSession[t.Any]]:
    app, Session, _ = make(engine, **kw)

    @app.get("/add/<text>")
    def add(text: str) -> tuple[str, int]:
        Session.add(Note(text=text))
        status = 400 if text.startswith("bad") else 200
        return "done", status

    @app.get("/raise/<text>")
    def fail(text: str) -> str:
        Session.add(Note(text=text))
        raise LookupError(text)

    return app, Session


def test_commit_after_a_successful_response_only(db: Database) -> None:
    app, Session = commit_app(db.engine, commit=True)
    client = app.test_client()
    assert client.get("/add/one").status_code == 200
    assert client.get("/add/bad-status").status_code == 400
    assert client.get("/raise/raised").status_code == 500
    with db.engine.connect() as conn:
        assert conn.scalars(sa.select(Note.text)).all() == ["one"]
    assert_clean(db, Session)


def test_failed_commit_is_a_logged_500(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    app, Session = commit_app(db.engine, commit=True)
    client = app.test_client()
    assert client.get("/add/same").status_code == 200
    caplog.clear()
    # The duplicate is only flushed by the commit, after the view returned.
    response = client.get("/add/same")
    assert response.status_code == 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert errors, caplog.text
    assert isinstance(errors[0].exc_info[1], sa.exc.IntegrityError)  # type: ignore[index]
    assert db.count_notes() == 1
    assert_clean(db, Session)


def test_commit_happens_before_the_response_is_sent(sqlite_engine: sa.Engine) -> None:
    app, _ = commit_app(sqlite_engine, commit=True)
    counts: list[int] = []
    inner = app.wsgi_app

    def wsgi(environ: t.Any, start_response: t.Any) -> t.Any:
        def start(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
            # The server is about to send the status line: the row is there.
            with sqlite_engine.connect() as conn:
                counts.append(conn.scalar(sa.text("SELECT count(*) FROM notes")))
            return start_response(status, headers, exc_info)

        return inner(environ, start)

    app.wsgi_app = wsgi  # type: ignore[method-assign]
    assert app.test_client().get("/add/early").status_code == 200
    assert counts == [1]


@pytest.mark.parametrize(
    ("config", "commit", "expected"),
    [(True, None, 1), (False, None, 0), (None, None, 0), (True, False, 0), (False, True, 1)],
)
def test_config_key_sets_the_default(
    sqlite_engine: sa.Engine, config: bool | None, commit: bool | None, expected: int
) -> None:
    app = Flask(__name__)
    if config is not None:
        app.config["SCOPED_SESSION_COMMIT"] = config
    Session = FlaskScopedSession(orm.sessionmaker(sqlite_engine), commit=commit)
    Session.init_app(app)

    @app.get("/")
    def view() -> str:
        Session.add(Note(text="x"))
        return "ok"

    assert app.test_client().get("/").status_code == 200
    with sqlite_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM notes")) == expected


def test_without_commit_nothing_is_committed(db: Database) -> None:
    app, Session = commit_app(db.engine)
    assert app.test_client().get("/add/x").status_code == 200
    assert db.count_notes() == 0
    assert_clean(db, Session)


# -- 8. the example ----------------------------------------------------------------


def load_example(monkeypatch: pytest.MonkeyPatch, url: str) -> t.Any:
    monkeypatch.setenv("DATABASE_URL", url)
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # SQLAlchemy resolves the models' annotations through sys.modules.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@needs_sqlalchemy
def test_example_notes_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    example = load_example(monkeypatch, f"sqlite:///{tmp_path / 'notes.db'}")
    client = example.app.test_client()
    created = client.post("/notes", json={"text": "first"})
    assert created.status_code == 201
    assert created.json == {"id": 1, "text": "first"}
    assert client.post("/notes", json={"text": "first"}).status_code == 409
    assert client.post("/notes", json={}).status_code == 400
    assert client.post("/notes", json={"text": "second"}).status_code == 201
    assert client.get("/notes").json == {
        "notes": [{"id": 1, "text": "first"}, {"id": 2, "text": "second"}]
    }
    assert client.get("/notes/2").json == {"id": 2, "text": "second"}
    with client.get("/notes/export") as export:  # a server closes it, so must we
        assert export.data == b"1\tfirst\n2\tsecond\n"
    assert client.delete("/notes/1").status_code == 204
    assert client.get("/notes/1").status_code == 404
    assert client.get("/notes").json == {"notes": [{"id": 2, "text": "second"}]}
    assert checkedout(example.engine) == 0
    stats = example.Session._stats
    assert stats.created == stats.removed
    example.engine.dispose()
