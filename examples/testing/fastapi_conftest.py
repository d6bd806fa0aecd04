"""An example ``conftest.py`` for a FastAPI app tested with scoped_session's
pytest plugin (copy it as ``conftest.py`` next to your tests).

Every test that uses ``client`` or ``async_client`` runs in a database transaction
that is rolled back at its end: the app commits as in production (each commit
releases a savepoint) and nothing outlives the test. Async tests run under anyio's
pytest plugin (``@pytest.mark.anyio``, as FastAPI's documentation does; see
``starlette_conftest.py`` for pytest-asyncio); sync tests use ``TestClient``.
"""

from __future__ import annotations

import asyncio
import typing as t
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from fastapi_notes import DB, Base, SyncDB, app
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scoped_session import ScopedSession
from scoped_session.asyncio import AsyncScopedSession


@pytest.fixture
def scoped_sessions() -> list[AsyncScopedSession[t.Any] | ScopedSession[t.Any]]:
    return [DB, SyncDB]  # every registry the app uses


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A SQLite file per xdist worker (each has its own tmp_path_factory): a write
    # transaction locks the whole file. A PostgreSQL database can be shared.
    path = tmp_path_factory.mktemp("db") / "test.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def scoped_session_async_engine(database: Path) -> t.Iterator[AsyncEngine]:
    # The plugin opens one connection per test, on the test's event loop, and
    # closes it at the test's end: a session-wide engine is fine.
    engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
    yield engine
    asyncio.run(engine.dispose())


@pytest.fixture(scope="session")
def scoped_session_engine(database: Path) -> t.Iterator[sa.Engine]:
    # For the sync ScopedSession: a test transaction of its own on this engine.
    engine = sa.create_engine(f"sqlite:///{database}")
    yield engine
    engine.dispose()


@pytest.fixture
def client(scoped_session_async_transaction: object) -> t.Iterator[TestClient]:
    # A sync test: the plugin runs the app on the event loop that owns the test
    # connection, for this client and any other TestClient of the test.
    with TestClient(app) as client:
        yield client


@pytest.fixture
async def async_client(
    scoped_session_async_transaction: object,
) -> t.AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's asyncio extension needs asyncio
