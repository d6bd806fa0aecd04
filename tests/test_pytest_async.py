"""The pytest plugin's async fixture, run on small user test suites made with pytester.

Each inner suite is a FastAPI app (``myapp.py``) with an async and a sync registry on
a real database (SQLite through aiosqlite, PostgreSQL through asyncpg and through
psycopg), a ``conftest.py`` that registers both, and tests that drive it under
pytest-asyncio, under anyio and through ``TestClient``. After the inner run the outer
test counts the rows with a connection of its own: nothing may be left.
"""

from __future__ import annotations

import importlib.util
import shutil
import typing as t
from pathlib import Path

import pytest
from fakes import HAS_SQLALCHEMY, NO_SQLALCHEMY

if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Base, drop_schema, make_postgres_engine, postgres_url

pytest_plugins = ["pytester"]

NEEDED = ("pytest_asyncio", "anyio", "fastapi", "httpx", "aiosqlite", "greenlet")
MISSING = [name for name in NEEDED if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {', '.join(MISSING)} (dependency group 'asgi')"
)

EXAMPLES = Path(__file__).parent.parent / "examples" / "testing"

INI = """\
[pytest]
filterwarnings = error
addopts = -p no:cacheprovider
asyncio_default_fixture_loop_scope = function
"""

MYAPP = """\
import os

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session import ScopedSession
from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession

# A SQLite file per xdist worker: a write transaction locks the whole file.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
engine = create_async_engine(
    {async_url!r}.format(worker=WORKER),
    connect_args={async_args!r},
    poolclass=sa.AsyncAdaptedQueuePool,  # a pool that counts checkouts
)
sync_engine = sa.create_engine({sync_url!r}.format(worker=WORKER), connect_args={sync_args!r})


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200), unique=True)


if sync_engine.dialect.name == "sqlite":
    Base.metadata.create_all(sync_engine)

Session = AsyncScopedSession(async_sessionmaker(engine))
SyncSession = ScopedSession(sessionmaker(sync_engine), scope="context")

COUNT = sa.select(sa.func.count()).select_from(Note)

api = FastAPI()


@api.post("/notes/{{text}}")
async def add_note(text: str) -> dict[str, int]:
    Session.add(Note(text=text))
    await Session.flush()
    if text.startswith("fail"):
        raise HTTPException(500)  # the middleware rolls the request back
    return {{"count": await Session.scalar(COUNT) or 0}}


def sync_count() -> int:
    # A sync dependency: FastAPI runs it on a worker thread, in the request's context.
    return SyncSession.scalar(COUNT) or 0


@api.get("/both")
async def both(sync: int = Depends(sync_count)) -> dict[str, int]:
    return {{"async": await Session.scalar(COUNT) or 0, "sync": sync}}


@api.post("/sync-notes/{{text}}")
def add_sync_note(text: str) -> dict[str, int]:
    SyncSession.add(Note(text=text))
    SyncSession.flush()
    return {{"count": SyncSession.scalar(COUNT) or 0}}


app = ScopedSessionMiddleware(api, Session, SyncSession, commit=True)


def committed():
    \"\"\"The rows another connection sees: what was really committed.\"\"\"
    with sync_engine.connect() as conn:
        return conn.scalar(COUNT)
"""

CONFTEST = """\
import asyncio

import pytest

import myapp


@pytest.fixture
def scoped_sessions():
    return [myapp.Session, myapp.SyncSession]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def pool_is_returned():
    # Autouse: set up before the plugin's fixture, so checked after its teardown.
    yield
    assert myapp.engine.sync_engine.pool.checkedout() == 0
    assert myapp.sync_engine.pool.checkedout() == 0


def pytest_sessionfinish():
    myapp.sync_engine.dispose()
    asyncio.run(myapp.engine.dispose())  # what a test without the fixture pooled
"""

TEST_CLIENTS = """\
import httpx
import pytest
from fastapi.testclient import TestClient

from myapp import COUNT, app, committed


async def use_the_app(connection, prefix):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post(f"/notes/{prefix}-1")).json() == {"count": 1}
        assert (await client.post(f"/notes/{prefix}-2")).json() == {"count": 2}
        assert (await client.post(f"/notes/fail-{prefix}")).status_code == 500
        # One request, an async and a sync session: the sync one has a test
        # transaction of its own, which does not see the async one's rows.
        assert (await client.get("/both")).json() == {"async": 2, "sync": 0}
    assert await connection.scalar(COUNT) == 2
    assert committed() == 0


@pytest.mark.asyncio
async def test_pytest_asyncio(scoped_session_async_transaction):
    await use_the_app(scoped_session_async_transaction, "asyncio")


@pytest.mark.asyncio(loop_scope="module")
async def test_pytest_asyncio_module_loop(scoped_session_async_transaction):
    await use_the_app(scoped_session_async_transaction, "module")


@pytest.mark.anyio
async def test_anyio(scoped_session_async_transaction):
    await use_the_app(scoped_session_async_transaction, "anyio")


def test_testclient(scoped_session_async_transaction, scoped_session_portal):
    with TestClient(app) as client:  # a portal for the block, and the lifespan
        assert client.post("/notes/tc-1").json() == {"count": 1}
    client = TestClient(app)  # a portal per request
    assert client.post("/notes/tc-2").json() == {"count": 2}
    assert client.post("/notes/fail-tc").status_code == 500
    assert client.get("/both").json() == {"async": 2, "sync": 0}
    count = scoped_session_portal.call(scoped_session_async_transaction.scalar, COUNT)
    assert count == 2
    assert committed() == 0


def test_sync_endpoint_writes_are_rolled_back_too(scoped_session_async_transaction):
    client = TestClient(app)
    assert client.post("/sync-notes/sync-1").json() == {"count": 1}
    assert client.get("/both").json() == {"async": 0, "sync": 1}
    assert committed() == 0
"""

TEST_DIRECT = """\
import asyncio

import pytest
import sqlalchemy as sa

from myapp import COUNT, Note, Session, committed


@pytest.mark.asyncio
async def test_commit_releases_a_savepoint(scoped_session_async_transaction):
    connection = scoped_session_async_transaction
    released = []
    sa.event.listen(
        connection.sync_connection, "release_savepoint", lambda *args: released.append(args)
    )
    assert await Session.scalar(COUNT) == 0
    Session.add(Note(text="kept"))
    await Session.commit()
    assert len(released) == 1
    assert connection.in_transaction() and not connection.in_nested_transaction()
    Session.add(Note(text="dropped"))
    await Session.flush()
    await Session.rollback()
    assert (await Session.scalars(sa.select(Note.text))).all() == ["kept"]
    assert committed() == 0
    await Session.remove()


@pytest.mark.anyio
async def test_a_unit_of_work_commits_into_the_test_transaction(
    scoped_session_async_transaction,
):
    async def job(text):
        async with Session.scope(commit=True):
            Session.add(Note(text=text))

    await asyncio.gather(job("unit-1"))
    await asyncio.gather(job("unit-2"))
    assert await scoped_session_async_transaction.scalar(COUNT) == 2
    assert committed() == 0
"""

#: Tests in TEST_CLIENTS and TEST_DIRECT.
N_TESTS = 7


class Target(t.NamedTuple):
    """A real database for an inner suite: the app's URLs (``{worker}`` is filled
    in per xdist worker), their connect_args, and a way to count what was really
    committed."""

    kind: str
    async_url: str
    async_args: dict[str, t.Any]
    sync_url: str
    sync_args: dict[str, t.Any]
    committed_rows: t.Callable[[], dict[str, int]]


@pytest.fixture(params=["sqlite", "asyncpg", "psycopg"])
def target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[Target]:
    if not HAS_SQLALCHEMY:
        pytest.skip(NO_SQLALCHEMY)
    # Under an outer xdist run the inner suite must not think it is a worker.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    kind: str = request.param
    if kind == "sqlite":
        folder = tmp_path / "databases"
        folder.mkdir()
        path = f"{folder}/db-{{worker}}.db"

        def count_sqlite() -> dict[str, int]:
            return {p.name: count_notes(f"sqlite:///{p}") for p in folder.glob("*.db")}

        yield Target(kind, f"sqlite+aiosqlite:///{path}", {}, f"sqlite:///{path}", {}, count_sqlite)
        return
    url = postgres_url()
    if url is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    if kind == "asyncpg":
        pytest.importorskip("asyncpg")
    # A schema of our own, shared by the inner suite's xdist workers: each test's
    # transaction keeps its writes from the other worker.
    engine, app_name, schema = make_postgres_engine(url)
    try:
        Base.metadata.create_all(engine)
        sync_args = {"application_name": app_name, "options": f"-csearch_path={schema}"}
        async_args: dict[str, t.Any] = sync_args
        if kind == "asyncpg":
            async_args = {"server_settings": {"application_name": app_name, "search_path": schema}}
        sync_url = engine.url.render_as_string(hide_password=False)
        async_url = engine.url.set(drivername=f"postgresql+{kind}")

        def count_postgres() -> dict[str, int]:
            with engine.connect() as conn:
                return {schema: int(conn.scalar(sa.text("SELECT count(*) FROM notes")) or 0)}

        yield Target(
            kind,
            async_url.render_as_string(hide_password=False),
            async_args,
            sync_url,
            sync_args,
            count_postgres,
        )
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
        myapp=MYAPP.format(
            async_url=target.async_url,
            async_args=target.async_args,
            sync_url=target.sync_url,
            sync_args=target.sync_args,
        ),
        conftest=conftest,
    )


def write_suite(pytester: pytest.Pytester, target: Target) -> int:
    write_app(pytester, target)
    pytester.makepyfile(test_clients=TEST_CLIENTS, test_direct=TEST_DIRECT)
    return N_TESTS


# -- writes are rolled back ---------------------------------------------------------


def test_writes_through_every_client_are_rolled_back(
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
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", timeout=180)
    result.assert_outcomes(passed=passed)
    result.stdout.fnmatch_lines(["*2 workers*"])
    counts = target.committed_rows()
    if target.kind == "sqlite":
        assert {"db-gw0.db", "db-gw1.db"} <= set(counts)
    assert set(counts.values()) == {0}


SQLITE_ONLY = pytest.mark.parametrize("target", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_without_the_fixture_commits_are_real(pytester: pytest.Pytester, target: Target) -> None:
    # The control for the tests above: the outer check does see a real commit.
    write_app(pytester, target)
    pytester.makepyfile(
        test_plain="""
        import pytest

        from myapp import Note, Session

        @pytest.mark.asyncio
        async def test_commit():
            async with Session.scope(commit=True):
                Session.add(Note(text="real"))
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert list(target.committed_rows().values()) == [1]


# -- the leak check --------------------------------------------------------------------

LEAKY = """\
import asyncio

import pytest

from myapp import COUNT, Note, Session

pytestmark = pytest.mark.scoped_session_check_leaks


@pytest.mark.asyncio
async def test_leaves_a_session(scoped_session_async_transaction):
    Session.add(Note(text="left"))
    await Session.flush()


@pytest.mark.asyncio
async def test_a_task_leaves_a_session(scoped_session_async_transaction):
    async def job():
        return await Session.scalar(COUNT)

    assert await asyncio.create_task(job()) == 0


@pytest.mark.anyio
async def test_anyio_leaves_a_session(scoped_session_async_transaction):
    await Session.scalar(COUNT)


@pytest.mark.asyncio
async def test_removes_its_session(scoped_session_async_transaction):
    await Session.scalar(COUNT)
    await Session.remove()


def test_after():
    assert Session.stats().live == 0
"""


@SQLITE_ONLY
def test_leak_check_reports_an_async_session_left_open(
    pytester: pytest.Pytester, target: Target
) -> None:
    write_app(pytester, target)
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest()
    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_session*",
            "*this test left 1 session open (closed now by the plugin):",
            "*scoped_sessions[[]0[]] <AsyncScopedSession*: 1",
            "*await Session.remove()*",
        ]
    )
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_a_task_leaves_a_session*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_anyio_leaves_a_session*"])
    assert set(target.committed_rows().values()) == {0}


# -- configuration and its errors ------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("test", "message"),
    [
        (
            "def test_x(scoped_session_transaction):\n    pass\n",
            "*returned an AsyncScopedSession: use the scoped_session_async_transaction*",
        ),
        (
            "async def test_x(scoped_session_async_transaction):\n    pass\n",
            "*mark it with @pytest.mark.asyncio or @pytest.mark.anyio*",
        ),
        (
            "import pytest\n@pytest.mark.asyncio\n"
            "async def test_x(scoped_session_async_transaction, scoped_session_portal):\n"
            "    pass\n",
            "*scoped_session_portal is for sync tests*",
        ),
    ],
    ids=["sync-fixture", "no-runner", "portal-in-async-test"],
)
def test_misuse_says_what_to_do(
    pytester: pytest.Pytester, target: Target, test: str, message: str
) -> None:
    write_app(pytester, target)
    pytester.makepyfile(test_misuse=test)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


@SQLITE_ONLY
def test_sync_registries_alone_need_the_sync_fixture(
    pytester: pytest.Pytester, target: Target
) -> None:
    write_app(pytester, target, CONFTEST.replace("myapp.Session, ", ""))
    pytester.makepyfile(test_x="def test_x(scoped_session_async_transaction):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*returned no AsyncScopedSession*scoped_session_transaction*"])


# -- the documented conftests ----------------------------------------------------------


@pytest.mark.parametrize("example", ["fastapi", "starlette"])
def test_the_example_conftests(
    pytester: pytest.Pytester, example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not HAS_SQLALCHEMY:
        pytest.skip(NO_SQLALCHEMY)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytest.importorskip("xdist")
    for name in (f"{example}_notes.py", f"test_{example}_notes.py"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    shutil.copy(EXAMPLES / f"{example}_conftest.py", pytester.path / "conftest.py")
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", timeout=180)
    result.assert_outcomes(passed=4)
