"""The pytest plugin, run on small user test suites made with pytester.

Each inner suite is an app (``myapp.py``) with a real database, a ``conftest.py`` that
registers its ScopedSession, and test files that write through the session directly,
through the WSGI middleware and through FlaskScopedSession. After the inner run the
outer test looks at the database with a connection of its own: nothing may be left.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from fakes import HAS_SQLALCHEMY, NO_SQLALCHEMY, needs_sqlalchemy

# The inner suites run on real databases: without SQLAlchemy they skip (the target
# fixture, or the mark); the tests that the plugin stays inert still run.
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Base, drop_schema, make_postgres_engine, postgres_url

pytest_plugins = ["pytester"]

HAS_FLASK = importlib.util.find_spec("flask") is not None

# pytest-asyncio (dependency group 'asgi') warns at startup unless its loop scope is
# configured; these suites are sync, so it is left out.
INI = """\
[pytest]
filterwarnings = error
addopts = -p no:cacheprovider -p no:asyncio
"""

MYAPP = """\
import os

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session import ScopedSession

# A SQLite file per xdist worker: a write transaction locks the whole file.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
engine = sa.create_engine({url!r}.format(worker=WORKER), connect_args={connect_args!r})


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200), unique=True)


if engine.dialect.name == "sqlite":
    Base.metadata.create_all(engine)

Session = ScopedSession(sessionmaker(engine))

COUNT = sa.select(sa.func.count()).select_from(Note)


def committed():
    \"\"\"The rows another connection sees: what was really committed.\"\"\"
    with engine.connect() as conn:
        return conn.scalar(COUNT)
"""

CONFTEST = """\
import pytest

import myapp


@pytest.fixture
def scoped_sessions():
    return [myapp.Session]


@pytest.fixture(autouse=True)
def pool_is_returned():
    # Autouse: set up before the plugin's fixture, so checked after its teardown.
    yield
    assert myapp.engine.pool.checkedout() == 0


def pytest_sessionfinish():
    myapp.engine.dispose()
"""

TEST_DIRECT = """\
import pytest
import sqlalchemy as sa

from myapp import COUNT, Note, Session, committed


def test_commit_stays_in_the_test_transaction(scoped_session_transaction):
    assert Session.scalar(COUNT) == 0
    Session.add(Note(text="direct"))
    Session.commit()
    assert Session.scalar(COUNT) == 1
    assert scoped_session_transaction.scalar(COUNT) == 1
    assert committed() == 0


def test_rollback_goes_back_to_the_last_commit(scoped_session_transaction):
    assert Session.scalar(COUNT) == 0
    Session.add(Note(text="kept"))
    Session.commit()
    Session.add(Note(text="dropped"))
    Session.flush()
    Session.rollback()
    assert Session.scalars(sa.select(Note.text)).all() == ["kept"]
    assert scoped_session_transaction.in_transaction()


def test_a_unit_of_work_commits_into_the_test_transaction(scoped_session_transaction):
    with Session.scope(commit=True):
        assert Session.scalar(COUNT) == 0
        Session.add(Note(text="unit"))
    assert not Session.registry.has()
    assert Session.scalar(COUNT) == 1
    assert committed() == 0


def test_a_failed_flush_leaves_the_transaction_usable(scoped_session_transaction):
    assert Session.scalar(COUNT) == 0
    Session.add(Note(text="twice"))
    Session.commit()
    Session.add(Note(text="twice"))
    with pytest.raises(sa.exc.IntegrityError):
        Session.commit()
    Session.rollback()
    Session.add(Note(text="after"))
    Session.commit()
    assert Session.scalar(COUNT) == 2
    assert committed() == 0
"""

TEST_WSGI = """\
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from myapp import COUNT, Note, Session, committed
from scoped_session.wsgi import ScopedSessionMiddleware


@Request.application
def view(request):
    Session.add(Note(text=request.args["text"]))
    Session.flush()
    if "fail" in request.args:
        return Response("failed", status=500)
    return Response(str(Session.scalar(COUNT)))


app = ScopedSessionMiddleware(view, Session, commit=True)


def post(client, url):
    # Closing the response ends the request's unit of work, as a server does.
    with client.post(url) as response:
        return response.status_code, response.get_data(as_text=True)


def test_a_committed_request_stays_in_the_test_transaction(scoped_session_transaction):
    client = Client(app)
    assert post(client, "/?text=wsgi-1") == (200, "1")
    assert post(client, "/?text=wsgi-2") == (200, "2")
    assert Session.scalar(COUNT) == 2
    assert committed() == 0


def test_a_failed_request_is_rolled_back(scoped_session_transaction):
    client = Client(app)
    assert post(client, "/?text=wsgi-failed&fail=1")[0] == 500
    assert Session.scalar(COUNT) == 0
    assert post(client, "/?text=wsgi-ok") == (200, "1")
"""

TEST_FLASK = """\
import pytest

pytest.importorskip("flask")

from flask import Flask, abort, request
from sqlalchemy.orm import sessionmaker

import myapp
from myapp import COUNT, Note, committed
from scoped_session.flask import FlaskScopedSession

FlaskSession = FlaskScopedSession(sessionmaker(myapp.engine), commit=True)
app = Flask(__name__)
FlaskSession.init_app(app)


@app.post("/notes")
def add_note():
    FlaskSession.add(Note(text=request.form["text"]))
    FlaskSession.flush()
    if "fail" in request.form:
        abort(500)
    return str(FlaskSession.scalar(COUNT))


@pytest.fixture
def scoped_sessions():
    return [FlaskSession, myapp.Session]


def test_a_committed_request_stays_in_the_test_transaction(scoped_session_transaction):
    client = app.test_client()
    assert client.post("/notes", data={"text": "flask-1"}).text == "1"
    assert client.post("/notes", data={"text": "flask-2"}).text == "2"
    with app.app_context():
        assert FlaskSession.scalar(COUNT) == 2
    assert myapp.Session.scalar(COUNT) == 2
    assert committed() == 0


def test_a_failed_request_is_rolled_back(scoped_session_transaction):
    client = app.test_client()
    response = client.post("/notes", data={"text": "flask-failed", "fail": "1"})
    assert response.status_code == 500
    with app.app_context():
        assert FlaskSession.scalar(COUNT) == 0
    assert client.post("/notes", data={"text": "flask-ok"}).text == "1"
"""

#: Tests in TEST_DIRECT + TEST_WSGI, and in TEST_FLASK.
N_CORE, N_FLASK = 6, 2


class Target(t.NamedTuple):
    """A real database for an inner suite: its URL (``{worker}`` is filled in per
    xdist worker), connect_args, and a way to count what was really committed."""

    kind: str
    url: str
    connect_args: dict[str, str]
    committed_rows: t.Callable[[], dict[str, int]]


@pytest.fixture(params=["sqlite", "postgres"])
def target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[Target]:
    if not HAS_SQLALCHEMY:
        pytest.skip(NO_SQLALCHEMY)
    # Under an outer xdist run the inner suite must not think it is a worker.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    if request.param == "sqlite":
        folder = tmp_path / "databases"
        folder.mkdir()

        def count_sqlite() -> dict[str, int]:
            return {path.name: count_notes(f"sqlite:///{path}") for path in folder.glob("*.db")}

        yield Target("sqlite", f"sqlite:///{folder}/db-{{worker}}.db", {}, count_sqlite)
        return
    url = postgres_url()
    if url is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    # A schema of our own, shared by the inner suite's xdist workers: each test's
    # transaction keeps its writes from the other worker.
    engine, app_name, schema = make_postgres_engine(url)
    try:
        Base.metadata.create_all(engine)
        connect_args = {"application_name": app_name, "options": f"-csearch_path={schema}"}
        engine_url = engine.url.render_as_string(hide_password=False)

        def count_postgres() -> dict[str, int]:
            with engine.connect() as conn:
                return {schema: int(conn.scalar(sa.text("SELECT count(*) FROM notes")) or 0)}

        yield Target("postgres", engine_url, connect_args, count_postgres)
    finally:
        engine.dispose()
        drop_schema(url, schema)


def count_notes(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT count(*) FROM notes")) or 0)
    finally:
        engine.dispose()


def write_app(pytester: pytest.Pytester, target: Target, conftest: str = CONFTEST) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=MYAPP.format(url=target.url, connect_args=target.connect_args),
        conftest=conftest,
    )


def write_suite(pytester: pytest.Pytester, target: Target) -> int:
    """The whole inner suite; returns how many of its tests will pass."""
    write_app(pytester, target)
    files = {"test_app_direct": TEST_DIRECT, "test_app_wsgi": TEST_WSGI}
    if HAS_FLASK:
        files["test_app_flask"] = TEST_FLASK
    pytester.makepyfile(**files)
    return N_CORE + N_FLASK if HAS_FLASK else N_CORE


# -- writes are rolled back ---------------------------------------------------------


def test_writes_through_every_path_are_rolled_back(
    pytester: pytest.Pytester, target: Target
) -> None:
    passed = write_suite(pytester, target)
    result = pytester.runpytest()
    result.assert_outcomes(passed=passed)
    counts = target.committed_rows()
    assert counts, "the inner suite made no database"
    assert set(counts.values()) == {0}


@pytest.mark.slow
def test_each_xdist_worker_has_its_own_transaction(
    pytester: pytest.Pytester, target: Target
) -> None:
    pytest.importorskip("xdist")
    passed = write_suite(pytester, target)
    result = pytester.runpytest_subprocess("-n", "2", timeout=120)
    result.assert_outcomes(passed=passed)
    result.stdout.fnmatch_lines(["*2 workers*"])
    counts = target.committed_rows()
    if target.kind == "sqlite":
        # The controller imports the conftest too: it makes "db-main.db".
        assert {"db-gw0.db", "db-gw1.db"} <= set(counts)
    assert set(counts.values()) == {0}


def test_without_the_fixture_commits_are_real(pytester: pytest.Pytester, target: Target) -> None:
    # The control for the tests above: the outer check does see a real commit.
    write_app(pytester, target)
    pytester.makepyfile(
        test_app_plain="""
        from myapp import Note, Session

        def test_commit():
            with Session.scope(commit=True):
                Session.add(Note(text="real"))
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert list(target.committed_rows().values()) == [1]


@pytest.mark.skipif(not HAS_FLASK, reason="Flask is not installed (extra 'flask')")
def test_flask_commit_lands_in_the_savepoint(pytester: pytest.Pytester, target: Target) -> None:
    write_app(pytester, target)
    pytester.makepyfile(test_app_flask=TEST_FLASK)
    pytester.runpytest().assert_outcomes(passed=N_FLASK)
    assert set(target.committed_rows().values()) == {0}


# -- what the plugin does around a test ---------------------------------------------

SQLITE_ONLY = pytest.mark.parametrize("target", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_sessions_made_before_the_transaction_are_closed_first(
    pytester: pytest.Pytester, target: Target
) -> None:
    write_app(pytester, target)
    pytester.makepyfile(
        test_app_early="""
        import pytest

        from myapp import COUNT, Note, Session, committed

        @pytest.fixture
        def early():
            session = Session()  # bound to the engine, outside any test transaction
            session.add(Note(text="pending"))
            return session

        def test_early(early, scoped_session_transaction):
            assert Session() is not early
            assert Session().get_bind() is scoped_session_transaction
            assert Session.scalar(COUNT) == 0
            Session.add(Note(text="late"))
            Session.commit()
            assert committed() == 0
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert set(target.committed_rows().values()) == {0}


@SQLITE_ONLY
def test_configure_applies_for_the_test_only(pytester: pytest.Pytester, target: Target) -> None:
    write_app(pytester, target)
    pytester.makepyfile(
        test_app_configure="""
        from myapp import Session

        ORIGINAL = Session.session_factory

        def test_configure(scoped_session_transaction):
            assert Session.session_factory is not ORIGINAL
            Session.configure(autoflush=False)  # no warning: filterwarnings = error
            assert Session().autoflush is False

        def test_after():
            assert Session.session_factory is ORIGINAL
            assert not Session.registry.has()
            assert Session().autoflush is True
            Session.remove()
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


@SQLITE_ONLY
def test_ending_the_outer_transaction_is_an_error(
    pytester: pytest.Pytester, target: Target
) -> None:
    write_app(pytester, target)
    pytester.makepyfile(
        test_app_commit="""
        def test_commit_the_connection(scoped_session_transaction):
            scoped_session_transaction.commit()
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test transaction was ended during the test*"])


# -- the leak check --------------------------------------------------------------------

LEAKY = """\
import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Response

from myapp import COUNT, Note, Session
from scoped_session.wsgi import ScopedSessionMiddleware


def view(environ, start_response):
    Session.add(Note(text="request"))
    return Response("ok")(environ, start_response)


def test_leaves_a_session(scoped_session_transaction):
    Session.add(Note(text="left"))
    Session.flush()


def test_closes_its_unit(scoped_session_transaction):
    with Session.scope(commit=True):
        Session.add(Note(text="unit"))


def test_request_ends_its_session(scoped_session_transaction):
    client = Client(ScopedSessionMiddleware(view, Session, commit=True))
    with client.get("/") as response:
        assert response.get_data() == b"ok"


def test_fails_with_a_session_open(scoped_session_transaction):
    Session.add(Note(text="failing"))
    assert Session.scalar(COUNT) == 0


def test_after():
    # The leaked sessions were closed either way.
    assert not Session.registry.has()
"""


@SQLITE_ONLY
def test_leak_check_off_by_default(pytester: pytest.Pytester, target: Target) -> None:
    write_app(pytester, target)
    pytester.makepyfile(test_app_leaks=LEAKY)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.no_fnmatch_line("*left 1 session open*")


@SQLITE_ONLY
def test_leak_check_from_the_ini_option(pytester: pytest.Pytester, target: Target) -> None:
    write_app(pytester, target)
    pytester.makeini(INI + "scoped_session_check_leaks = true\n")
    pytester.makepyfile(test_app_leaks=LEAKY)
    result = pytester.runpytest()
    # A failing test is not blamed for its sessions as well.
    result.assert_outcomes(passed=4, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_session*",
            "*this test left 1 session open (closed now by the plugin):",
            "*scoped_sessions[[]0[]] <ScopedSession scope=thread>: 1",
            "*Session.remove()*",
        ]
    )
    assert set(target.committed_rows().values()) == {0}


@SQLITE_ONLY
def test_leak_check_from_the_marker(pytester: pytest.Pytester, target: Target) -> None:
    write_app(pytester, target)
    pytester.makeini(INI + "scoped_session_check_leaks = true\n")
    pytester.makepyfile(
        test_app_marked="""
        import pytest

        from myapp import Session

        @pytest.mark.scoped_session_check_leaks(False)
        def test_allowed(scoped_session_transaction):
            Session()
        """
    )
    pytester.makepyfile(
        test_app_marked_on="""
        import pytest

        from myapp import Session

        pytestmark = pytest.mark.scoped_session_check_leaks

        def test_checked(scoped_session_transaction):
            Session()
            Session()
        """
    )
    # The marker wins over the ini option both ways.
    result = pytester.runpytest("-o", "scoped_session_check_leaks=false")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_checked*"])
    result = pytester.runpytest("test_app_marked.py")
    result.assert_outcomes(passed=1)


@SQLITE_ONLY
def test_leak_check_counts_connections_left_checked_out(
    pytester: pytest.Pytester, target: Target
) -> None:
    conftest = CONFTEST.replace("def pool_is_returned", "def _unused").replace("autouse=True", "")
    write_app(pytester, target, conftest)
    pytester.makepyfile(
        test_app_connection="""
        import pytest

        import myapp

        kept = []

        @pytest.mark.scoped_session_check_leaks
        def test_keeps_a_connection(scoped_session_transaction):
            kept.append(myapp.engine.connect())

        def test_close_it():
            kept.pop().close()
            assert myapp.engine.pool.checkedout() == 0
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*this test left 1 connection of the engine checked out*"])


# -- configuration and its errors ------------------------------------------------------


@SQLITE_ONLY
def test_engine_fixture_overrides_the_bind(pytester: pytest.Pytester, target: Target) -> None:
    # The app's sessionmaker is not bound; the engine comes from a fixture.
    write_app(pytester, target)
    pytester.makepyfile(
        unbound="""
        from sqlalchemy.orm import sessionmaker

        from scoped_session import ScopedSession

        Session = ScopedSession(sessionmaker())
        """,
        conftest="""
        import pytest

        import myapp
        import unbound

        @pytest.fixture(scope="session")
        def scoped_session_engine():
            return myapp.engine

        @pytest.fixture
        def scoped_sessions():
            return unbound.Session

        def pytest_sessionfinish():
            myapp.engine.dispose()
        """,
        test_app_unbound="""
        from myapp import COUNT, Note, committed
        from unbound import Session

        def test_unbound(scoped_session_transaction):
            Session.add(Note(text="unbound"))
            Session.commit()
            assert Session.scalar(COUNT) == 1
            assert committed() == 0
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert set(target.committed_rows().values()) == {0}


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("conftest", "message"),
    [
        ("", "*Define a fixture named 'scoped_sessions' in your conftest.py*"),
        (
            "@pytest.fixture\ndef scoped_sessions():\n    return myapp.engine\n",
            "*must return a ScopedSession, an AsyncScopedSession or a list of them; it*",
        ),
        (
            "@pytest.fixture\ndef scoped_sessions():\n"
            "    return [ScopedSession(lambda: sessionmaker(myapp.engine)())]\n",
            "*has a session factory of type function; the test transaction needs*",
        ),
        (
            "@pytest.fixture\ndef scoped_sessions():\n    return [ScopedSession(sessionmaker())]\n",
            "*Define a fixture named 'scoped_session_engine'*",
        ),
        (
            "@pytest.fixture\ndef scoped_sessions():\n    return [myapp.Session]\n"
            "@pytest.fixture\ndef scoped_session_engine():\n    return str(myapp.engine.url)\n",
            "*must return a sqlalchemy Engine*",
        ),
    ],
    ids=["missing", "not-a-list", "not-a-sessionmaker", "unbound", "not-an-engine"],
)
def test_configuration_errors_say_what_to_do(
    pytester: pytest.Pytester, target: Target, conftest: str, message: str
) -> None:
    header = (
        "import pytest\nfrom sqlalchemy.orm import sessionmaker\nimport myapp\n"
        "from scoped_session import ScopedSession\n"
        "def pytest_sessionfinish():\n    myapp.engine.dispose()\n"
    )
    write_app(pytester, target, header + conftest)
    pytester.makepyfile(test_app_error="def test_x(scoped_session_transaction):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


# -- the README's example ---------------------------------------------------------------

README_CONFTEST = """\
import pytest
import sqlalchemy as sa

from myapp import Base, Session, create_app  # Session = FlaskScopedSession(sessionmaker(engine))


@pytest.fixture
def scoped_sessions():
    return [Session]  # every ScopedSession your code uses


@pytest.fixture(scope="session")
def scoped_session_engine(tmp_path_factory):
    # A SQLite file per xdist worker (each has its own tmp_path_factory). Leave this
    # fixture out to test against the engine your sessionmaker is bound to.
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def client(scoped_session_transaction):
    return create_app().test_client()
"""

README_TEST = """\
def test_add_note(client):
    assert client.post("/notes", data={"text": "hi"}).status_code == 201  # committed
    assert client.get("/notes").text == "hi\\n"
    # Rolled back after the test: the next test starts with no notes.
"""

README_APP = """\
import sqlalchemy as sa
from flask import Flask, request
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session.flask import FlaskScopedSession


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200), unique=True)


# The app's own database, which the tests must never touch.
engine = sa.create_engine({url!r})
Session = FlaskScopedSession(sessionmaker(engine), commit=True)


def create_app():
    app = Flask(__name__)
    Session.init_app(app)

    @app.post("/notes")
    def add_note():
        Session.add(Note(text=request.form["text"]))
        return "", 201

    @app.get("/notes")
    def notes():
        return "".join(text + "\\n" for text in Session.scalars(sa.select(Note.text)))

    return app
"""


@pytest.mark.slow
@needs_sqlalchemy
@pytest.mark.skipif(not HAS_FLASK, reason="Flask is not installed (extra 'flask')")
def test_the_readme_example(pytester: pytest.Pytester, tmp_path: Path) -> None:
    app_db = tmp_path / "app.db"  # never created: the tests run on their own engine
    pytester.makeini(INI)
    pytester.makepyfile(
        myapp=README_APP.format(url=f"sqlite:///{app_db}"),
        conftest=README_CONFTEST,
        test_notes=README_TEST + "\n\n" + README_TEST.replace("test_add_note", "test_again"),
    )
    result = pytester.runpytest_subprocess("-n", "2", timeout=120)
    result.assert_outcomes(passed=2)
    assert not app_db.exists()


# -- the plugin is inert for suites that do not use it -------------------------------


def test_entry_point_is_registered() -> None:
    found = [
        ep
        for ep in importlib.metadata.entry_points(group="pytest11")
        if ep.name == "scoped_session"
    ]
    assert [ep.value for ep in found] == ["scoped_session.pytest_plugin"]


def test_importing_the_plugin_imports_no_database_or_web_library() -> None:
    code = (
        "import sys, scoped_session.pytest_plugin\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "print(sorted(loaded & {'sqlalchemy', 'flask', 'werkzeug'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_suite_that_does_not_use_it_gets_no_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_plain="""
        def test_plain(request):
            assert not [name for name in request.fixturenames if "scoped_session" in name]
        """
    )
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["*scoped_session_engine*", "*scoped_session_transaction*"])
    pytester.runpytest().assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:scoped_session", "--fixtures")
    result.stdout.no_fnmatch_line("*scoped_session_transaction*")
