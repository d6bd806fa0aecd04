"""The pytest plugin with an engine per Flask app, and with binds: each engine a test
uses gets a test transaction of its own, begun when a session first uses it, and
every write is rolled back. Inner suites made with pytester, as in
``test_pytest_plugin.py``: two apps on two databases (SQLite files, or PostgreSQL
schemas), one of them with a second database for its ``AuthBase`` models. After each
inner run the outer test counts the rows of every database with a connection of its
own: nothing may be left.
"""

from __future__ import annotations

import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed: the suites use it")

import psycopg
import sqlalchemy as sa
from helpers import drop_schema, libpq_url, postgres_url

pytest_plugins = ["pytester"]

#: The databases of the inner suite: two apps, and the auth database of one.
NAMES = ("blue", "green", "auth")

INI = """\
[pytest]
filterwarnings = error
addopts = -p no:cacheprovider -p no:asyncio
"""

MYAPP = """\
import os

import sqlalchemy as sa
from flask import Flask, abort
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session.flask import FlaskScopedSession

# A SQLite file per xdist worker: a write transaction locks the whole file.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
URLS = {{name: url.format(worker=WORKER) for name, url in {urls!r}.items()}}


class Base(DeclarativeBase):
    pass


class AuthBase(DeclarativeBase):
    metadata = sa.MetaData(info={{"bind_key": "auth"}})


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


class Account(AuthBase):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))


if URLS["blue"].startswith("sqlite"):
    for name, metadata in [("blue", Base), ("green", Base), ("auth", AuthBase)]:
        engine = sa.create_engine(URLS[name])
        metadata.metadata.create_all(engine)
        engine.dispose()

Session = FlaskScopedSession(sessionmaker(), commit=True)
#: The apps the running test made, for the pool check after the plugin's teardown.
made = []


def create_app(name, *, auth=False, bind=None):
    \"\"\"An app on the database ``name`` (by URL, or ``bind``); with ``auth``, its
    Account models live in the auth database.\"\"\"
    app = Flask(name)
    app.config["SCOPED_SESSION_DATABASE_URI"] = URLS[name]
    if auth:
        app.config["SCOPED_SESSION_BINDS"] = {{AuthBase: URLS["auth"]}}
    Session.init_app(app, bind=bind)
    made.append(app)

    @app.post("/notes/<text>")
    def add(text):
        Session.add(Note(text=text))
        if auth:
            Session.add(Account(name=text))
        Session.flush()
        if text.startswith("fail"):
            abort(500)
        counts = {{"notes": Session.scalar(sa.select(sa.func.count(Note.id)))}}
        if auth:
            counts["accounts"] = Session.scalar(sa.select(sa.func.count(Account.id)))
        return counts

    return app


def engines(app):
    return [Session.get_engine(app), *Session.get_binds(app).values()]


def texts(app):
    with app.app_context():
        return Session.scalars(sa.select(Note.text).order_by(Note.id)).all()


def committed(name):
    \"\"\"The rows another connection sees in the database ``name``: what was really
    committed.\"\"\"
    engine = sa.create_engine(URLS[name])
    table = "accounts" if name == "auth" else "notes"
    try:
        with engine.connect() as conn:
            return conn.scalar(sa.text(f"SELECT count(*) FROM {{table}}"))
    finally:
        engine.dispose()
"""

CONFTEST = """\
import pytest

import myapp


@pytest.fixture
def scoped_sessions():
    return [myapp.Session]


@pytest.fixture(autouse=True)
def pools_are_returned():
    # Autouse: set up before the plugin's fixture, so checked after its teardown.
    yield
    for app in myapp.made:
        assert [engine.pool.checkedout() for engine in myapp.engines(app)] == [0] * len(
            myapp.engines(app)
        )
    myapp.made.clear()


@pytest.fixture
def apps(scoped_session_transaction):
    return myapp.create_app("blue"), myapp.create_app("green")
"""

TEST_APPS = """\
import pytest

from myapp import Session, committed, create_app, texts


def test_each_app_writes_in_a_transaction_of_its_own(apps, scoped_session_transaction):
    blue, green = apps
    assert scoped_session_transaction is None  # no one engine to run on
    blue_engine, green_engine = Session.get_engine(blue), Session.get_engine(green)
    assert blue_engine is not green_engine
    # Begun when a session first uses the engine, not before.
    assert (blue_engine.pool.checkedout(), green_engine.pool.checkedout()) == (0, 0)
    for n in range(1, 4):
        assert blue.test_client().post(f"/notes/blue-{n}").json == {"notes": n}
    assert (blue_engine.pool.checkedout(), green_engine.pool.checkedout()) == (1, 0)
    assert green.test_client().post("/notes/green-1").json == {"notes": 1}
    assert (blue_engine.pool.checkedout(), green_engine.pool.checkedout()) == (1, 1)
    assert texts(blue) == ["blue-1", "blue-2", "blue-3"]
    assert texts(green) == ["green-1"]
    with blue.app_context():
        # The session's connection is the blue engine's test connection.
        assert Session.connection().engine is blue_engine
        assert Session.connection().in_nested_transaction()
    assert committed("blue") == committed("green") == 0


def test_a_failed_request_rolls_back_its_own_writes(apps, scoped_session_transaction):
    blue, green = apps
    assert blue.test_client().post("/notes/kept").json == {"notes": 1}
    assert green.test_client().post("/notes/failed").status_code == 500
    assert texts(blue) == ["kept"]
    assert texts(green) == []
    assert green.test_client().post("/notes/after").json == {"notes": 1}


@pytest.mark.parametrize("run", [1, 2])
def test_every_test_starts_empty(apps, run):
    blue, green = apps
    assert texts(blue) == texts(green) == []
    assert blue.test_client().post(f"/notes/run-{run}").json == {"notes": 1}


def test_binds_each_in_a_transaction_of_its_own(scoped_session_transaction):
    app = create_app("blue", auth=True)
    main, auth = Session.get_engine(app), Session.get_engine(app, "auth")
    assert (main.pool.checkedout(), auth.pool.checkedout()) == (0, 0)
    client = app.test_client()
    assert client.post("/notes/first").json == {"notes": 1, "accounts": 1}
    assert client.post("/notes/second").json == {"notes": 2, "accounts": 2}
    assert (main.pool.checkedout(), auth.pool.checkedout()) == (1, 1)
    assert client.post("/notes/failed").status_code == 500
    assert client.post("/notes/third").json == {"notes": 3, "accounts": 3}
    assert committed("blue") == committed("auth") == 0


def test_the_apps_of_a_test_share_its_transaction_per_engine(scoped_session_transaction):
    first = create_app("blue", auth=True)
    bind = Session.get_engine(first)
    second = create_app("green", bind=bind)  # the same engine as the first app
    assert first.test_client().post("/notes/one").json == {"notes": 1, "accounts": 1}
    assert second.test_client().post("/notes/two").json == {"notes": 2}
    assert bind.pool.checkedout() == 1
"""

#: How many tests TEST_APPS holds.
N_APPS = 6

CONFLICT_CONFTEST = """\
import pytest
import sqlalchemy as sa

import myapp


@pytest.fixture
def scoped_sessions():
    return [myapp.Session]


@pytest.fixture(scope="session")
def scoped_session_engine():
    engine = sa.create_engine(myapp.URLS["blue"])
    yield engine
    engine.dispose()
"""

TEST_CONFLICT = """\
from myapp import Session, committed, create_app, texts


def test_an_app_on_the_test_engine_joins_it(scoped_session_engine, scoped_session_transaction):
    app = create_app("blue", bind=scoped_session_engine)
    assert app.test_client().post("/notes/joined").json == {"notes": 1}
    assert scoped_session_transaction.engine is scoped_session_engine
    assert texts(app) == ["joined"]
    assert committed("blue") == 0


def test_an_app_with_another_engine_is_refused(scoped_session_engine, scoped_session_transaction):
    app = create_app("green")  # an engine of its own, made from its config
    assert app.test_client().post("/notes/elsewhere").status_code == 500
    assert scoped_session_engine.pool.checkedout() == 1  # only the test connection
    assert Session.get_engine(app).pool.checkedout() == 0  # never used
"""


class Databases(t.NamedTuple):
    """The inner suite's databases: a URL per name (``{worker}`` is filled in per
    xdist worker), and what was really committed in each."""

    kind: str
    urls: dict[str, str]
    committed: t.Callable[[], dict[str, int]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def databases(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[Databases]:
    # Under an outer xdist run the inner suite must not think it is a worker.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    if request.param == "sqlite":
        folder = tmp_path / "databases"
        folder.mkdir()
        urls = {name: f"sqlite:///{folder}/{name}-{{worker}}.db" for name in NAMES}

        def count_sqlite() -> dict[str, int]:
            return {
                path.stem: count_rows(f"sqlite:///{path}", path.stem)
                for path in sorted(folder.glob("*.db"))
            }

        yield Databases("sqlite", urls, count_sqlite)
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    # A schema per database, shared by the inner suite's xdist workers: each test's
    # transactions keep its writes from the other worker.
    schemas = {name: f"ss_{name}_{uuid.uuid4().hex[:10]}" for name in NAMES}
    urls = {
        name: sa.make_url(pg)
        .set(drivername="postgresql+psycopg")
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
        for name, schema in schemas.items()
    }
    try:
        with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
            for name, schema in schemas.items():
                table, column = ("accounts", "name") if name == "auth" else ("notes", "text")
                conn.execute(f"CREATE SCHEMA {schema}")
                conn.execute(
                    f"CREATE TABLE {schema}.{table}"
                    f" (id serial PRIMARY KEY, {column} varchar(200) NOT NULL)"
                )

        def count_postgres() -> dict[str, int]:
            return {name: count_rows(url, name) for name, url in urls.items()}

        yield Databases("postgres", urls, count_postgres)
    finally:
        for schema in schemas.values():
            drop_schema(pg, schema)


def count_rows(url: str, name: str) -> int:
    table = "accounts" if name.startswith("auth") else "notes"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
    finally:
        engine.dispose()


def write_suite(pytester: pytest.Pytester, databases: Databases) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=MYAPP.format(urls=databases.urls), conftest=CONFTEST, test_apps=TEST_APPS
    )


def test_each_engine_gets_a_test_transaction_of_its_own(
    pytester: pytest.Pytester, databases: Databases
) -> None:
    write_suite(pytester, databases)
    pytester.runpytest().assert_outcomes(passed=N_APPS)
    counts = databases.committed()
    assert len(counts) == len(NAMES), counts  # every database was made
    assert set(counts.values()) == {0}


@pytest.mark.slow
def test_each_xdist_worker_has_its_transactions(
    pytester: pytest.Pytester, databases: Databases
) -> None:
    pytest.importorskip("xdist")
    write_suite(pytester, databases)
    result = pytester.runpytest_subprocess("-n", "2", timeout=120)
    result.assert_outcomes(passed=N_APPS)
    result.stdout.fnmatch_lines(["*2 workers*"])
    counts = databases.committed()
    if databases.kind == "sqlite":
        assert {f"{name}-gw{n}" for name in NAMES for n in (0, 1)} <= set(counts)
    assert set(counts.values()) == {0}


def test_without_the_plugin_the_same_requests_commit(
    pytester: pytest.Pytester, databases: Databases
) -> None:
    # The control for the tests above: the outer count does see real commits.
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=MYAPP.format(urls=databases.urls),
        test_plain="""
        from myapp import create_app

        def test_commit():
            blue, green = create_app("blue", auth=True), create_app("green")
            assert blue.test_client().post("/notes/real").json == {"notes": 1, "accounts": 1}
            assert green.test_client().post("/notes/real").json == {"notes": 1}
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)
    counts = databases.committed()
    assert sorted(counts.values()) == [1, 1, 1], counts


def test_an_engine_fixture_never_redirects_an_apps_engine(
    pytester: pytest.Pytester, databases: Databases
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=MYAPP.format(urls=databases.urls),
        conftest=CONFLICT_CONFTEST,
        test_conflict=TEST_CONFLICT,
    )
    result = pytester.runpytest()
    # The refused test passes its own asserts (a 500), then fails at teardown.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_an_app_with_another_engine_is_refused*",
            "*a session of scoped_sessions[[]0[]] is to be made with bind= an engine of its own*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_an_app_on_the_test_engine*")
    assert "Leave the scoped_session_engine fixture out" in result.stdout.str()
    assert set(databases.committed().values()) == {0}


def test_a_session_without_any_engine_is_an_error(
    pytester: pytest.Pytester, databases: Databases
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=MYAPP.format(urls=databases.urls),
        conftest=CONFTEST,
        test_unbound="""
        import pytest
        from flask import Flask

        from myapp import Session
        from scoped_session import ScopedSessionError

        def test_unbound(scoped_session_transaction):
            app = Flask("no-engine")
            Session.init_app(app)
            with app.app_context(), pytest.raises(ScopedSessionError, match="without an engine"):
                Session()
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*its app has none (Session.init_app(app, bind=engine)*"])


def test_the_engine_fixture_has_no_default_for_apps_of_their_own(
    pytester: pytest.Pytester, databases: Databases
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=MYAPP.format(urls=databases.urls),
        conftest=CONFTEST,
        test_engine="def test_engine(scoped_session_engine):\n    pass\n",
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*sessionmakers are bound to no engine (their apps' engines are used*"]
    )
