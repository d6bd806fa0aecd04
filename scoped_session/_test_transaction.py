"""The pytest plugin's test transaction: a connection in a transaction per engine
the test uses, and the registries whose sessions join them through savepoints (see
``pytest_plugin``)."""

from __future__ import annotations

import functools
import threading
import typing as t

import pytest

from ._exceptions import ScopedSessionError
from ._proxy import ScopedSession
from ._registry import Registry

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.orm import sessionmaker

__all__ = [
    "JoinedFactory",
    "Leaks",
    "TestTransaction",
    "checked_out",
    "close_all",
    "ended_early",
    "factory_of",
    "joined_kwargs",
    "sessionmaker_of",
]

#: The ini option and the marker that turn the leak check on.
LEAK_CHECK = "scoped_session_check_leaks"


def joined_kwargs(factory: t.Any, connection: object, engine: object) -> dict[str, t.Any]:
    """What a (sync or async) sessionmaker's sessions are made with during a test:
    bound to the test connection, joining its transaction through savepoints.
    Per-mapper binds win over ``bind``: those to the test engine must point at the
    test connection too."""
    overrides: dict[str, t.Any] = {
        "bind": connection,
        "join_transaction_mode": "create_savepoint",
    }
    binds = factory.kw.get("binds")
    if binds:
        overrides["binds"] = {
            key: connection if target is engine else target for key, target in binds.items()
        }
    return overrides


class Leaks(t.NamedTuple):
    """What a test left behind: open sessions per registry, and pool checkouts."""

    sessions: list[tuple[int, Registry[t.Any], int]]
    connections: int

    def message(self) -> str:
        lines = []
        total = sum(count for _, _, count in self.sessions)
        if total:
            lines.append(
                f"scoped_session: this test left {plural(total, 'session')} open"
                " (closed now by the plugin):"
            )
            lines.extend(
                f"    scoped_sessions[{index}] {scoped!r}: {count}"
                for index, scoped, count in self.sessions
            )
            if any(scoped.is_async for _, scoped, _ in self.sessions):
                lines.append(
                    "An async session ends with 'await Session.remove()', at the end of"
                    " an 'async with Session.scope():' block, or with the request when"
                    " the ASGI middleware manages it; a task that ends without removing"
                    " its session has it closed by a backstop, which counts here too."
                )
            if not all(scoped.is_async for _, scoped, _ in self.sessions):
                lines.append(
                    "A session ends with Session.remove(), at the end of a"
                    " 'with Session.scope():' block, or with the request when the WSGI"
                    " middleware or FlaskScopedSession manages it."
                )
            lines.append(
                "End the sessions the test or the code under test opened, or turn the"
                f" check off for this test with @pytest.mark.{LEAK_CHECK}(False)."
            )
        if self.connections > 0:
            lines.append(
                f"scoped_session: this test left {plural(self.connections, 'connection')}"
                " of the engine checked out of its pool. Close what engine.connect()"
                " returns ('with engine.connect() as conn:'), and make sessions through"
                " the ScopedSession, not its sessionmaker, so that they join the test"
                " transaction and are closed with it."
            )
        return "\n".join(lines)


class JoinedFactory:
    """A ScopedSession's session factory while a test transaction runs: the
    user's sessionmaker, with every session bound to test connections.

    The sessions are of the sessionmaker's own class, so its events still fire.
    ``configure()`` applies for the rest of the test only.

    :param join: given what a session is to be made with, what it is made with
        instead: its binds as test connections (see :meth:`TestTransaction.join`).
    """

    def __init__(
        self,
        factory: sessionmaker[t.Any] | async_sessionmaker[t.Any],
        join: t.Callable[[dict[str, t.Any]], dict[str, t.Any]],
    ) -> None:
        self.factory = factory
        #: The sessionmaker's session class: session events listened to on the
        #: registry during the test reach it, as outside tests.
        self.class_ = factory.class_
        self.join = join
        self.configured: dict[str, t.Any] = {}

    def __call__(self, **kw: t.Any) -> t.Any:
        made = {**self.configured, **kw}
        return self.factory(**{**made, **self.join(made)})

    def configure(self, **kw: t.Any) -> None:
        """Reconfigure the sessions made during this test (not after it)."""
        self.configured.update(kw)


class _Joined(t.NamedTuple):
    """One engine's part of the test transaction."""

    connection: sa.Connection
    outer: sa.RootTransaction
    #: The engine's pool checkouts before the test took its connection.
    checked_out: int


class TestTransaction:
    """Registries whose sessions join test transactions: a connection in a
    transaction per engine they use, begun when a session first uses it.

    :param engine: the engine of the sessions that name none (and of those that
        name their sessionmaker's engine), begun at once; None: each session
        uses the engines it names.
    :param explicit: ``engine`` is the user's choice (their own
        ``scoped_session_engine``): a session made with another engine as its
        ``bind`` is an error, not moved to it.
    """

    def __init__(
        self,
        engine: sa.Engine | None,
        registries: list[ScopedSession[t.Any]],
        indexes: list[int] | None = None,
        *,
        explicit: bool = False,
    ) -> None:
        self.engine = engine
        self.explicit = explicit
        self.registries = registries
        #: Each registry's index in the ``scoped_sessions`` fixture (messages).
        self.indexes = list(range(len(registries))) if indexes is None else indexes
        self.originals: list[tuple[ScopedSession[t.Any], t.Callable[..., t.Any]]] = []
        #: The value of the fixture: the connection on ``engine``, if given.
        self.connection: sa.Connection | None = None
        self.joined: dict[sa.Engine, _Joined] = {}
        #: Sessions are made on any thread: one at a time begins an engine's part.
        self.lock = threading.Lock()
        #: What went wrong making sessions: the test fails with it at its end
        #: also when the code under test swallowed it (a request's 500).
        self.refused: list[str] = []

    def begin(self) -> None:
        factories = [
            sessionmaker_of(scoped, index)
            for scoped, index in zip(self.registries, self.indexes, strict=True)
        ]
        # Sessions that exist already were made outside the transaction: what they
        # wrote would be committed for real.
        close_all(self.registries)
        if self.engine is not None:
            self.connection = self.connection_for(self.engine)
        for scoped, index, factory in zip(self.registries, self.indexes, factories, strict=True):
            self.originals.append((scoped, scoped.session_factory))
            scoped.session_factory = JoinedFactory(
                factory, functools.partial(self.join, factory, index)
            )

    def connection_for(self, engine: sa.Engine) -> sa.Connection:
        """The test connection on ``engine``, begun on first use."""
        with self.lock:
            joined = self.joined.get(engine)
            if joined is None:
                before = checked_out(engine)
                connection = engine.connect()
                try:
                    outer = connection.begin()
                    make_transaction_real(connection)
                except BaseException:
                    connection.close()
                    raise
                joined = self.joined[engine] = _Joined(connection, outer, before)
            return joined.connection

    def join(
        self, factory: sessionmaker[t.Any], index: int, made: dict[str, t.Any]
    ) -> dict[str, t.Any]:
        """What a session of ``factory`` that was to be made with ``made`` is made
        with: each engine it would use (its ``bind``, the values of its
        ``binds``) replaced with that engine's test connection, joined through
        savepoints. ``engine`` stands in for the sessionmaker's own engine."""
        import sqlalchemy as sa

        own = factory.kw.get("bind")
        bind = made.get("bind")
        if bind is None or bind is own:
            bind = own if self.engine is None else self.engine
        elif self.explicit and isinstance(bind, sa.Engine) and bind is not self.engine:
            self.refuse(CONFLICT.format(index=index))
        joined: dict[str, t.Any] = {}
        if isinstance(bind, sa.Engine):
            joined["bind"] = self.connection_for(bind)
        binds = made.get("binds", factory.kw.get("binds"))
        if binds:
            joined["binds"] = replaced = {}
            for key, target in binds.items():
                if self.explicit and target is own:
                    target = self.engine
                replaced[key] = (
                    self.connection_for(target) if isinstance(target, sa.Engine) else target
                )
        if bind is None and not binds:
            self.refuse(NO_ENGINE.format(index=index))
        if joined:
            joined["join_transaction_mode"] = "create_savepoint"
        return joined

    def refuse(self, message: str) -> t.NoReturn:
        self.refused.append(message)
        raise ScopedSessionError(message)

    def end(self) -> Leaks:
        """Close every session, restore the factories, roll back and close each
        engine's connection. Every step runs even when one fails; the first
        failure is raised."""
        errors: list[BaseException] = []
        open_sessions: list[tuple[int, Registry[t.Any], int]] = []
        for index, scoped in zip(self.indexes, self.registries, strict=True):
            try:
                count = scoped.remove_all()
            except BaseException as exc:
                errors.append(exc)
            else:
                if count:
                    open_sessions.append((index, scoped, count))
        for scoped, factory in self.originals:
            scoped.session_factory = factory
        with self.lock:
            joined, self.joined = self.joined, {}
        was_ended = False
        connections = 0
        for engine, (connection, outer, before) in joined.items():
            try:
                if outer.is_active:
                    outer.rollback()
                else:
                    was_ended = True
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()
            connections += checked_out(engine) - before
        if errors:
            raise errors[0]
        if self.refused:
            pytest.fail("\n".join(dict.fromkeys(self.refused)), pytrace=False)
        if was_ended:
            ended_early("scoped_session_transaction")
        return Leaks(open_sessions, connections)


CONFLICT = (
    "scoped_session: a session of scoped_sessions[{index}] is to be made with bind= an"
    " engine of its own (its app's, from init_app(app, bind=...) or"
    " SCOPED_SESSION_DATABASE_URI, or a Session(bind=...)), and the scoped_session_engine"
    " fixture returns another engine; the test transaction does not move a session to"
    " another database. Leave the scoped_session_engine fixture out: the plugin then"
    " begins a test transaction on each engine the test uses. Or give the app the test's"
    " engine: Session.init_app(app, bind=engine)."
)
NO_ENGINE = (
    "scoped_session: a session of scoped_sessions[{index}] is to be made without an"
    " engine: its app has none (Session.init_app(app, bind=engine), or"
    " SCOPED_SESSION_DATABASE_URI in its config), its sessionmaker is bound to none, and"
    " no scoped_session_engine fixture names one. Give the app its engine, or define a"
    " fixture named 'scoped_session_engine' that returns the Engine to test against."
)


def make_transaction_real(connection: sa.Connection) -> None:
    """Make sure the outer transaction is a database transaction.

    The sqlite3 module begins a transaction only before an INSERT, UPDATE or
    DELETE. A session's SAVEPOINT, run first, would open the database transaction
    itself, and releasing it at the session's commit() would commit for real.
    """
    if connection.dialect.name != "sqlite":
        return
    # The driver's own connection: sqlite3's, or aiosqlite's (which reports the
    # same flag) under an async engine.
    driver_connection = connection.connection.driver_connection
    if getattr(driver_connection, "in_transaction", True) is False:
        connection.exec_driver_sql("BEGIN")


def close_all(registries: list[ScopedSession[t.Any]]) -> None:
    errors: list[BaseException] = []
    for scoped in registries:
        try:
            scoped.remove_all()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def checked_out(engine: sa.Engine) -> int:
    """Connections checked out of the engine's pool (0 for pools that do not count)."""
    checkedout = getattr(engine.pool, "checkedout", None)
    return int(checkedout()) if checkedout is not None else 0


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def sessionmaker_of(scoped: ScopedSession[t.Any], index: int) -> sessionmaker[t.Any]:
    from sqlalchemy.orm import sessionmaker

    factory: sessionmaker[t.Any] = factory_of(
        scoped, index, sessionmaker, "sqlalchemy.orm", "ScopedSession"
    )
    return factory


def factory_of(
    scoped: Registry[t.Any], index: int, maker: type[t.Any], module: str, registry: str
) -> t.Any:
    """The ``maker`` (a sessionmaker, or an async_sessionmaker) of the registry at
    ``index`` of the ``scoped_sessions`` fixture, or a test failure saying what to
    pass: the test transaction binds the sessions it makes to its connection."""
    factory = scoped.session_factory
    article = "an" if registry[0] in "AEIOU" else "a"
    if isinstance(factory, JoinedFactory):
        pytest.fail(
            f"scoped_sessions[{index}] {scoped!r} is already in a test transaction;"
            f" {article} {registry} can join one at a time.",
            pytrace=False,
        )
    if not isinstance(factory, maker):
        name = maker.__name__
        pytest.fail(
            f"scoped_sessions[{index}] {scoped!r} has a session factory of type"
            f" {type(factory).__name__}; the test transaction needs a"
            f" {module}.{name} to bind its sessions to the test's"
            f" connection. Make it {registry}({name}(engine)).",
            pytrace=False,
        )
    return factory


def ended_early(fixture: str) -> t.NoReturn:
    """Fail the test whose transaction was committed or rolled back on its
    connection, by the test or the code under test."""
    pytest.fail(
        "scoped_session: the test transaction was ended during the test:"
        " something called commit() or rollback() on its connection (the"
        f" value of {fixture}), so what the test wrote may"
        " have been committed. Commit and roll back through the sessions:"
        " in the test transaction they release and roll back savepoints.",
        pytrace=False,
    )
