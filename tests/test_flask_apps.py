"""FlaskScopedSession with app factories: one object, several apps, each bound to
its own database (``init_app(app, bind=engine)`` or the app's config keys)."""

from __future__ import annotations

import gc
import inspect
import json
import os
import threading
import time
import typing as t
import uuid
import warnings
import weakref
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")

from fakes import HAS_SQLALCHEMY, NO_SQLALCHEMY, TrivialSession, needs_sqlalchemy
from flask import Flask, current_app

from scoped_session import NoScopeError, ScopedSessionError
from scoped_session.flask import FlaskScopedSession

WAIT = 30.0  # seconds: the bound on every wait in this file

# The tests on real databases skip without SQLAlchemy (their fixtures, or the mark).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import click
    import psycopg
    import sqlalchemy as sa
    from helpers import Base, Note, backends, checkedout, drop_schema, libpq_url, postgres_url
    from sqlalchemy import orm

    #: What an application module would have: one registry, no engine at import time.
    Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(orm.sessionmaker())


class Target(t.NamedTuple):
    """A database for one app: its URL, and how to count its server connections."""

    kind: str  # "sqlite" or "postgres"
    url: str
    app_name: str  # postgres: the application_name in the URL, to count backends by

    def texts(self) -> list[str]:
        """The notes in this database, read with an engine of its own (not through
        the registry)."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return list(conn.scalars(sa.select(Note.text).order_by(Note.id)))
        finally:
            engine.dispose()

    def backends(self) -> list[tuple[int, str]]:
        """Server-side connections to this database (postgres); [] for SQLite."""
        if self.kind != "postgres":
            return []
        pg = postgres_url()
        assert pg is not None
        return backends(pg, self.app_name)

    def backends_gone(self) -> bool:
        """Whether the server has no connection of this database left, once the
        backends of connections just closed have exited (they do so on their own
        time: polled, with a deadline)."""
        deadline = time.monotonic() + WAIT
        while self.backends():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


def create_app(
    url: str | None, name: str, *, bind: sa.Engine | sa.Connection | None = None
) -> Flask:
    """The application's factory: with ``bind``, the app is given that engine;
    otherwise ``url`` goes into its config."""
    app = Flask(name)
    app.config["SCOPED_SESSION_COMMIT"] = True
    if url is not None:
        app.config["SCOPED_SESSION_DATABASE_URI"] = url
    Session.init_app(app, bind=bind)

    @app.post("/notes/<text>")
    def add(text: str) -> dict[str, t.Any]:
        Session.add(Note(text=text))
        Session.flush()
        return {"app": current_app.name, "own_engine": Session.get_bind() is Session.engine}

    @app.get("/notes")
    def notes() -> dict[str, t.Any]:
        return {"notes": list(Session.scalars(sa.select(Note.text).order_by(Note.id)))}

    @app.cli.command("add-note")
    @click.argument("text")
    def add_note(text: str) -> None:
        Session.add(Note(text=text))
        Session.commit()  # a CLI command never commits on its own

    return app


@pytest.fixture(params=["sqlite", "postgres"])
def targets(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[list[Target]]:
    """Two empty databases: two SQLite files, or two PostgreSQL schemas (if
    configured), each reached by a URL alone."""
    if not HAS_SQLALCHEMY:
        pytest.skip(NO_SQLALCHEMY)
    if request.param == "sqlite":
        # The driver's timeout: writers of one file wait for each other.
        yield [Target("sqlite", f"sqlite:///{tmp_path / f'{n}.db'}?timeout=30", "") for n in "ab"]
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    found: list[Target] = []
    schemas: list[str] = []
    try:
        with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
            for _ in "ab":
                tag = uuid.uuid4().hex[:12]
                schema, app_name = f"ss_{tag}", f"ss-test-{tag}"
                conn.execute(f"CREATE SCHEMA {schema}")
                schemas.append(schema)
                url = sa.make_url(pg).update_query_dict(
                    {"options": f"-csearch_path={schema}", "application_name": app_name}
                )
                found.append(
                    Target("postgres", url.render_as_string(hide_password=False), app_name)
                )
        yield found
    finally:
        for schema in schemas:
            drop_schema(pg, schema)


@pytest.fixture
def apps(targets: list[Target]) -> t.Iterator[list[Flask]]:
    """Two apps from one factory, each given an engine on its own database, with
    the tables made through ``Session.get_engine(app)``."""
    made = [
        create_app(None, f"app-{n}", bind=sa.create_engine(target.url))
        for n, target in zip("ab", targets, strict=True)
    ]
    engines = [Session.get_engine(app) for app in made]
    for engine in engines:
        Base.metadata.create_all(engine)
    yield made
    for engine, target in zip(engines, targets, strict=True):
        # Every session was closed with its context: nothing is checked out,
        # nothing waits in a transaction on the server.
        assert checkedout(engine) == 0
        engine.dispose()  # it was passed to init_app(): ours to dispose
        assert target.backends_gone()


def post(app: Flask, text: str) -> dict[str, t.Any]:
    response = app.test_client().post(f"/notes/{text}")
    assert response.status_code == 200, response.text
    data: dict[str, t.Any] = response.json  # type: ignore[assignment]
    return data


# -- 1. writes land in their own app's database --------------------------------------


def test_requests_write_to_their_own_apps_database(
    apps: list[Flask], targets: list[Target]
) -> None:
    a, b = apps
    # Interleaved in one thread: A, B, A.
    assert post(a, "a1") == {"app": "app-a", "own_engine": True}
    assert post(b, "b1") == {"app": "app-b", "own_engine": True}
    assert post(a, "a2") == {"app": "app-a", "own_engine": True}
    assert [target.texts() for target in targets] == [["a1", "a2"], ["b1"]]
    # Reads go to the app's own database too.
    assert a.test_client().get("/notes").json == {"notes": ["a1", "a2"]}
    assert b.test_client().get("/notes").json == {"notes": ["b1"]}


def test_cli_commands_write_to_their_own_apps_database(
    apps: list[Flask], targets: list[Target]
) -> None:
    a, b = apps
    for app, text in [(a, "cli-a1"), (b, "cli-b1"), (a, "cli-a2")]:
        result = app.test_cli_runner().invoke(args=["add-note", text])
        assert result.exit_code == 0, result.output
    assert [target.texts() for target in targets] == [["cli-a1", "cli-a2"], ["cli-b1"]]


def test_app_context_blocks_write_to_their_own_apps_database(
    apps: list[Flask], targets: list[Target]
) -> None:
    a, b = apps
    with a.app_context():
        Session.add(Note(text="a-outer"))
        Session.flush()
        # B's context nested in A's gets a session of its own, on B's database.
        with b.app_context():
            assert Session.engine is Session.get_engine(b)
            Session.add(Note(text="b-nested"))
            Session.commit()
        assert Session.engine is Session.get_engine(a)
        Session.commit()
    # A unit of work in a context is bound the same way.
    with b.app_context(), Session.scope(commit=True):
        Session.add(Note(text="b-unit"))
    assert [target.texts() for target in targets] == [["a-outer"], ["b-nested", "b-unit"]]


def test_concurrent_requests_to_both_apps(apps: list[Flask], targets: list[Target]) -> None:
    """Four threads, each alternating between the apps; in every round all four
    requests are inside their views at once, two per app, before any writes."""
    threads_count, rounds = 4, 5
    barrier = threading.Barrier(threads_count, timeout=WAIT)
    engines = {app.name: Session.get_engine(app) for app in apps}
    seen: list[tuple[str, bool, bool]] = []
    errors: list[BaseException] = []

    for app in apps:

        @app.post("/together/<text>", endpoint="together")
        def together(text: str) -> str:
            engine = engines[current_app.name]
            seen.append((current_app.name, Session.get_bind() is engine, Session.engine is engine))
            barrier.wait()  # every thread's request is in flight here
            Session.add(Note(text=text))
            return "ok"

    def client(number: int) -> None:
        try:
            for turn in range(rounds):
                app = apps[(number + turn) % 2]
                response = app.test_client().post(f"/together/{app.name}-{number}-{turn}")
                assert response.status_code == 200, response.text
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # the others stop waiting for this one

    threads = [threading.Thread(target=client, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * rounds)
        assert not thread.is_alive()
    assert errors == []
    assert len(seen) == threads_count * rounds
    assert all(own_bind and own_engine for _, own_bind, own_engine in seen)
    expected = [
        sorted(
            f"{app.name}-{n}-{turn}"
            for n in range(threads_count)
            for turn in range(rounds)
            if (n + turn) % 2 == index
        )
        for index, app in enumerate(apps)
    ]
    assert [sorted(target.texts()) for target in targets] == expected
    assert all(len(texts) == threads_count * rounds // 2 for texts in expected)


def test_session_bind_argument_overrides_the_apps_engine(
    apps: list[Flask], targets: list[Target]
) -> None:
    a, b = apps
    other = Session.get_engine(b)
    with a.app_context():
        session = Session(bind=other)
        assert session.get_bind() is other
        Session.add(Note(text="to-b"))
        Session.commit()
    assert [target.texts() for target in targets] == [[], ["to-b"]]


# -- 2. the engine from the app's config -----------------------------------------------


def test_config_key_makes_the_apps_engine(targets: list[Target]) -> None:
    target, _ = targets
    app = create_app(target.url, "configured")
    engine = Session.get_engine(app)
    assert isinstance(engine, sa.Engine)
    assert engine.url == sa.make_url(target.url)
    Base.metadata.create_all(engine)
    with app.app_context():
        assert Session.engine is engine
        assert Session.get_engine() is engine
    assert post(app, "configured") == {"app": "configured", "own_engine": True}
    assert target.texts() == ["configured"]
    assert checkedout(engine) == 0
    engine.dispose()  # not needed by the extension: the test's own check of the server
    assert target.backends_gone()


@needs_sqlalchemy
def test_config_engine_options_reach_create_engine(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config["SCOPED_SESSION_DATABASE_URI"] = f"sqlite:///{tmp_path / 'options.db'}"
    app.config["SCOPED_SESSION_ENGINE_OPTIONS"] = {"pool_size": 3, "pool_timeout": 7}
    Session.init_app(app)
    pool = t.cast("sa.QueuePool", Session.get_engine(app).pool)
    assert (pool.size(), pool.timeout()) == (3, 7)


def used_app(target: Target, *, bind: sa.Engine | None) -> list[Flask]:
    """An app (configured by URL, or given ``bind``) that has used its database,
    in a list: the test's only reference to it, dropped by emptying the list."""
    app = create_app(target.url if bind is None else None, "short-lived", bind=bind)
    Base.metadata.create_all(Session.get_engine(app))
    assert post(app, "short-lived") == {"app": "short-lived", "own_engine": True}
    return [app]


def pool_closes(engine: sa.Engine) -> list[object]:
    """Records each connection its (current) pool closes."""
    closed: list[object] = []
    sa.event.listen(engine.pool, "close", lambda conn, record: closed.append(record))
    return closed


def test_config_engine_is_disposed_with_its_app(targets: list[Target]) -> None:
    target, _ = targets
    holder = used_app(target, bind=None)
    ref, engine = weakref.ref(holder[0]), Session.get_engine(holder[0])
    pool = engine.pool
    closed = pool_closes(engine)
    assert t.cast("sa.QueuePool", pool).checkedin() == 1  # the request's, kept by the pool
    if target.kind == "postgres":
        assert len(target.backends()) == 1
    holder.clear()
    gc.collect()
    assert ref() is None  # nothing of the extension kept the app alive
    assert len(closed) == 1  # dispose() closed the pooled connection
    assert engine.pool is not pool  # and gave the engine a fresh pool
    assert target.backends_gone()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_fork_child_that_drops_the_app_leaves_the_parents_connections(
    targets: list[Target],
) -> None:
    """A fork child (a preforking server's worker) in which the app is collected
    drops the engine's pool without closing the parent's connections."""
    target, _ = targets
    holder = used_app(target, bind=None)  # the parent keeps the app; the child lets go
    ref, engine = weakref.ref(holder[0]), Session.get_engine(holder[0])
    pooled = t.cast("sa.QueuePool", engine.pool)
    assert pooled.checkedin() == 1
    read, write = os.pipe()
    with warnings.catch_warnings():
        # pytest (and xdist) may run helper threads: fork then warns on 3.12+.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        holder.clear()
        gc.collect()
        report = {"collected": ref() is None, "new_pool": engine.pool is not pooled}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(data) == {"collected": True, "new_pool": True}
    # The parent's pooled connection is still open and works (on PostgreSQL a
    # close in the child would have ended the server session under it).
    assert pooled.checkedin() == 1
    if target.kind == "postgres":
        assert len(target.backends()) == 1
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Note)) == 1
    assert pooled.checkedin() == 1
    closed = pool_closes(engine)
    holder.clear()
    gc.collect()
    assert ref() is None
    assert len(closed) == 1  # in the parent, dispose() closes them
    assert target.backends_gone()


def test_engine_passed_as_bind_outlives_its_app(targets: list[Target]) -> None:
    target, _ = targets
    engine = sa.create_engine(target.url)
    holder = used_app(target, bind=engine)
    ref = weakref.ref(holder[0])
    assert Session.get_engine(holder[0]) is engine
    pool = engine.pool
    closed = pool_closes(engine)
    holder.clear()
    gc.collect()
    assert ref() is None
    # The user's engine is the user's: its pool and its connection are untouched.
    assert engine.pool is pool
    assert closed == []
    assert t.cast("sa.QueuePool", pool).checkedin() == 1
    if target.kind == "postgres":
        assert len(target.backends()) == 1
    engine.dispose()
    assert target.backends_gone()


@needs_sqlalchemy
def test_bind_wins_over_the_config_key(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'bind.db'}")
    app = Flask(__name__)
    app.config["SCOPED_SESSION_DATABASE_URI"] = f"sqlite:///{tmp_path / 'config.db'}"
    Session.init_app(app, bind=engine)
    assert Session.get_engine(app) is engine
    engine.dispose()


@needs_sqlalchemy
def test_bind_to_a_connection(tmp_path: Path) -> None:
    """A connection as ``bind`` (a test's outer transaction): the app's sessions
    use it, and get_engine() gives its engine."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'conn.db'}")
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        outer = conn.begin()
        app = create_app(None, "on-a-connection", bind=conn)
        assert Session.get_engine(app) is engine
        with app.app_context():
            assert Session.connection() is conn
            Session.add(Note(text="inside"))
            Session.flush()
            assert conn.scalar(sa.select(sa.func.count()).select_from(Note)) == 1
        outer.rollback()
    with engine.connect() as check:
        assert check.scalar(sa.select(sa.func.count()).select_from(Note)) == 0
    engine.dispose()


def test_without_an_engine_sessions_are_made_as_the_factory_makes_them() -> None:
    made: list[dict[str, t.Any]] = []

    def factory(**kw: t.Any) -> TrivialSession:
        made.append(kw)
        return TrivialSession()

    Plain = FlaskScopedSession(factory)
    app = Flask(__name__)
    Plain.init_app(app)
    with app.app_context():
        Plain()
    with app.app_context():
        Plain(autoflush=False)
    assert made == [{}, {"autoflush": False}]


@needs_sqlalchemy
def test_engine_and_get_engine_are_members_not_forwarded(tmp_path: Path) -> None:
    for name in ("engine", "get_engine", "get_binds"):
        assert name in vars(FlaskScopedSession)
    assert isinstance(inspect.getattr_static(Session, "engine"), property)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'members.db'}")
    app = Flask(__name__)
    Session.init_app(app, bind=engine)
    with app.app_context():
        assert Session.engine is engine
        assert not Session.registry.has()  # reading the engine made no session
    engine.dispose()


# -- 3. errors at the call that made the mistake ----------------------------------------
# (The constructor's and init_app()'s other mistakes: test_flask_errors.py.)


@pytest.mark.parametrize("bind", ["sqlite:///app.db", object()])
def test_bind_must_be_an_engine_or_a_connection(bind: object) -> None:
    Plain = FlaskScopedSession(TrivialSession)
    app = Flask(__name__)
    with pytest.raises(TypeError) as info:
        Plain.init_app(app, bind=bind)  # type: ignore[arg-type]
    message = str(info.value)
    assert "init_app() takes bind=engine, a SQLAlchemy Engine (or Connection)" in message
    assert type(bind).__name__ in message
    assert "SCOPED_SESSION_DATABASE_URI" in message  # the way to bind by URL
    assert "sqlite:///" not in message  # a URL can hold a password
    # Nothing was registered: init_app() can be called again, right.
    Plain.init_app(app)
    assert Plain in app.extensions["scoped_session"]


@needs_sqlalchemy
def test_config_key_must_be_a_url() -> None:
    app = Flask(__name__)
    app.config["SCOPED_SESSION_DATABASE_URI"] = 42
    with pytest.raises(
        TypeError, match=r"\['SCOPED_SESSION_DATABASE_URI'\] must be a database URL"
    ):
        Session.init_app(app)
    app.config["SCOPED_SESSION_DATABASE_URI"] = "sqlite://"
    app.config["SCOPED_SESSION_ENGINE_OPTIONS"] = ["pool_size", 3]
    with pytest.raises(TypeError, match=r"\['SCOPED_SESSION_ENGINE_OPTIONS'\] must be a dict"):
        Session.init_app(app)
    assert Session not in app.extensions.get("scoped_session", {})


def test_get_engine_outside_a_context_without_an_app() -> None:
    Plain = FlaskScopedSession(TrivialSession, Flask(__name__))
    uses: list[t.Callable[[], object]] = [Plain.get_engine, lambda: Plain.engine]
    for use in uses:
        with pytest.raises(NoScopeError) as info:
            use()
        message = str(info.value)
        assert "No Flask application context is active" in message
        assert "Session.get_engine(app)" in message
        assert "app.app_context()" in message


def test_get_engine_of_an_app_without_an_engine() -> None:
    app = Flask("no-engine")
    Plain = FlaskScopedSession(TrivialSession, app)
    uses: list[t.Callable[[], object]] = [lambda: Plain.get_engine(app), lambda: Plain.engine]
    for use in uses:
        with app.app_context(), pytest.raises(ScopedSessionError) as info:
            use()
        message = str(info.value)
        assert "The app 'no-engine' has no engine of this FlaskScopedSession" in message
        assert "Session.init_app(app, bind=engine)" in message
        assert "SCOPED_SESSION_DATABASE_URI" in message


def test_get_engine_of_an_app_it_is_not_registered_on() -> None:
    Plain = FlaskScopedSession(TrivialSession, Flask("registered"))
    with pytest.raises(ScopedSessionError, match="not registered on the app 'other'") as info:
        Plain.get_engine(Flask("other"))
    assert "Session.init_app(app, bind=engine)" in str(info.value)
    with pytest.raises(TypeError, match=r"get_engine\(\) takes a Flask app"):
        Plain.get_engine("registered")  # type: ignore[arg-type]
