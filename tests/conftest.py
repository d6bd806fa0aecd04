"""Fixtures for every test module.

The real-database fixtures need SQLAlchemy; without it they skip the test that asks
for them (with the reason), so that the tests of pure logic still run.
"""

from __future__ import annotations

import gc
import typing as t
from pathlib import Path

import pytest
from fakes import HAS_SQLALCHEMY, NO_SQLALCHEMY

if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import (
        AsyncDB,
        Base,
        Database,
        drop_schema,
        make_postgres_engine,
        make_sqlite_engine,
        postgres_url,
    )


def skip_without_sqlalchemy() -> None:
    if not HAS_SQLALCHEMY:
        pytest.skip(NO_SQLALCHEMY)


def skip_without_greenlet() -> None:
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio extension needs greenlet")


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """pytest's caplog, started after collecting the garbage of earlier tests.

    A test that ends with a session still in its scope leaves it to the cell's
    finalizer, which runs whenever the cyclic collector next gets to it, in
    whatever test runs then, and logs a warning. Tests here count the
    library's log records, so that warning must not land in another test's.
    """
    gc.collect()
    caplog.clear()
    return caplog


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> t.Iterator[sa.Engine]:
    """A real SQLite file database with the test tables."""
    skip_without_sqlalchemy()
    engine = make_sqlite_engine(f"sqlite:///{tmp_path / 'test.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url() -> str:
    skip_without_sqlalchemy()
    url = postgres_url()
    if url is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture
def pg_engine(pg_url: str) -> t.Iterator[sa.Engine]:
    """A real PostgreSQL engine in a schema of its own, with the test tables."""
    engine, _, schema = make_postgres_engine(pg_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()
    drop_schema(pg_url, schema)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[Database]:
    """Each real database in turn: a SQLite file, then PostgreSQL (if configured)."""
    skip_without_sqlalchemy()
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        engine = make_sqlite_engine(url)
        Base.metadata.create_all(engine)
        yield Database(engine, "sqlite", url, "")
        engine.dispose()
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    engine, app_name, schema = make_postgres_engine(pg)
    Base.metadata.create_all(engine)
    yield Database(engine, "postgres", pg, app_name)
    engine.dispose()
    drop_schema(pg, schema)


@pytest.fixture(params=["sqlite", "asyncpg", "psycopg"])
def adb(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[AsyncDB]:
    """Each real database in turn: a SQLite file, then PostgreSQL through asyncpg
    and through psycopg (if configured)."""
    skip_without_sqlalchemy()
    skip_without_greenlet()
    kind: str = request.param
    if kind == "sqlite":
        pytest.importorskip("aiosqlite")
        yield AsyncDB(kind, str(tmp_path / "test.db"))
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    if kind == "asyncpg":
        pytest.importorskip("asyncpg")
    db = AsyncDB(kind, pg)
    yield db
    db.drop()


@pytest.fixture
def sqlite_adb(tmp_path: Path) -> AsyncDB:
    skip_without_sqlalchemy()
    skip_without_greenlet()
    pytest.importorskip("aiosqlite")
    return AsyncDB("sqlite", str(tmp_path / "test.db"))
