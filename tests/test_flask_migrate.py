"""Flask-Migrate with FlaskScopedSession: ``MigrateTarget`` in process, and the real
``flask db init / migrate / upgrade / downgrade`` commands, as subprocesses, on a copy
of the example blog and on its checked-in ``migrations/``, on SQLite and PostgreSQL.

The commands run in subprocesses also because Flask-Migrate's ``env.py`` reconfigures
logging (``fileConfig``), which would silence this process's loggers.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
pytest.importorskip("flask_migrate", reason="Flask-Migrate is not installed (group 'flask')")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed: migrations use it")

import flask_migrate  # type: ignore[import-untyped]
import psycopg
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from helpers import checkedout, drop_schema, libpq_url, postgres_url
from sqlalchemy import orm

from scoped_session import NoScopeError, ScopedSession, ScopedSessionError
from scoped_session.flask import FlaskScopedSession, MigrateTarget

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flask_blog"
#: The templates of the installed Flask-Migrate: ``flask db init`` copies "flask".
TEMPLATE = Path(flask_migrate.__file__).parent / "templates" / "flask"
TIMEOUT = 120.0  # seconds for one flask command

if str(EXAMPLE.parent) not in sys.path:
    sys.path.append(str(EXAMPLE.parent))

from flask_blog.database import Base  # noqa: E402

#: The blog's tables, as Flask-SQLAlchemy would name them, and Alembic's own.
TABLES = {"user", "blog_post", "alembic_version"}


# -- MigrateTarget in process ---------------------------------------------------------


@pytest.fixture
def app_and_engine(tmp_path: Path) -> t.Iterator[tuple[FlaskScopedSession[orm.Session], Flask]]:
    """A registry and an app bound to an empty SQLite file."""
    session = FlaskScopedSession(orm.sessionmaker())
    app = Flask("migrated")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    session.init_app(app, bind=engine)
    yield session, app
    assert checkedout(engine) == 0
    engine.dispose()


def test_what_env_py_asks_makes_no_session(
    app_and_engine: tuple[FlaskScopedSession[orm.Session], Flask],
) -> None:
    """Each name Flask-Migrate's env.py reads, read as it reads them: no session is
    made (a FlaskScopedSession itself would make one for ``hasattr``), and no
    connection is checked out."""
    Session, app = app_and_engine
    metadata = sa.MetaData()
    target = MigrateTarget(Session, metadata)
    flask_migrate.Migrate(app, target)
    with app.app_context():
        db = app.extensions["migrate"].db
        assert db is target
        assert db.metadatas == {None: metadata}  # what the single-database env.py reads
        assert db.bind_names() == []
        assert db.metadata is metadata
        assert app.extensions["migrate"].metadata is metadata  # Flask-Migrate's alias
        assert db.get_engine() is Session.get_engine(app)
        assert db.engine is Session.get_engine(app)
        assert Session.stats().created == 0
        assert checkedout(Session.get_engine(app)) == 0
    # The registry itself has no metadata to give, and forwards no name it lacks.
    with app.app_context():
        assert not hasattr(Session, "metadatas")
        assert Session.stats().created == 0


def test_one_target_gives_each_app_its_engine(tmp_path: Path) -> None:
    Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(orm.sessionmaker())
    target = MigrateTarget(Session, Base.metadata)
    apps = []
    for name in "ab":
        app = Flask(f"app-{name}")
        app.config["SCOPED_SESSION_DATABASE_URI"] = f"sqlite:///{tmp_path / name}.db"
        Session.init_app(app)
        flask_migrate.Migrate(app, target)
        apps.append(app)
    engines = []
    for app in apps:
        with app.app_context():
            engines.append(target.get_engine())
    assert engines == [Session.get_engine(app) for app in apps]
    assert engines[0] is not engines[1]


def test_engine_outside_a_context_or_without_one(tmp_path: Path) -> None:
    Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(orm.sessionmaker())
    target = MigrateTarget(Session, Base.metadata)
    with pytest.raises(NoScopeError, match="No Flask application context is active"):
        target.get_engine()
    app = Flask("unbound")
    Session.init_app(app)
    # Flask-Migrate shows a RuntimeError's message and exits 1: this one says what to do.
    with app.app_context(), pytest.raises(ScopedSessionError, match="has no engine") as info:
        target.engine  # noqa: B018
    assert isinstance(info.value, RuntimeError)
    assert "Session.init_app(app, bind=engine)" in str(info.value)


def test_bad_arguments() -> None:
    Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(orm.sessionmaker())
    plain = ScopedSession(orm.sessionmaker())
    with pytest.raises(TypeError, match="takes the app's FlaskScopedSession") as info:
        MigrateTarget(plain, Base.metadata)  # type: ignore[arg-type]
    assert "got an object of type ScopedSession" in str(info.value)
    assert plain.stats().created == 0
    with pytest.raises(TypeError, match=r"Base\.metadata, not Base"):
        MigrateTarget(Session, Base)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes the models' SQLAlchemy MetaData"):
        MigrateTarget(Session, "metadata")  # type: ignore[arg-type]


def test_repr_names_no_url(tmp_path: Path) -> None:
    Session: FlaskScopedSession[orm.Session] = FlaskScopedSession(orm.sessionmaker())
    app = Flask("secret")
    engine = sa.create_engine("postgresql+psycopg://user:hunter2@db.invalid/app")
    Session.init_app(app, bind=engine)
    target = MigrateTarget(Session, Base.metadata)
    with app.app_context():
        assert target.engine is engine
    assert repr(target) == "<MigrateTarget tables=2>"


# -- the flask db commands ------------------------------------------------------------


class Database(t.NamedTuple):
    kind: str
    url: str

    def tables(self) -> set[str]:
        engine = sa.create_engine(self.url)
        try:
            return set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()

    def version(self) -> list[str]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return list(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
        finally:
            engine.dispose()

    def schema_diff(self) -> list[t.Any]:
        """What ``flask db migrate`` would still find to do for the blog's models."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"compare_type": True})
                return list(compare_metadata(context, Base.metadata))
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[Database]:
    """An empty database: a SQLite file, or a PostgreSQL schema of its own (made the
    default by the URL's search_path, and dropped at the end)."""
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite:///{tmp_path / 'blog.db'}")
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    schema = f"migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        url = sa.make_url(pg).update_query_dict({"options": f"-csearch_path={schema}"})
        yield Database("postgres", url.render_as_string(hide_password=False))
    finally:
        drop_schema(pg, schema)


#: The app the commands run on a copy of the blog: it reports, on exit, how many
#: sessions the command made and how many connections it left checked out.
PROBE = """\
import atexit, json
from blog import Session, create_app

app = create_app()

@atexit.register
def report():
    stats = Session.stats()
    engine = Session.get_engine(app)
    print("PROBE", json.dumps({"created": stats.created, "live": stats.live,
                               "checkedout": engine.pool.checkedout()}))
"""


def flask(cwd: Path, app: str, database: Database, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``flask --app app ARGS`` in ``cwd`` on ``database``; fail with its output
    unless it succeeds."""
    env = {
        **os.environ,
        "FLASK_SCOPED_SESSION_DATABASE_URI": database.url,
        # Nothing written into the checkout when the example itself runs.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("FLASK_APP", None)
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"flask {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def probed(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, result.stdout
    found: dict[str, int] = json.loads(lines[0].removeprefix("PROBE "))
    return found


@pytest.mark.slow
def test_init_migrate_upgrade_downgrade_on_a_copy_of_the_blog(
    database: Database, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(
        EXAMPLE, project / "blog", ignore=shutil.ignore_patterns("migrations", "__pycache__")
    )
    (project / "probe.py").write_text(PROBE)
    migrations = project / "blog" / "migrations"
    nothing_left = {"created": 0, "live": 0, "checkedout": 0}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = flask(project, "probe", database, *args)
        # Flask-Migrate asked the MigrateTarget, never the registry: no session.
        assert probed(result) == nothing_left
        return result

    run("db", "init")
    # The current template of the installed Flask-Migrate, as it ships.
    for name in ["env.py", "script.py.mako", "README"]:
        assert (migrations / name).read_text() == (TEMPLATE / name).read_text(), name
    assert "db.get_engine()" in (migrations / "env.py").read_text()

    run("db", "migrate", "-m", "users and posts")
    (revision,) = (migrations / "versions").glob("*.py")
    script = revision.read_text()
    assert "op.create_table('user'" in script
    assert "op.create_table('blog_post'" in script
    assert database.tables() == {"alembic_version"}  # migrate only writes the script

    run("db", "upgrade")
    assert database.tables() == TABLES
    assert database.version() == [revision.name.partition("_")[0]]
    assert database.schema_diff() == []
    engine = sa.create_engine(database.url)
    try:
        inspector = sa.inspect(engine)
        assert [fk["referred_table"] for fk in inspector.get_foreign_keys("blog_post")] == ["user"]
        assert [ix["name"] for ix in inspector.get_indexes("blog_post")] == [
            "ix_blog_post_author_id"
        ]
    finally:
        engine.dispose()

    # Nothing changed: no second revision.
    result = run("db", "migrate")
    assert "No changes in schema detected." in result.stderr
    assert len(list((migrations / "versions").glob("*.py"))) == 1

    run("db", "downgrade", "base")
    assert database.tables() == {"alembic_version"}
    assert database.version() == []
    run("db", "upgrade")
    assert database.tables() == TABLES


@pytest.mark.slow
def test_checked_in_migrations_build_the_models_schema(database: Database, tmp_path: Path) -> None:
    """The example's own migrations/ upgrade an empty database to exactly what the
    models describe (nothing left for autogenerate), and downgrade it again; run
    from another directory, as a user's shell would."""
    (revision,) = (EXAMPLE / "migrations" / "versions").glob("*.py")
    flask(tmp_path, str(EXAMPLE), database, "db", "upgrade")
    assert database.tables() == TABLES
    assert database.version() == [revision.name.partition("_")[0]]
    assert database.schema_diff() == []
    flask(tmp_path, str(EXAMPLE), database, "db", "downgrade", "base")
    assert database.tables() == {"alembic_version"}


def _shape(source: str) -> tuple[list[str], list[str]]:
    """A module's statements without type annotations (and the imports that only
    serve them), its imports sorted: what ruff format, isort and typing leave as it
    was."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            node.returns = None
            for arg in [*node.args.args, *node.args.kwonlyargs]:
                arg.annotation = None
    imports: list[str] = []
    body: list[str] = []
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
            continue
        if isinstance(statement, ast.Import) and statement.names[0].name == "typing":
            continue
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            continue
        target = imports if isinstance(statement, ast.Import | ast.ImportFrom) else body
        target.append(ast.dump(statement))
    return sorted(imports), body


def test_checked_in_migrations_are_the_current_template() -> None:
    """``examples/flask_blog/migrations`` is what ``flask db init`` makes with the
    installed Flask-Migrate, typed and formatted for mypy --strict and ruff (which
    check the examples) and nothing else."""
    folder = EXAMPLE / "migrations"
    assert _shape((folder / "env.py").read_text()) == _shape((TEMPLATE / "env.py").read_text())
    assert (folder / "alembic.ini").read_text() == (TEMPLATE / "alembic.ini.mako").read_text()
    assert (folder / "README").read_text() == (TEMPLATE / "README").read_text()

    # The revision template only gained return types and sorted imports.
    def lines(text: str) -> list[str]:
        return sorted(line.replace(" -> None", "") for line in text.splitlines() if line)

    mako = "script.py.mako"
    assert lines((folder / mako).read_text()) == lines((TEMPLATE / mako).read_text())
