"""The pytest plugin's async test transaction: an ``AsyncConnection`` in a
transaction, and the registries whose sessions join it through savepoints (see
``pytest_plugin``).

An async driver's connection belongs to the event loop it was opened on (asyncpg's
protocol is bound to it; aiosqlite and psycopg deliver results to it), so
:meth:`AsyncTestTransaction.begin` and :meth:`AsyncTestTransaction.end` must run on
the loop the code under test uses: the test's own loop in an async test, the
plugin's portal loop in a sync one (``pytest_plugin`` decides which).
"""

from __future__ import annotations

import contextlib
import typing as t

from ._proxy import ScopedSession
from ._registry import Registry
from ._tasks import drain_closing
from ._test_transaction import (
    JoinedFactory,
    Leaks,
    TestTransaction,
    checked_out,
    ended_early,
    factory_of,
    joined_kwargs,
    make_transaction_real,
)
from .asyncio import AsyncScopedSession

if t.TYPE_CHECKING:
    import anyio.from_thread
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

__all__ = ["AsyncTestTransaction", "async_sessionmaker_of", "shared_portal"]

AnyScopedSession = ScopedSession[t.Any] | AsyncScopedSession[t.Any]


class AsyncTestTransaction:
    """An ``AsyncConnection`` in a transaction that async registries' sessions join;
    sync registries, if any, join a :class:`TestTransaction` of their own (a sync
    session cannot drive an async driver's connection from a worker thread).

    :param engine: the async engine the connection is opened on.
    :param registries: the AsyncScopedSession objects, in the user's order.
    :param indexes: each one's index in the ``scoped_sessions`` fixture (messages).
    :param sync: the transaction of the sync registries, or None.
    """

    connection: AsyncConnection

    def __init__(
        self,
        engine: AsyncEngine,
        registries: list[AsyncScopedSession[t.Any]],
        indexes: list[int],
        sync: TestTransaction | None = None,
    ) -> None:
        self.engine = engine
        self.registries = registries
        self.indexes = indexes
        self.sync = sync
        self.originals: list[tuple[AsyncScopedSession[t.Any], t.Callable[..., t.Any]]] = []
        self.reaped: list[int] = []

    async def begin(self) -> None:
        """Close the sessions made before (outside the transaction), open the
        connection on the running loop and begin; then the sync part, if any."""
        factories = [
            async_sessionmaker_of(scoped, index)
            for scoped, index in zip(self.registries, self.indexes, strict=True)
        ]
        # What those wrote would be committed for real.
        await close_all_async(self.registries)
        await drain_closing()
        self.reaped = [scoped.stats().reaped for scoped in self.registries]
        self.checked_out = checked_out(self.engine.sync_engine)
        self.connection = connection = await self.engine.connect()
        try:
            self.outer = await connection.begin()
            await connection.run_sync(make_transaction_real)
            joined = [
                JoinedFactory(factory, _always(joined_kwargs(factory, connection, self.engine)))
                for factory in factories
            ]
            if self.sync is not None:
                self.sync.begin()
        except BaseException:
            await connection.close()
            raise
        for scoped, factory in zip(self.registries, joined, strict=True):
            self.originals.append((scoped, scoped.session_factory))
            scoped.session_factory = factory

    async def end(self) -> Leaks:
        """Close every session (counting those a task left behind), restore the
        factories, roll back, close the connection; then the sync part. Every step
        runs even when one fails; the first failure is raised."""
        errors: list[BaseException] = []
        open_sessions: list[tuple[int, Registry[t.Any], int]] = []
        # Sessions of tasks that ended without remove() are being closed by the
        # registry's backstop: let those closes finish before the rollback.
        await drain_closing()
        for index, scoped, before in zip(self.indexes, self.registries, self.reaped, strict=True):
            try:
                count = await scoped.remove_all()
            except BaseException as exc:
                errors.append(exc)
                count = 0
            count += scoped.stats().reaped - before
            if count:
                open_sessions.append((index, scoped, count))
        for scoped, factory in self.originals:
            scoped.session_factory = factory
        was_ended = not self.outer.is_active
        try:
            if self.outer.is_active:
                await self.outer.rollback()
        except BaseException as exc:
            errors.append(exc)
        finally:
            try:
                # The driver's connection belongs to this loop: closed here rather
                # than pooled, where a test on another loop would be handed it.
                await self.connection.invalidate()
            finally:
                await self.connection.close()
        leaks = Leaks(open_sessions, checked_out(self.engine.sync_engine) - self.checked_out)
        if self.sync is not None:
            try:
                sync_leaks = self.sync.end()
            except BaseException as exc:
                errors.append(exc)
            else:
                leaks = Leaks(
                    sorted(leaks.sessions + sync_leaks.sessions, key=lambda entry: entry[0]),
                    leaks.connections + sync_leaks.connections,
                )
        if errors:
            raise errors[0]
        if was_ended:
            ended_early("scoped_session_async_transaction")
        return leaks


def _always(overrides: dict[str, t.Any]) -> t.Callable[[dict[str, t.Any]], dict[str, t.Any]]:
    """Every async session joins the one test connection, whatever it names."""
    return lambda made: overrides


async def close_all_async(registries: list[AsyncScopedSession[t.Any]]) -> None:
    errors: list[BaseException] = []
    for scoped in registries:
        try:
            await scoped.remove_all()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def async_sessionmaker_of(
    scoped: AsyncScopedSession[t.Any], index: int
) -> async_sessionmaker[t.Any]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    factory: async_sessionmaker[t.Any] = factory_of(
        scoped, index, async_sessionmaker, "sqlalchemy.ext.asyncio", "AsyncScopedSession"
    )
    return factory


def shared_portal(
    portal: anyio.from_thread.BlockingPortal,
    original: t.Callable[..., contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal]],
) -> t.Callable[..., contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal]]:
    """A stand-in for ``anyio.from_thread.start_blocking_portal`` that hands out
    ``portal`` (left running at the block's end) for the asyncio backend.

    Starlette's and FastAPI's ``TestClient`` run the app in a portal of their own,
    a new event loop per client (or per request outside a ``with`` block); the
    test connection can only be used on the loop that opened it.
    """

    @contextlib.contextmanager
    def start_blocking_portal(
        backend: str = "asyncio",
        backend_options: dict[str, t.Any] | None = None,
        *,
        name: str | None = None,
    ) -> t.Iterator[anyio.from_thread.BlockingPortal]:
        if backend != "asyncio":
            # SQLAlchemy's asyncio extension runs on asyncio only; let the other
            # backend fail as it would without the plugin.
            with original(backend, backend_options, name=name) as own:
                yield own
            return
        yield portal

    return start_blocking_portal
