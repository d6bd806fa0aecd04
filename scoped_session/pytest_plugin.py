"""pytest plugin: each test runs in a database transaction that is rolled back.

Installed with the package as the ``scoped_session`` ``pytest11`` entry point. It is
inert until a test asks for ``scoped_session_transaction``: no fixture is autouse and
nothing from SQLAlchemy is imported before then.

::

    # conftest.py
    import pytest
    from myapp.db import Session          # a ScopedSession or FlaskScopedSession

    @pytest.fixture
    def scoped_sessions():
        return [Session]

    # test_notes.py
    def test_add_note(scoped_session_transaction, client):
        client.post("/notes", json={"text": "hi"})     # the app commits
        assert Session.scalar(select(func.count()).select_from(Note)) == 1
        # rolled back after the test: the next test starts with an empty table

While a test runs, every session the registered :class:`~scoped_session.ScopedSession`
objects make is bound to one connection whose transaction began before the test, with
``join_transaction_mode="create_savepoint"``: ``commit()`` releases a savepoint and
``rollback()`` rolls back to one, so the code under test behaves as in production and
nothing it writes outlives the test. This is SQLAlchemy's "joining a Session into an
external transaction" recipe, applied to the code's own scoped sessions, including those
the WSGI middleware and FlaskScopedSession manage. At the end every session is closed
(``remove_all()``), the transaction is rolled back and the connection closed.

Fixtures:

- ``scoped_sessions`` (define it): the ScopedSession objects of the code under test, a
  list or a single one. Each must have a :class:`sqlalchemy.orm.sessionmaker` as its
  ``session_factory``.
- ``scoped_session_engine`` (override it when needed): the engine the transaction runs
  on. By default the engine the sessionmakers are bound to.
- ``scoped_session_transaction``: the test transaction; its value is the
  :class:`sqlalchemy.engine.Connection` it runs on (None when there is no
  ``scoped_session_engine``: see below).
- ``scoped_session_async_transaction``: the same for ``AsyncScopedSession``s, on an
  ``AsyncConnection`` (its value) opened on the loop the app runs on: the test's own
  in an async test (pytest-asyncio or anyio), a portal loop of the plugin's in a
  sync one, which every ``TestClient`` of the test is given. Sync ScopedSessions
  listed with them get a transaction of their own on ``scoped_session_engine``.
  ``scoped_session_async_engine`` and ``scoped_session_portal`` go with it; see
  docs/testing-async.md.

Sessions that name engines of their own (each Flask app's, from ``init_app(app,
bind=...)`` or its config; an app's ``binds``) join a test transaction on each of those
engines, begun when a session first uses it: leave ``scoped_session_engine`` out. An
override of it stands in for the sessionmakers' engine only; a session whose ``bind``
is another engine raises ScopedSessionError, and the test fails at its end.

Leak check, off by default: ``scoped_session_check_leaks = true`` in the pytest ini
options, or ``@pytest.mark.scoped_session_check_leaks`` on a test (``(False)`` turns it
off for one test), makes a passing test fail at teardown when it left a session open in a
registered ScopedSession or a connection of the engine checked out.

Under pytest-xdist each worker process has its own connection and transaction per test;
the plugin keeps no state outside the running test. Give each worker its own SQLite file
(from ``tmp_path_factory``, or with ``worker_id`` in its name): a SQLite write
transaction locks the whole file.

Limits, all from the sessions of a test sharing one connection:

- Sessions made on other threads use that connection too: let one thread at a time
  use the database (wait for a job's result before the next), and open SQLite with
  ``connect_args={"check_same_thread": False}``.
- Savepoints nest: a session must commit or close before a session that began its
  transaction earlier commits. One session per request, nested requests and the test's
  own session all do so; two ScopedSessions used in one request commit in the order
  the middleware was given them, so pass the one used first last (SQLAlchemy warns
  "nested transaction already deassociated from connection" otherwise).
- Only sessions made through the registered ScopedSessions join the transaction; code
  that calls ``engine.connect()`` or the sessionmaker itself writes for real.
"""

from __future__ import annotations

import inspect
import typing as t

import pytest

from ._async_test_transaction import AsyncTestTransaction, shared_portal
from ._proxy import ScopedSession
from ._test_engines import (
    ASYNC,
    ASYNC_FIXTURE,
    DEFAULT_ENGINE,
    AnyScopedSession,
    bound_engine,
    checked_engine,
    default_engine,
    registries_of,
    sync_engine,
)
from ._test_transaction import LEAK_CHECK, Leaks, TestTransaction
from .asyncio import AsyncScopedSession

if t.TYPE_CHECKING:
    import anyio.from_thread
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "scoped_session_async_engine",
    "scoped_session_async_transaction",
    "scoped_session_engine",
    "scoped_session_portal",
    "scoped_session_transaction",
    "scoped_sessions",
]


#: Whether the call phase of a test failed: a failed test is not also blamed for leaks.
_call_failed = pytest.StashKey[bool]()
#: In a sync test, the portal whose event loop owns the async test connection.
_portal = pytest.StashKey["anyio.from_thread.BlockingPortal"]()

_DEFINE_SCOPED_SESSIONS = """\
scoped_session_transaction needs to know the ScopedSession objects of your code.
Define a fixture named 'scoped_sessions' in your conftest.py that returns them:

    @pytest.fixture
    def scoped_sessions():
        return [Session]
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        LEAK_CHECK,
        help="fail a test that leaves a session of a registered ScopedSession open"
        " (scoped_session_transaction)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{LEAK_CHECK}(enabled=True): fail this test if it leaves a session of a"
        " registered ScopedSession open; (False) turns the check off for it.",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> t.Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_call_failed] = report.failed
    return report


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def scoped_sessions() -> list[AnyScopedSession]:
    """The ScopedSession and AsyncScopedSession objects whose sessions join the
    test transaction.

    Define this fixture in your ``conftest.py``; it may return one registry or a
    list of them.
    """
    pytest.fail(_DEFINE_SCOPED_SESSIONS, pytrace=False)


@pytest.fixture
def scoped_session_engine(request: pytest.FixtureRequest, scoped_sessions: object) -> sa.Engine:
    """The engine the test transaction of the sync ScopedSessions runs on.

    By default the engine that their sessionmakers are bound to. Override it to
    test against another database (one per xdist worker, say): it then stands in
    for the sessionmakers' engine. Sessions that name engines of their own (a
    Flask app's, binds) use those, each in a test transaction of its own; with
    an override, a session whose ``bind`` is another engine is an error.
    """
    engine = default_engine(*registries_of(scoped_sessions))
    request.node.stash[DEFAULT_ENGINE] = engine
    return t.cast("sa.Engine", engine)


@pytest.fixture
def scoped_session_async_engine(scoped_sessions: object) -> AsyncEngine:
    """The async engine the async test transaction runs on.

    By default the engine that the AsyncScopedSessions' async_sessionmakers are
    bound to. Override it to test against another database (one per xdist
    worker, say).
    """
    return t.cast("AsyncEngine", bound_engine(ASYNC, *registries_of(scoped_sessions)))


@pytest.fixture
def scoped_session_transaction(
    request: pytest.FixtureRequest, scoped_sessions: object
) -> t.Iterator[sa.Connection | None]:
    """Run the test in a transaction that is rolled back at its end: one per
    engine its sessions use, begun when a session first uses it.

    The value is the connection the transaction runs on in ``scoped_session_engine``:
    statements run on it see what the test's sessions wrote; None when there is no
    such engine (each app names its own: ``Session.connection()`` in an app
    context is then that app's test connection). Sessions the registered
    ScopedSessions already hold when the test starts are closed first: they were
    made outside the transaction.
    """
    registries, indexes = registries_of(scoped_sessions)
    if any(isinstance(scoped, AsyncScopedSession) for scoped in registries):
        pytest.fail(
            "The scoped_sessions fixture returned an AsyncScopedSession: use the"
            f" {ASYNC_FIXTURE} fixture instead of scoped_session_transaction. It puts"
            " the async sessions in a transaction on an AsyncConnection, and the"
            " sync ScopedSessions among them in one of their own.",
            pytrace=False,
        )
    engine, explicit = sync_engine(request, registries, indexes)
    check_leaks = _leak_check_enabled(request.node)
    transaction = TestTransaction(
        engine, t.cast("list[ScopedSession[t.Any]]", registries), indexes, explicit=explicit
    )
    transaction.begin()
    try:
        yield transaction.connection
    finally:
        leaks = transaction.end()
    _report(request, check_leaks, leaks)


@pytest.fixture
def scoped_session_async_transaction(
    request: pytest.FixtureRequest, scoped_sessions: object
) -> t.Iterator[AsyncConnection]:
    """Run the test in a transaction on an ``AsyncConnection`` that is rolled back
    at its end; the async sessions join it through savepoints.

    The value is that connection. In an async test (pytest-asyncio or anyio) it is
    opened on the test's event loop. In a sync test it is opened on an event loop
    in a thread of the plugin's (the ``scoped_session_portal``), and every
    ``anyio.from_thread.start_blocking_portal()`` of the test, which is what
    Starlette's and FastAPI's ``TestClient`` run the app in, hands out that
    portal: the app runs on the loop that owns the connection.

    Sync ScopedSessions among the ``scoped_sessions`` get a test transaction of
    their own on ``scoped_session_engine``, also rolled back.
    """
    # A sync test reaches this body; for an async one pytest_fixture_setup below
    # runs _async_transaction() instead, on the test's loop.
    import anyio.from_thread

    transaction, check_leaks = _setup(request, scoped_sessions)
    original = anyio.from_thread.start_blocking_portal
    with original("asyncio") as portal, pytest.MonkeyPatch.context() as patch:
        portal.call(transaction.begin)
        request.node.stash[_portal] = portal
        patch.setattr(anyio.from_thread, "start_blocking_portal", shared_portal(portal, original))
        try:
            yield transaction.connection
        finally:
            del request.node.stash[_portal]
            patch.undo()
            leaks = portal.call(transaction.end)
    _report(request, check_leaks, leaks)


@pytest.fixture
def scoped_session_portal(
    request: pytest.FixtureRequest, scoped_session_async_transaction: object
) -> anyio.from_thread.BlockingPortal:
    """In a sync test, the portal whose event loop owns the async test connection:
    ``scoped_session_portal.call(conn.scalar, stmt)`` runs a coroutine there."""
    portal: anyio.from_thread.BlockingPortal | None = request.node.stash.get(_portal, None)
    if portal is None:
        pytest.fail(
            "scoped_session_portal is for sync tests: an async test already runs on"
            f" the loop that owns the connection; await {ASYNC_FIXTURE}'s methods"
            " directly.",
            pytrace=False,
        )
    return portal


async def _async_transaction(
    request: pytest.FixtureRequest, scoped_sessions: object
) -> t.AsyncIterator[AsyncConnection]:
    """The fixture in an async test: begins and ends on the test's event loop."""
    transaction, check_leaks = _setup(request, scoped_sessions)
    await transaction.begin()
    try:
        yield transaction.connection
    finally:
        leaks = await transaction.end()
    _report(request, check_leaks, leaks)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[t.Any], request: pytest.FixtureRequest
) -> t.Generator[None, object, object]:
    """Give an async test the async form of scoped_session_async_transaction.

    Runs before pytest-asyncio's and anyio's own hooks, which then run it on the
    test's loop: anyio takes any async fixture of a test it runs; pytest-asyncio
    in strict mode only one marked with ``pytest_asyncio.fixture``, with the loop
    scope of the test.
    """
    if fixturedef.argname != ASYNC_FIXTURE or fixturedef.func.__module__ != __name__:
        return (yield)  # not ours, or the user's override
    runner = _async_runner(request)
    if runner is None:
        return (yield)
    func: t.Callable[..., t.Any] = _async_transaction
    if runner == "asyncio":
        func = _for_pytest_asyncio(request)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fixturedef, "func", func)
        return (yield)


def _async_runner(request: pytest.FixtureRequest) -> str | None:
    """Which plugin runs the requesting test: "anyio", "asyncio", or None for a
    sync test."""
    if not inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        return None
    if "anyio_backend" in request.fixturenames:
        return "anyio"
    if request.node.get_closest_marker("asyncio") is not None:
        return "asyncio"
    pytest.fail(
        f"{ASYNC_FIXTURE} was requested by an async test that neither pytest-asyncio"
        " nor anyio runs: mark it with @pytest.mark.asyncio or @pytest.mark.anyio.",
        pytrace=False,
    )


def _for_pytest_asyncio(request: pytest.FixtureRequest) -> t.Callable[..., t.Any]:
    """The async fixture, marked for pytest-asyncio with the test's loop scope: a
    connection opened on another loop than the test's could not be used in it."""
    import pytest_asyncio

    marker = request.node.get_closest_marker("asyncio")
    loop_scope = (marker.kwargs.get("loop_scope") if marker else None) or request.config.getini(
        "asyncio_default_test_loop_scope"
    )

    async def scoped_session_async_transaction(
        request: pytest.FixtureRequest, scoped_sessions: object
    ) -> t.AsyncIterator[AsyncConnection]:
        async for connection in _async_transaction(request, scoped_sessions):
            yield connection

    # The decorator marks the function itself, which is all pytest-asyncio reads.
    pytest_asyncio.fixture(scoped_session_async_transaction, loop_scope=loop_scope or "function")
    return scoped_session_async_transaction


def _setup(
    request: pytest.FixtureRequest, scoped_sessions: object
) -> tuple[AsyncTestTransaction, bool]:
    """The async test transaction for the user's registries, not begun yet."""
    registries, indexes = registries_of(scoped_sessions)
    async_ = [
        (i, s)
        for i, s in zip(indexes, registries, strict=True)
        if isinstance(s, AsyncScopedSession)
    ]
    sync = [
        (i, s) for i, s in zip(indexes, registries, strict=True) if isinstance(s, ScopedSession)
    ]
    if not async_:
        pytest.fail(
            "The scoped_sessions fixture returned no AsyncScopedSession; for sync"
            " ScopedSessions alone use the scoped_session_transaction fixture.",
            pytrace=False,
        )
    engine = checked_engine(ASYNC, request.getfixturevalue("scoped_session_async_engine"))
    sync_transaction = None
    if sync:
        default, explicit = sync_engine(request, registries, indexes)
        sync_transaction = TestTransaction(
            default, [s for _, s in sync], [i for i, _ in sync], explicit=explicit
        )
    transaction = AsyncTestTransaction(
        engine, [s for _, s in async_], [i for i, _ in async_], sync_transaction
    )
    return transaction, _leak_check_enabled(request.node)


def _report(request: pytest.FixtureRequest, check_leaks: bool, leaks: Leaks) -> None:
    if check_leaks and not request.node.stash.get(_call_failed, False):
        message = leaks.message()
        if message:
            pytest.fail(message, pytrace=False)


# -- checking what the user gave ----------------------------------------------------


def _leak_check_enabled(node: pytest.Item | pytest.Collector) -> bool:
    marker = node.get_closest_marker(LEAK_CHECK)
    if marker is None:
        return bool(node.config.getini(LEAK_CHECK))
    enabled = marker.args[0] if marker.args else marker.kwargs.get("enabled", True)
    if not isinstance(enabled, bool):
        pytest.fail(
            f"@pytest.mark.{LEAK_CHECK} takes True or False, not an object of type"
            f" {type(enabled).__name__}.",
            pytrace=False,
        )
    return enabled
