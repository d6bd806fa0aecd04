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
  :class:`sqlalchemy.engine.Connection` it runs on.

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

import typing as t

import pytest

from ._proxy import ScopedSession
from ._test_transaction import LEAK_CHECK, TestTransaction, sessionmaker_of

if t.TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["scoped_session_engine", "scoped_session_transaction", "scoped_sessions"]

#: Whether the call phase of a test failed: a failed test is not also blamed for leaks.
_call_failed = pytest.StashKey[bool]()

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
def scoped_sessions() -> list[ScopedSession[t.Any]]:
    """The ScopedSession objects whose sessions join the test transaction.

    Define this fixture in your ``conftest.py``; it may return one ScopedSession or
    a list of them.
    """
    pytest.fail(_DEFINE_SCOPED_SESSIONS, pytrace=False)


@pytest.fixture
def scoped_session_engine(scoped_sessions: object) -> sa.Engine:
    """The engine the test transaction runs on.

    By default the engine that the ``scoped_sessions``' sessionmakers are bound to.
    Override it to test against another database (one per xdist worker, say).
    """
    return _bound_engine(_registries(scoped_sessions))


@pytest.fixture
def scoped_session_transaction(
    request: pytest.FixtureRequest, scoped_session_engine: object, scoped_sessions: object
) -> t.Iterator[sa.Connection]:
    """Run the test in a transaction that is rolled back at its end.

    The value is the connection the transaction runs on: statements run on it see
    what the test's sessions wrote. Sessions the registered ScopedSessions already
    hold when the test starts are closed first: they were made outside the
    transaction.
    """
    registries = _registries(scoped_sessions)
    engine = _checked_engine(scoped_session_engine)
    check_leaks = _leak_check_enabled(request.node)
    transaction = TestTransaction(engine, registries)
    transaction.begin()
    try:
        yield transaction.connection
    finally:
        leaks = transaction.end()
    if check_leaks and not request.node.stash.get(_call_failed, False):
        message = leaks.message()
        if message:
            pytest.fail(message, pytrace=False)


# -- checking what the user gave ----------------------------------------------------


def _registries(value: object) -> list[ScopedSession[t.Any]]:
    """The ScopedSession objects from the ``scoped_sessions`` fixture, each once."""
    if isinstance(value, ScopedSession):
        return [value]
    if isinstance(value, str | bytes) or not isinstance(value, t.Iterable):
        pytest.fail(
            "The scoped_sessions fixture must return a ScopedSession or a list of"
            f" them; it returned an object of type {type(value).__name__}.",
            pytrace=False,
        )
    found: dict[int, ScopedSession[t.Any]] = {}
    for item in value:
        if not isinstance(item, ScopedSession):
            kind = type(item).__name__
            hint = " (async sessions are not supported yet)" if kind.startswith("Async") else ""
            pytest.fail(
                "The scoped_sessions fixture must return ScopedSession objects; it"
                f" returned an object of type {kind} among them{hint}.",
                pytrace=False,
            )
        found.setdefault(id(item), item)
    if not found:
        pytest.fail(
            "The scoped_sessions fixture returned no ScopedSession: return the ones"
            " whose sessions the code under test uses.",
            pytrace=False,
        )
    return list(found.values())


def _bound_engine(registries: list[ScopedSession[t.Any]]) -> sa.Engine:
    import sqlalchemy as sa

    engines: dict[int, sa.Engine] = {}
    for index, scoped in enumerate(registries):
        bind = sessionmaker_of(scoped, index).kw.get("bind")
        if not isinstance(bind, sa.Engine):
            pytest.fail(
                f"scoped_sessions[{index}] {scoped!r} has a sessionmaker that is not"
                " bound to an engine, so the test transaction does not know which"
                " database to use. Define a fixture named 'scoped_session_engine' in"
                " your conftest.py that returns the Engine to test against.",
                pytrace=False,
            )
        engines.setdefault(id(bind), bind)
    if len(engines) > 1:
        pytest.fail(
            "The scoped_sessions are bound to different engines; the test transaction"
            " runs on one. Define a fixture named 'scoped_session_engine' in your"
            " conftest.py that returns the Engine to test against.",
            pytrace=False,
        )
    return next(iter(engines.values()))


def _checked_engine(value: object) -> sa.Engine:
    import sqlalchemy as sa

    if not isinstance(value, sa.Engine):
        pytest.fail(
            "The scoped_session_engine fixture must return a sqlalchemy Engine (the"
            " plugin opens its own connection); it returned an object of type"
            f" {type(value).__name__}.",
            pytrace=False,
        )
    return value


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
