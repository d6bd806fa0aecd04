"""Several databases in one app: ``init_app(app, binds={AuthBase: engine})`` or the
``SCOPED_SESSION_BINDS`` config key, through real requests on two SQLite files and on
two PostgreSQL schemas; ``get_engine(app, key)``, ``get_binds()``; the errors; and
Flask-Migrate's multi-database template (``flask db init --multidb``) with the real
``flask db`` commands, as subprocesses (see ``test_flask_migrate.py`` for why)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed: binds are SQLAlchemy's")

import flask_migrate  # type: ignore[import-untyped]
import psycopg
import sqlalchemy as sa
from flask import Flask, abort
from helpers import Base, Note, checkedout, drop_schema, libpq_url, postgres_url
from sqlalchemy import orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scoped_session import NoScopeError, ScopedSessionError
from scoped_session.flask import FlaskScopedSession, MigrateTarget


class AuthBase(DeclarativeBase):
    """The models of the second database; its metadata names the bind."""

    metadata = sa.MetaData(info={"bind_key": "auth"})


class Account(AuthBase):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)


#: A table of a third database, bound by the Table itself (no name).
audit = sa.Table(
    "audit",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("what", sa.String(200)),
)

Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(orm.sessionmaker())


def create_app(name: str, **init: t.Any) -> Flask:
    """An app whose requests add a Note (default database) and an Account (auth),
    and commit; a text starting with "fail" fails after the flush."""
    app = Flask(name)
    app.config["SCOPED_SESSION_COMMIT"] = True
    Session.init_app(app, **init)

    @app.post("/add/<text>")
    def add(text: str) -> dict[str, t.Any]:
        Session.add_all([Note(text=text), Account(name=text)])
        Session.flush()
        if text.startswith("fail"):
            abort(500)
        return {
            "notes": Session.scalar(sa.select(sa.func.count(Note.id))),
            "accounts": Session.scalar(sa.select(sa.func.count(Account.id))),
            "account_bind": Session.get_bind(Account) is Session.get_engine(bind_key=AuthBase),
        }

    return app


def rows(url: str, table: str) -> list[int]:
    """The ids in ``table`` of the database at ``url``, read with an engine of its
    own (not through the registry); [] when the table does not exist."""
    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table(table):
            return []
        with engine.connect() as conn:
            return list(conn.scalars(sa.text(f"SELECT id FROM {table} ORDER BY id")))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[dict[str, str]]:
    """Two empty databases, "main" and "auth": SQLite files, or PostgreSQL schemas."""
    if request.param == "sqlite":
        yield {name: f"sqlite:///{tmp_path / name}.db" for name in ("main", "auth")}
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    schemas = {name: f"ss_{name}_{uuid.uuid4().hex[:10]}" for name in ("main", "auth")}
    with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
        for schema in schemas.values():
            conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield {
            name: sa.make_url(pg)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
            for name, schema in schemas.items()
        }
    finally:
        for schema in schemas.values():
            drop_schema(pg, schema)


# -- requests -----------------------------------------------------------------------


def test_requests_write_each_model_to_its_own_database(urls: dict[str, str]) -> None:
    main, auth = sa.create_engine(urls["main"]), sa.create_engine(urls["auth"])
    Base.metadata.create_all(main)
    AuthBase.metadata.create_all(auth)
    app = create_app("two-databases", bind=main, binds={AuthBase: auth})
    client = app.test_client()
    for n in (1, 2):
        assert client.post(f"/add/text-{n}").json == {
            "notes": n,
            "accounts": n,
            "account_bind": True,
        }
    # A failed request rolls both databases back.
    assert client.post("/add/failed").status_code == 500
    assert (checkedout(main), checkedout(auth)) == (0, 0)
    assert rows(urls["main"], "notes") == [1, 2]
    assert rows(urls["auth"], "accounts") == [1, 2]
    # Each table lives in its own database only.
    assert not sa.inspect(main).has_table("accounts")
    assert not sa.inspect(auth).has_table("notes")
    main.dispose()
    auth.dispose()


def test_binds_from_the_config_key(tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("main", "auth", "audit")}
    app = Flask("configured")
    app.config["SCOPED_SESSION_COMMIT"] = True
    app.config["SCOPED_SESSION_DATABASE_URI"] = urls["main"]
    app.config["SCOPED_SESSION_ENGINE_OPTIONS"] = {"hide_parameters": True}
    app.config["SCOPED_SESSION_BINDS"] = {
        AuthBase: {"url": urls["auth"], "hide_parameters": False},  # its own options win
        audit: urls["audit"],  # a Table as the key; the shared options
    }
    Session.init_app(app)
    main, auth = Session.get_engine(app), Session.get_engine(app, AuthBase)
    audit_engine = Session.get_engine(app, audit)
    assert Session.get_binds(app) == {AuthBase: auth, audit: audit_engine}
    assert [engine.hide_parameters for engine in (main, auth, audit_engine)] == [True, False, True]
    Base.metadata.create_all(main)
    AuthBase.metadata.create_all(auth)
    audit.metadata.create_all(audit_engine)

    @app.post("/audited/<text>")
    def audited(text: str) -> str:
        Session.add(Account(name=text))
        Session.execute(audit.insert().values(what=text))  # routed by its table
        return "ok"

    assert app.test_client().post("/audited/login").text == "ok"
    assert rows(urls["auth"], "accounts") == [1]
    assert rows(urls["audit"], "audit") == [1]
    assert rows(urls["main"], "audit") == []
    # The engines the config made are disposed with the app.
    made = (main, auth, audit_engine)
    pools = [engine.pool for engine in made]
    del app, audited
    gc.collect()
    assert not any(engine.pool is pool for engine, pool in zip(made, pools, strict=True))


def test_binds_argument_wins_over_the_config_key(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'given.db'}")
    app = Flask("both")
    app.config["SCOPED_SESSION_BINDS"] = {AuthBase: f"sqlite:///{tmp_path / 'config.db'}"}
    Session.init_app(app, binds={AuthBase: engine})
    assert Session.get_binds(app) == {AuthBase: engine}
    engine.dispose()


def test_get_engine_by_key_by_model_and_by_name(tmp_path: Path) -> None:
    main = sa.create_engine(f"sqlite:///{tmp_path / 'main.db'}")
    auth = sa.create_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    app = create_app("lookups", bind=main, binds={AuthBase: auth})
    assert Session.get_engine(app) is main
    assert Session.get_engine(app, AuthBase) is auth
    assert Session.get_engine(app, Account) is auth  # a model of the base, as SQLAlchemy finds it
    assert Session.get_engine(app, "auth") is auth  # its metadata's name
    with app.app_context():
        assert Session.get_binds() == {AuthBase: auth}
        assert Session.get_engine(bind_key="auth") is auth
        assert not Session.registry.has()  # looking engines up made no session
    for missing in ("billing", Note, audit):
        with pytest.raises(ScopedSessionError, match="has no bind") as info:
            Session.get_engine(app, missing)
        message = str(info.value)
        assert "its binds: AuthBase ('auth')" in message
        assert "Session.init_app(app, binds={Base: engine})" in message
    plain = create_app("no-binds", bind=main)
    assert Session.get_binds(plain) == {}
    with pytest.raises(NoScopeError, match=r"Session\.get_binds\(app\)"):
        Session.get_binds()
    main.dispose()
    auth.dispose()


# -- errors at init_app() ---------------------------------------------------------------


#: A URL in the user's input: never in a message (it can hold a password).
SECRET_URL = "postgresql://app:hunter2@db.invalid/auth"


@pytest.mark.parametrize(
    ("binds", "message"),
    [
        ({"auth": SECRET_URL}, "MetaData(info={'bind_key': 'auth'})"),
        ([AuthBase], "takes binds={Base: engine}, a dict"),
        ({AuthBase: SECRET_URL}, "takes binds={AuthBase: engine}, a SQLAlchemy Engine"),
        ({42: SECRET_URL}, "got a key of type int"),
    ],
    ids=["string-key", "not-a-dict", "url-value", "int-key"],
)
def test_bad_binds_are_refused_at_init_app(binds: t.Any, message: str) -> None:
    app = Flask("bad-binds")
    with pytest.raises(TypeError) as info:
        Session.init_app(app, binds=binds)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    # Nothing was registered: init_app() can be called again, right.
    Session.init_app(app)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SECRET_URL, "must be a dict that maps the declarative base"),
        ({"auth": SECRET_URL}, "got the string 'auth'"),
        ({AuthBase: 42}, "['SCOPED_SESSION_BINDS'][AuthBase] must be a database URL"),
        ({AuthBase: {"pool_size": 3, "URL": SECRET_URL}}, "with the URL under 'url'"),
    ],
    ids=["not-a-dict", "string-key", "not-a-url", "options-without-url"],
)
def test_bad_config_binds_are_refused_at_init_app(config: object, message: str) -> None:
    app = Flask("bad-config")
    app.config["SCOPED_SESSION_BINDS"] = config
    with pytest.raises(TypeError) as info:
        Session.init_app(app)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    assert Session not in app.extensions.get("scoped_session", {})


# -- Flask-Migrate ------------------------------------------------------------------------


def test_migrate_target_answers_the_multidb_template(tmp_path: Path) -> None:
    main = sa.create_engine(f"sqlite:///{tmp_path / 'main.db'}")
    auth = sa.create_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    target = MigrateTarget(Session, Base.metadata)
    app = create_app("migrated", bind=main, binds={AuthBase: auth})
    flask_migrate.Migrate(app, target)
    made = Session.stats().created
    with app.app_context():
        db = app.extensions["migrate"].db
        # What the multidb env.py and script.py.mako ask, as they ask it.
        assert db.bind_names() == ["auth"]
        assert db.get_engine(bind=None) is main
        assert db.get_engine(bind="auth") is auth
        assert db.metadatas == {None: Base.metadata, "auth": AuthBase.metadata}
        assert Session.stats().created == made  # no session for any of it
    unnamed = create_app("unnamed", bind=main, binds={audit: auth})
    with unnamed.app_context():
        with pytest.raises(ScopedSessionError, match="the bind Table 'audit' has no name") as info:
            target.bind_names()
        assert "MetaData(info={'bind_key': 'auth'})" in str(info.value)
        # The single-database template reads metadatas[None] only: still served.
        assert target.metadatas == {None: Base.metadata}
    main.dispose()
    auth.dispose()


PROJECT = """\
import atexit
import json
import os

import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session.flask import FlaskScopedSession, MigrateTarget


class Base(DeclarativeBase):
    pass


class AuthBase(DeclarativeBase):
    metadata = sa.MetaData(info={"bind_key": "auth"})


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


class Account(AuthBase):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


Session = FlaskScopedSession(sessionmaker(), commit=True)
migrate = Migrate(db=MigrateTarget(Session, Base.metadata))
app = Flask(__name__)
app.config["SCOPED_SESSION_DATABASE_URI"] = os.environ["MAIN_URL"]
app.config["SCOPED_SESSION_BINDS"] = {AuthBase: os.environ["AUTH_URL"]}
Session.init_app(app)
migrate.init_app(app)


@atexit.register
def report():
    engines = [Session.get_engine(app), Session.get_engine(app, "auth")]
    print("PROBE", json.dumps({"created": Session.stats().created,
                               "checkedout": [e.pool.checkedout() for e in engines]}))
"""


@pytest.mark.slow
def test_flask_db_multidb_migrates_each_database(urls: dict[str, str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "multi.py").write_text(PROJECT)
    env = {**os.environ, "MAIN_URL": urls["main"], "AUTH_URL": urls["auth"]}
    env.pop("FLASK_APP", None)

    def flask(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "multi", *args],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"flask {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        probes = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
        # Flask-Migrate asked the MigrateTarget: no session, no connection left out.
        assert [json.loads(p.removeprefix("PROBE ")) for p in probes] == [
            {"created": 0, "checkedout": [0, 0]}
        ]
        return result

    def tables(name: str) -> set[str]:
        engine = sa.create_engine(urls[name])
        try:
            return set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()

    flask("db", "init", "--multidb")
    template = Path(flask_migrate.__file__).parent / "templates" / "flask-multidb"
    assert (project / "migrations" / "env.py").read_text() == (template / "env.py").read_text()
    flask("db", "migrate", "-m", "notes and accounts")
    (revision,) = (project / "migrations" / "versions").glob("*.py")
    script = revision.read_text()
    # Each table in the functions of its own database.
    upgrade_main = script.split("def upgrade_():")[1].split("def downgrade_")[0]
    upgrade_auth = script.split("def upgrade_auth():")[1].split("def downgrade_auth")[0]
    assert "create_table('notes'" in upgrade_main
    assert "accounts" not in upgrade_main
    assert "create_table('accounts'" in upgrade_auth
    assert "notes" not in upgrade_auth

    flask("db", "upgrade")
    assert tables("main") == {"notes", "alembic_version"}
    assert tables("auth") == {"accounts", "alembic_version"}
    result = flask("db", "migrate")
    assert "No changes in schema detected." in result.stderr
    assert len(list((project / "migrations" / "versions").glob("*.py"))) == 1

    flask("db", "downgrade", "base")
    assert tables("main") == tables("auth") == {"alembic_version"}
    flask("db", "upgrade")
    assert tables("auth") == {"accounts", "alembic_version"}
