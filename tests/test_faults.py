"""Faults survived under real servers, on real sessions: a session whose
``commit()`` raises, one whose ``close()`` raises, and a PostgreSQL backend
killed in the middle of a request (``pg_terminate_backend``).

Each failing request must fail cleanly (a 500, nothing it wrote committed, its
session closed) and the next request on the same server thread must work. The
servers run one request thread (werkzeug without threads, gunicorn's gthread
worker with ``--threads=1``), so "the next request" really reuses the failing
request's thread, and the app reports which threads served requests.

To kill a backend mid-request, the view sends its ``pg_backend_pid()`` to a
controller listening on 127.0.0.1 (:class:`Killer`), which terminates that
backend, waits until it is gone, and only then lets the view go on.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import logging
import socket
import threading
import typing as t
from pathlib import Path

import pytest

pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy is not installed: the faults are those of real sessions"
)

import load_app
import load_run
import psycopg
import sqlalchemy as sa
from helpers import postgres_url
from sqlalchemy import orm

from scoped_session import ScopedSession
from scoped_session.worker import ScopedThreadPoolExecutor
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

pytestmark = pytest.mark.server

WAIT = 30.0
#: The server-side fault counter each endpoint bumps once.
FAULT_COUNTER = {"commit-fault": "commit", "close-fault": "close", "kill": "kill"}
#: The exception each one raises out of the app. Flask answers a view's or an
#: after_request handler's exception itself; only a failed close() in the
#: context's teardown leaves the Flask app.
ERROR = {
    "commit-fault": "InjectedFault",
    "close-fault": "InjectedFault",
    "kill": "OperationalError",
}
FLASK_ERROR = {"close-fault": "InjectedFault"}


def raised(prefix: str, fault: str, times: int) -> dict[str, int]:
    """What the outermost middleware saw raised by ``times`` such requests."""
    name = (ERROR if prefix == "/w" else FLASK_ERROR).get(fault)
    return {name: times} if name else {}


class FaultDB:
    """A real database for one test: SQLite file or PostgreSQL schema."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.pg: load_run.LoadDB | None = None
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'faults.db'}"
            self.check = load_app.make_engine(self.url)
            load_app.create_tables(self.check)
            self.app_name = ""
            self.schema = ""
        else:
            url = postgres_url()
            if url is None:
                pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
            self.pg = load_run.LoadDB(url)
            self.url = url
            self.check = self.pg.engine
            self.app_name = self.pg.app_name("app")
            self.schema = self.pg.schema

    def engine(self) -> sa.Engine:
        """An engine for an in-process app (a small pool: two connections)."""
        return load_app.make_engine(self.url, self.app_name, self.schema, (2, 0))

    def keys(self) -> set[int]:
        with self.check.connect() as conn:
            return set(conn.scalars(sa.select(load_app.Row.key)))

    def backends(self) -> list[str]:
        return self.pg.backends(self.app_name) if self.pg else []

    def drop(self) -> None:
        if self.pg is not None:
            self.pg.drop()
        else:
            self.check.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def fault_db(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[FaultDB]:
    db = FaultDB(request.param, tmp_path)
    yield db
    db.drop()


@pytest.fixture
def pg_db(pg_url: str, tmp_path: Path) -> t.Iterator[FaultDB]:
    db = FaultDB("postgres", tmp_path)
    yield db
    db.drop()


class Killer:
    """Kills the backend one view reports, then lets that view go on."""

    def __init__(self, db: FaultDB) -> None:
        self.db = db
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WAIT)
        self.port = self.server.getsockname()[1]
        self.killed: list[int] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve_one)
        self.thread.start()

    def _serve_one(self) -> None:
        try:
            conn, _ = self.server.accept()
            with conn, psycopg.connect(load_run.libpq(self.db.url), autocommit=True) as admin:
                conn.settimeout(WAIT)
                pid = int(conn.makefile("rb").readline())
                # Only ever the app's own backend, and only while it is in the
                # request's transaction.
                row = admin.execute(
                    "SELECT application_name, state FROM pg_stat_activity WHERE pid = %s",
                    (pid,),
                ).fetchone()
                assert row == (self.db.app_name, "idle in transaction"), row
                done = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
                assert done.fetchone() == (True,)
                self.killed.append(pid)
                conn.sendall(b"killed\n")
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.server.close()
        assert self.errors == []


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def fail_then_write(port: int, prefix: str, fault: str, db: FaultDB) -> tuple[int, int | None]:
    """Send the failing request, then an ordinary write; return the write's
    key and the killed backend (for ``kill``)."""
    killer = Killer(db) if fault == "kill" else None
    query = f"?ctl={killer.port}" if killer else ""
    try:
        status, _ = get(port, f"{prefix}/{fault}{query}")
    finally:
        if killer:
            killer.join()
    assert status == 500
    status, body = get(port, f"{prefix}/write")
    assert status == 200, body
    killed = killer.killed[0] if killer else None
    return int(body), killed


def check_after(
    stats: dict[str, t.Any], db: FaultDB, faults: dict[str, int], keys: set[int]
) -> None:
    """What must hold once the server is quiet after failing requests."""
    assert stats["idle"]
    assert stats["checkedout"] == 0
    sessions = stats["sessions"]
    assert sessions["closed"] == sessions["created"]
    assert sessions["alive"] == 0
    assert stats["violations"] == 0, stats["violation_samples"]
    for counts in stats["scoped"].values():
        assert counts["live"] == counts["reaped"] == 0
        assert counts["removed"] == counts["created"]
    assert stats["faults"] == faults
    # One server thread ran every request: the failing ones and those after.
    assert len(stats["request_threads"]) == 1
    # Exactly the ordinary writes: nothing a failing request wrote.
    assert db.keys() == {load_app.TAKEN, *keys}
    assert all(state == "idle" for state in db.backends())


class Served(t.NamedTuple):
    app: load_app.LoadApp
    port: int
    logs: load_run.LogCounter


@contextlib.contextmanager
def in_process(db: FaultDB, prefix: str) -> t.Iterator[Served]:
    """The app under werkzeug's server, one request thread, in this process.

    Its logs are counted, not captured: a captured record keeps its traceback,
    and through the traceback's frames the failed request's session, alive.
    """
    if prefix == "/f":
        pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
    gc.collect()  # earlier tests' garbage is reaped now, not counted as ours
    engine = db.engine()
    app = load_app.make_app(engine, key_base=1, flask=prefix == "/f")
    try:
        with (
            load_run.counted_logs("scoped_session", "werkzeug", "load_app") as logs,
            load_run.werkzeug_server(app, threaded=False) as port,
        ):
            yield Served(app, port, logs)
    finally:
        app.close()
        engine.dispose()


# -- werkzeug, in this process -----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/w", "/f"], ids=["wsgi", "flask"])
@pytest.mark.parametrize("fault", ["commit-fault", "close-fault"])
def test_commit_or_close_raising(fault_db: FaultDB, prefix: str, fault: str) -> None:
    with in_process(fault_db, prefix) as served:
        first, _ = fail_then_write(served.port, prefix, fault, fault_db)
        second, _ = fail_then_write(served.port, prefix, fault, fault_db)
        stats = served.app.stats()
    check_after(stats, fault_db, {FAULT_COUNTER[fault]: 2}, {first, second})
    assert stats["errors"] == raised(prefix, fault, 2)
    assert served.logs.leaks() == []


@pytest.mark.parametrize("prefix", ["/w", "/f"], ids=["wsgi", "flask"])
def test_backend_killed_mid_request(pg_db: FaultDB, prefix: str) -> None:
    with in_process(pg_db, prefix) as served:
        first, killed = fail_then_write(served.port, prefix, "kill", pg_db)
        # The disconnect recycles the pool's connections: the next kill finds
        # a fresh backend, and the request after it works too.
        second, killed_again = fail_then_write(served.port, prefix, "kill", pg_db)
        stats = served.app.stats()
    assert killed is not None
    assert killed_again is not None
    assert killed != killed_again
    check_after(stats, pg_db, {"kill": 2}, {first, second})
    assert stats["errors"] == raised(prefix, "kill", 2)
    assert len(pg_db.backends()) <= 2  # the app's pool size
    assert served.logs.leaks() == []


# -- gunicorn, a subprocess --------------------------------------------------------------


def test_gunicorn_survives_every_fault(fault_db: FaultDB, tmp_path: Path) -> None:
    env = {
        load_app.ENV_URL: fault_db.url,
        load_app.ENV_APP_NAME: fault_db.app_name,
        load_app.ENV_SCHEMA: fault_db.schema,
        load_app.ENV_KEY_BASE: "1",
        load_app.ENV_POOL: "2,0",
    }
    faults = ["commit-fault", "close-fault"]
    if fault_db.kind == "postgres":
        faults.append("kill")
    server = load_run.Gunicorn(env, tmp_path, threads=1)
    try:
        target = load_run.Target("gunicorn", server.port, [], fault_db.app_name)
        # The Flask part is served where Flask is installed.
        prefixes = ["/w", "/f"] if "flask" in target.stats()["scoped"] else ["/w"]
        keys = set()
        for prefix in prefixes:
            for fault in faults:
                key, _ = fail_then_write(server.port, prefix, fault, fault_db)
                keys.add(key)
        stats = target.stats()
        expected = {FAULT_COUNTER[fault]: len(prefixes) for fault in faults}
        check_after(stats, fault_db, expected, keys)  # while the worker holds its pool
    finally:
        server.stop()
    assert server.leak_lines == []
    assert fault_db.backends() == []  # gone with the worker


# -- background jobs -----------------------------------------------------------------------


def test_jobs_survive_every_fault(fault_db: FaultDB) -> None:
    """A job whose commit or close raises, or whose backend is killed, fails
    its own future only; the next job on the same worker thread works."""
    tracker = load_app.Tracker()
    engine = fault_db.engine()
    factory = orm.sessionmaker(engine, class_=load_app.LoadSession, info={"tracker": tracker})
    Session: ScopedSession[load_app.LoadSession] = ScopedSession(factory)
    admin = (
        load_app.make_admin_engine(fault_db.url, fault_db.app_name + "-admin")
        if fault_db.pg
        else None
    )

    def job(n: int, fault: str | None) -> int:
        load_app.work_for(f"job-{n}")
        Session.add(load_app.Row(key=n, kind="job"))
        if fault == "commit":
            Session.info["fail_commit"] = True
        elif fault == "close":
            Session.info["fail_close"] = True
        elif fault == "kill":
            assert admin is not None
            Session.flush()
            pid = Session.scalar(sa.text("SELECT pg_backend_pid()"))
            with admin.connect() as conn:
                assert conn.scalar(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})
            Session.scalar(sa.text("SELECT 1"))  # raises: the connection is gone
        return threading.get_ident()

    faults = ["commit", "close"] + (["kill"] if admin else [])
    outcomes: list[tuple[str, BaseException | None, int | None]] = []
    try:
        with ScopedThreadPoolExecutor(Session, max_workers=1, commit=True) as pool:
            for n, fault in enumerate(faults, start=1):
                failed = pool.submit(job, n * 10, fault)
                ok = pool.submit(job, n * 10 + 1, None)
                outcomes.append((fault, failed.exception(timeout=WAIT), None))
                outcomes.append(("none", ok.exception(timeout=WAIT), ok.result(timeout=WAIT)))
        assert checkedout(engine) == 0
    finally:
        engine.dispose()
        if admin is not None:
            admin.dispose()

    errors = {fault: type(exc).__name__ for fault, exc, _ in outcomes if fault != "none"}
    assert errors == {
        "commit": "InjectedFault",
        "close": "InjectedFault",
        **({"kill": "OperationalError"} if admin else {}),
    }
    assert [exc for fault, exc, _ in outcomes if fault == "none"] == [None] * len(faults)
    assert len({ident for fault, _, ident in outcomes if fault == "none"}) == 1
    assert tracker.created == tracker.closed == 2 * len(faults)
    assert tracker.violations == 0, tracker.samples
    assert Session.stats() == (0, 2 * len(faults), 2 * len(faults), 0)
    # The close fault struck after a successful commit: that job's row stays.
    committed = {n * 10 + 1 for n in range(1, len(faults) + 1)} | {20}
    assert fault_db.keys() == {load_app.TAKEN, *committed}


def checkedout(engine: sa.Engine) -> int:
    return t.cast("sa.QueuePool", engine.pool).checkedout()


# -- known bugs --------------------------------------------------------------------------


class CloseRaises(orm.Session):
    """A real session whose close() does its work, then raises."""

    def close(self) -> None:
        super().close()
        raise load_app.InjectedFault("close() failed (injected)")


def two_databases(tmp_path: Path) -> tuple[sa.Engine, sa.Engine]:
    engines = []
    for name in ("one", "two"):
        engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
        load_app.LoadBase.metadata.create_all(engine)
        engines.append(engine)
    return engines[0], engines[1]


def rows(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.select(load_app.Row.key)))


def test_middleware_close_failure_after_commit_is_not_a_failed_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = two_databases(tmp_path)
    First: ScopedSession[orm.Session] = ScopedSession(orm.sessionmaker(one, class_=CloseRaises))
    Second: ScopedSession[orm.Session] = ScopedSession(orm.sessionmaker(two))

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        First.add(load_app.Row(key=1, kind="first"))
        Second.add(load_app.Row(key=2, kind="second"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"written"]

    wrapped = ScopedSessionMiddleware(app, First, Second, commit=True)
    with (
        caplog.at_level(logging.ERROR, logger="scoped_session"),
        load_run.werkzeug_server(wrapped, threaded=False) as port,
    ):
        status, _ = get(port, "/")
    try:
        assert status == 500  # the close failure propagates, as documented
        assert rows(one) == {1}  # the first session's commit went through
        # Only a commit failure rolls the later sessions back: this was a close.
        assert rows(two) == {2}
        messages = [r.getMessage() for r in caplog.records]
        assert not any("rolled back" in m for m in messages), messages
    finally:
        one.dispose()
        two.dispose()


def test_executor_close_failure_does_not_skip_later_commits(tmp_path: Path) -> None:
    one, two = two_databases(tmp_path)
    First: ScopedSession[orm.Session] = ScopedSession(orm.sessionmaker(one, class_=CloseRaises))
    Second: ScopedSession[orm.Session] = ScopedSession(orm.sessionmaker(two))

    def job() -> None:
        First.add(load_app.Row(key=1, kind="first"))
        Second.add(load_app.Row(key=2, kind="second"))

    try:
        with ScopedThreadPoolExecutor([First, Second], max_workers=1, commit=True) as pool:
            error = pool.submit(job).exception(timeout=WAIT)
        assert isinstance(error, load_app.InjectedFault)
        assert rows(one) == {1}
        assert rows(two) == {2}
    finally:
        one.dispose()
        two.dispose()
