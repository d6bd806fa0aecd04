"""The pytest plugin's test transaction: a connection in a transaction, and the
registries whose sessions join it through savepoints (see ``pytest_plugin``)."""

from __future__ import annotations

import typing as t

import pytest

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
    user's sessionmaker, with every session bound to the test connection.

    The sessions are of the sessionmaker's own class, so its events still fire.
    ``configure()`` applies for the rest of the test only.
    """

    def __init__(
        self,
        factory: sessionmaker[t.Any] | async_sessionmaker[t.Any],
        overrides: dict[str, t.Any],
    ) -> None:
        self.factory = factory
        #: The sessionmaker's session class: session events listened to on the
        #: registry during the test reach it, as outside tests.
        self.class_ = factory.class_
        self.overrides = overrides
        self.configured: dict[str, t.Any] = {}

    def __call__(self, **kw: t.Any) -> t.Any:
        return self.factory(**{**self.configured, **kw, **self.overrides})

    def configure(self, **kw: t.Any) -> None:
        """Reconfigure the sessions made during this test (not after it)."""
        self.configured.update(kw)


class TestTransaction:
    """A connection in a transaction, and registries whose sessions join it."""

    def __init__(
        self,
        engine: sa.Engine,
        registries: list[ScopedSession[t.Any]],
        indexes: list[int] | None = None,
    ) -> None:
        self.engine = engine
        self.registries = registries
        #: Each registry's index in the ``scoped_sessions`` fixture (messages).
        self.indexes = list(range(len(registries))) if indexes is None else indexes
        self.originals: list[tuple[ScopedSession[t.Any], t.Callable[..., t.Any]]] = []

    def begin(self) -> None:
        factories = [
            sessionmaker_of(scoped, index)
            for scoped, index in zip(self.registries, self.indexes, strict=True)
        ]
        # Sessions that exist already were made outside the transaction: what they
        # wrote would be committed for real.
        close_all(self.registries)
        self.checked_out = checked_out(self.engine)
        self.connection = connection = self.engine.connect()
        try:
            self.outer = connection.begin()
            make_transaction_real(connection)
            joined = [
                JoinedFactory(factory, joined_kwargs(factory, connection, self.engine))
                for factory in factories
            ]
        except BaseException:
            connection.close()
            raise
        for scoped, factory in zip(self.registries, joined, strict=True):
            self.originals.append((scoped, scoped.session_factory))
            scoped.session_factory = factory

    def end(self) -> Leaks:
        """Close every session, restore the factories, roll back, close the
        connection. Every step runs even when one fails; the first failure is
        raised."""
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
        was_ended = not self.outer.is_active
        try:
            if self.outer.is_active:
                self.outer.rollback()
        except BaseException as exc:
            errors.append(exc)
        finally:
            self.connection.close()
        if errors:
            raise errors[0]
        if was_ended:
            ended_early("scoped_session_transaction")
        return Leaks(open_sessions, checked_out(self.engine) - self.checked_out)


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
