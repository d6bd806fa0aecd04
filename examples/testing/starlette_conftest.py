"""An example ``conftest.py`` for a Starlette app tested with scoped_session's
pytest plugin and pytest-asyncio (copy it as ``conftest.py`` next to your tests).

Every test that uses ``client`` or ``async_client`` runs in a database transaction
that is rolled back at its end. Async tests are marked ``@pytest.mark.asyncio``;
their async fixtures are ``@pytest_asyncio.fixture`` (pytest-asyncio's strict mode,
its default). Sync tests use Starlette's ``TestClient``.
"""

from __future__ import annotations

import asyncio
import typing as t

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.testclient import TestClient
from starlette_notes import Base, Session, app

from scoped_session.asyncio import AsyncScopedSession


@pytest.fixture
def scoped_sessions() -> list[AsyncScopedSession[t.Any]]:
    return [Session]


@pytest.fixture(scope="session")
def scoped_session_async_engine(
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[AsyncEngine]:
    # A SQLite file per xdist worker (each has its own tmp_path_factory). For
    # PostgreSQL, return create_async_engine("postgresql+asyncpg://...") instead:
    # one database serves every worker, each test in a transaction of its own.
    path = tmp_path_factory.mktemp("db") / "test.db"
    schema_engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(schema_engine)
    schema_engine.dispose()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    yield engine
    asyncio.run(engine.dispose())


@pytest.fixture
def client(scoped_session_async_transaction: object) -> TestClient:
    # A sync test: the plugin runs the app on the event loop that owns the test
    # connection, whether or not the client is used in a 'with' block.
    return TestClient(app)


@pytest_asyncio.fixture
async def async_client(
    scoped_session_async_transaction: object,
) -> t.AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
