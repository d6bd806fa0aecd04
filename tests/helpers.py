"""Shared test helpers that need SQLAlchemy: a model, real engines, and server-side
connection counts. Importing this module without SQLAlchemy skips the importing test
module; the sessions that are not SQLAlchemy's are in ``fakes.py``."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip(
    "sqlalchemy",
    reason="SQLAlchemy is not installed: tests/helpers.py builds real databases"
    " (sessions that are not SQLAlchemy's are in tests/fakes.py)",
)

import psycopg
import sqlalchemy as sa
from fakes import AsyncTrivialSession as AsyncTrivialSession  # for imports from here
from fakes import TrivialSession as TrivialSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

POSTGRES_ENV = "SCOPED_SESSION_TEST_POSTGRES_URL"


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200), unique=True)


def checkedout(engine: sa.Engine) -> int:
    """How many connections of the engine's pool are checked out right now."""
    return t.cast("sa.QueuePool", engine.pool).checkedout()


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as psycopg takes it."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_sqlite_engine(url: str, *, wal: bool = False, **kw: t.Any) -> sa.Engine:
    """An engine on a SQLite file whose writers wait up to 30 seconds for the
    file's lock (the driver's default, 5 seconds, is too short for a threaded
    server's test on a busy machine); ``wal``: in WAL mode, so that readers do
    not wait for writers."""
    engine = sa.create_engine(url, connect_args={"timeout": 30}, **kw)
    if wal:

        @sa.event.listens_for(engine, "connect")
        def set_wal(dbapi_connection: t.Any, record: object) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

    return engine


def make_postgres_engine(url: str, **kw: t.Any) -> tuple[sa.Engine, str, str]:
    """An engine in a schema of its own, with an application_name to count its
    backends by. Returns the engine, the application name and the schema."""
    tag = uuid.uuid4().hex[:12]
    app_name, schema = f"ss-test-{tag}", f"ss_{tag}"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    engine = sa.create_engine(
        sa.make_url(url).set(drivername="postgresql+psycopg"),
        connect_args={"application_name": app_name, "options": f"-csearch_path={schema}"},
        **kw,
    )
    return engine, app_name, schema


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def backends(url: str, app_name: str) -> list[tuple[int, str]]:
    """(pid, state) of every server backend that carries ``app_name``."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE application_name = %s",
            (app_name,),
        ).fetchall()
    return [(int(pid), str(state)) for pid, state in rows]


class Database(t.NamedTuple):
    """A real database for one test: an engine and ways to count its connections."""

    engine: sa.Engine
    kind: str  # "sqlite" or "postgres"
    url: str
    app_name: str  # postgres only: the application_name of the engine's backends

    def backends(self) -> list[tuple[int, str]]:
        """Server-side connections of this engine (postgres); [] for SQLite."""
        if self.kind != "postgres":
            return []
        return backends(self.url, self.app_name)

    def idle_in_transaction(self) -> int:
        return sum(1 for _, state in self.backends() if state.startswith("idle in transaction"))

    def checkedout(self) -> int:
        return checkedout(self.engine)

    def count_notes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM notes")).scalar_one())


# -- asyncio -------------------------------------------------------------------------


class AsyncDatabase(t.NamedTuple):
    """A real database for an async test: an async engine and its connection counts."""

    engine: t.Any  # sqlalchemy.ext.asyncio.AsyncEngine
    kind: str  # "sqlite", "asyncpg" or "psycopg"
    url: str  # postgres: the URL to count backends with
    app_name: str  # postgres only: the application_name of the engine's backends

    def checkedout(self) -> int:
        return t.cast("sa.QueuePool", self.engine.sync_engine.pool).checkedout()

    def backends(self) -> list[tuple[int, str]]:
        """Server-side connections of this engine (postgres); [] for SQLite."""
        if self.kind == "sqlite":
            return []
        return backends(self.url, self.app_name)

    def idle_in_transaction(self) -> int:
        return sum(1 for _, state in self.backends() if state.startswith("idle in transaction"))

    async def count_notes(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.text("SELECT count(*) FROM notes"))).scalar_one())


def make_async_engine(kind: str, where: str, **kw: t.Any) -> tuple[t.Any, str, str]:
    """An async engine: ``kind`` "sqlite" makes a SQLite file ``where`` (aiosqlite);
    "asyncpg" or "psycopg" use the PostgreSQL URL ``where`` in a schema of its own.
    Returns the engine, the application name and the schema (both "" for SQLite)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    if kind == "sqlite":
        # A pool that counts (SQLAlchemy 2.0 gives aiosqlite files a NullPool).
        kw.setdefault("poolclass", sa.AsyncAdaptedQueuePool)
        return create_async_engine(f"sqlite+aiosqlite:///{where}", **kw), "", ""
    tag = uuid.uuid4().hex[:12]
    app_name, schema = f"ss-async-{tag}", f"ss_{tag}"
    with psycopg.connect(libpq_url(where), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    if kind == "asyncpg":
        connect_args: dict[str, t.Any] = {
            "server_settings": {"application_name": app_name, "search_path": schema}
        }
    else:
        connect_args = {"application_name": app_name, "options": f"-csearch_path={schema}"}
    url = sa.make_url(where).set(drivername=f"postgresql+{kind}")
    return create_async_engine(url, connect_args=connect_args, **kw), app_name, schema


async def create_tables(engine: t.Any) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


class AsyncDB:
    """Runs an async test body in an event loop of its own against a fresh async
    engine with the test tables, and disposes of the engine in that loop."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where
        self.schemas: list[str] = []

    def run(self, body: t.Callable[[AsyncDatabase], t.Awaitable[_T]], **engine_kw: t.Any) -> _T:
        import asyncio

        async def main() -> _T:
            engine, app_name, schema = make_async_engine(self.kind, self.where, **engine_kw)
            self.schemas.append(schema)
            try:
                await create_tables(engine)
                return await body(AsyncDatabase(engine, self.kind, self.where, app_name))
            finally:
                await engine.dispose()

        return asyncio.run(main())

    def drop(self) -> None:
        """Drop the schemas the runs made (postgres)."""
        for schema in self.schemas:
            if schema:
                drop_schema(self.where, schema)


_T = t.TypeVar("_T")


class ExampleRun:
    """An example app run as a script: its port while it serves; once it has
    stopped, its exit code and output."""

    port: int
    returncode: int | None = None
    out: str = ""
    err: str = ""


@contextlib.contextmanager
def run_example(script: Path, db_url: str, cwd: Path, timeout: float) -> t.Iterator[ExampleRun]:
    """Start an example with ``--port=0 --db=db_url``, wait for its "Serving on"
    line, and stop it with Ctrl+C (SIGINT) at the end of the block.

    An example still running ``timeout`` seconds after Ctrl+C fails the test
    with every thread's stack (faulthandler, on SIGABRT) and its output."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(script), "--port=0", f"--db={db_url}"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = ExampleRun()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"Serving on http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        run.port = int(found.group(1))
        yield run
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            run.out, run.err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=timeout)
            raise AssertionError(
                f"{script.name} was still running {timeout} s after Ctrl+C; its"
                f" threads then:\n{err}\nits output:\n{out}"
            ) from None
        run.returncode = proc.returncode


def get_and_leave(port: int, path: str, at_least: int, timeout: float) -> int:
    """GET ``path``, read the status and at least ``at_least`` bytes, then leave
    with a reset (the unread rest makes the server's next write fail). Returns
    the status, 0 when none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received) < at_least:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else 0


def reaches_the_session(proxy: t.Any, session: object, name: str) -> bool:
    """Whether ``proxy.name`` is the caller's ``session.name``: a method the proxy
    forwards takes the session's parameters; a property gives the session's value."""
    ours, theirs = getattr(proxy, name), getattr(session, name)
    member = inspect.getattr_static(type(proxy), name, None)
    if inspect.isfunction(member) or isinstance(member, classmethod):
        return parameters(ours) == parameters(theirs)
    if callable(theirs) and hasattr(theirs, "__self__"):
        return bool(ours.__self__ is theirs.__self__ and ours.__func__ is theirs.__func__)
    if getattr(session, name) is not theirs:
        return type(ours) is type(theirs)  # a fresh object per read (no_autoflush)
    return bool(ours is theirs or ours == theirs)


def parameters(func: t.Callable[..., object]) -> list[tuple[str, object, object]]:
    """The name, kind and default of each parameter of ``func``. Not the annotations:
    their text changes between patch releases of SQLAlchemy (the generated module of
    a line has its latest release's), and type checkers read SQLAlchemy's own."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def refused_with_a_hint(proxy: object, name: str) -> bool:
    """Whether reading ``proxy.name`` is an AttributeError that says to use the
    name on the session instead (``Session().name``)."""
    try:
        getattr(proxy, name)
    except AttributeError as exc:
        return f"Session().{name}" in str(exc) and exc.name == name
    return False
