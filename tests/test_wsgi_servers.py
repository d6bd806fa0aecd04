"""ScopedSessionMiddleware under real servers on 127.0.0.1: werkzeug's threaded
server, gunicorn's gthread worker (a subprocess) and waitress, on SQLite and
PostgreSQL.

Each run sends a bounded mix of requests from a pool of concurrent clients
(see wsgi_server_app.py for what each endpoint commits), waits until the server
has closed every response, then checks what the database holds: the pool has
nothing checked out, PostgreSQL has no connection idle in a transaction, and
the committed rows are exactly those of the requests that should commit.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import logging
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy is not installed: the servers run on real databases"
)

import psycopg
import sqlalchemy as sa
import wsgi_server_app
from helpers import (
    Base,
    Note,
    backends,
    drop_schema,
    get_and_leave,
    libpq_url,
    postgres_url,
    run_example,
)
from waitress import wasyncore
from waitress.server import TcpWSGIServer, create_server
from werkzeug.serving import WSGIRequestHandler, make_server

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

pytestmark = pytest.mark.server

TESTS = Path(__file__).parent
EXAMPLE = TESTS.parent / "examples" / "wsgi_app.py"

CLIENTS = 16
#: 1,000 requests per server and database.
MIX = {
    "plain": 380,
    "stream": 200,
    "file": 150,
    "fail": 90,
    "disconnect": 60,
    "fail-stream": 60,
    "commit-fail": 60,
}
#: What each kind commits, by note prefix, when it answered as expected.
COMMITS = {
    "plain": ["plain"],
    "stream": ["stream", "streamtail"],
    "file": ["file"],
    "fail": [],
    "disconnect": ["disc"],
    "fail-stream": ["failstream"],
    "commit-fail": [],
}
STATUS = {"fail": 500, "commit-fail": 500}
STREAM_BODY = len(wsgi_server_app.CHUNK) * 8 + len(b"end")
TIMEOUT = 30.0


class ServerDB(t.NamedTuple):
    kind: str
    url: str
    engine: sa.Engine
    app_name: str
    schema: str


@pytest.fixture(params=["sqlite", "postgres"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[ServerDB]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'server.db'}"
        engine = wsgi_server_app.make_engine(url)
        Base.metadata.create_all(engine)
        yield ServerDB("sqlite", url, engine, "", "")
        engine.dispose()
        return
    pg = postgres_url()
    if pg is None:
        pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
    tag = uuid.uuid4().hex[:12]
    app_name, schema = f"ss-server-{tag}", f"ss_{tag}"
    with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    engine = wsgi_server_app.make_engine(pg, app_name, schema)
    Base.metadata.create_all(engine)
    yield ServerDB("postgres", pg, engine, app_name, schema)
    engine.dispose()
    drop_schema(pg, schema)


@pytest.fixture
def payload(tmp_path: Path) -> str:
    path = tmp_path / "payload.bin"
    path.write_bytes(wsgi_server_app.FILE_PAYLOAD)
    return str(path)


# -- servers -------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextlib.contextmanager
def werkzeug_server(app: WSGIApplication) -> t.Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


@contextlib.contextmanager
def waitress_server(app: WSGIApplication) -> t.Iterator[int]:
    sockets: dict[int, t.Any] = {}  # the server's asyncore map, ours to close
    # A small output buffer: a task blocks (and learns that its client left)
    # after 1 MiB instead of spooling 16 MiB to a temporary file first.
    server = create_server(
        app, map=sockets, host="127.0.0.1", port=0, threads=8, outbuf_high_watermark=1 << 20
    )
    assert isinstance(server, TcpWSGIServer)  # one address: one plain server
    assert server.socket is not None
    port = int(server.socket.getsockname()[1])
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        yield port
    finally:
        # Tasks first (joins the worker threads), then every socket from inside
        # the loop's own thread; the loop returns once its map is empty.
        server.task_dispatcher.shutdown()
        trigger: t.Any = server.trigger  # typed as int by types-waitress
        trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
        thread.join(TIMEOUT)
        assert not thread.is_alive()


@contextlib.contextmanager
def gunicorn_server(db: ServerDB, payload: str, cwd: Path, log: list[str]) -> t.Iterator[int]:
    env = dict(os.environ)
    env.update(
        {
            wsgi_server_app.ENV_URL: db.url,
            wsgi_server_app.ENV_APP_NAME: db.app_name,
            wsgi_server_app.ENV_SCHEMA: db.schema,
            wsgi_server_app.ENV_PAYLOAD: payload,
        }
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class=gthread",
        "--workers=1",
        "--threads=8",
        "--bind=127.0.0.1:0",
        "--graceful-timeout=10",
        f"--pythonpath={TESTS}",
        "wsgi_server_app:make_app_from_env()",
    ]
    # Its own working directory: the package comes from the installation, not
    # from a checkout on sys.path.
    with run_gunicorn(command, cwd, env, log) as port:
        yield port


@contextlib.contextmanager
def run_gunicorn(
    command: list[str], cwd: Path, env: dict[str, str], log: list[str]
) -> t.Iterator[int]:
    """Run a gunicorn ``command`` bound to port 0 and yield the port it listens on;
    its stderr goes to ``log``. SIGTERM at the end, SIGKILL if it does not stop."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            lines.put(line)
        lines.put("")

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        port = None
        while port is None:
            try:
                line = lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail("gunicorn did not start:\n" + "".join(log))
            if not line:
                pytest.fail("gunicorn exited:\n" + "".join(log))
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
            drainer.join(TIMEOUT)
            assert not drainer.is_alive()
            assert proc.stderr is not None
            proc.stderr.close()


# -- clients -------------------------------------------------------------------------


class Outcome(t.NamedTuple):
    kind: str
    status: int
    size: int | None  # None: the connection broke before the body's end
    intact: bool  # the body is exactly what the endpoint sends


EXPECTED_BODY: dict[str, t.Callable[[bytes], bool]] = {
    "plain": lambda body: body == b"plain",
    "stream": lambda body: len(body) == STREAM_BODY and body.endswith(b"end"),
    "file": lambda body: body == wsgi_server_app.FILE_PAYLOAD,
}


def hit(port: int, kind: str, request_id: str) -> Outcome:
    if kind == "disconnect":
        return hit_and_leave(port, request_id)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"/{kind}?id={request_id}")
        response = conn.getresponse()
        try:
            body: bytes | None = response.read()
        except (http.client.IncompleteRead, ConnectionError):
            body = None
        finally:
            response.close()
    finally:
        conn.close()
    if body is None:
        return Outcome(kind, response.status, None, kind == "fail-stream")
    check = EXPECTED_BODY.get(kind)
    return Outcome(kind, response.status, len(body), check is None or check(body))


def hit_and_leave(port: int, request_id: str) -> Outcome:
    """Read the status and the start of the body, then leave with a reset (the
    unread rest makes the server's next write fail)."""
    status = get_and_leave(port, f"/disconnect?id={request_id}", 4096, TIMEOUT)
    return Outcome("disconnect", status, None, True)


def load(port: int, seed: int) -> list[Outcome]:
    plan = [kind for kind, count in MIX.items() for _ in range(count)]
    random.Random(seed).shuffle(plan)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(hit, port, kind, uuid.uuid4().hex) for kind in plan]
        return [future.result(timeout=TIMEOUT * 4) for future in futures]


def check_outcomes(outcomes: list[Outcome]) -> None:
    assert len(outcomes) == sum(MIX.values()) >= 1000
    wrong = [
        o
        for o in outcomes
        if o.status != STATUS.get(o.kind, 200)
        or not o.intact
        # A body that failed after its first chunk never arrives whole.
        or (o.kind == "fail-stream" and o.size is not None and o.size > len(wsgi_server_app.CHUNK))
    ]
    assert wrong == []


#: What the library logs when a session outlived its request: a unit ended by a
#: later request, a response collected unclosed, a thread's finalizer.
LEAK_SIGNS = ("was never closed", "garbage collected", "finalizer")


def check_library_log(messages: list[str]) -> None:
    """Only the expected failures: commits that failed on purpose, nothing leaked."""
    assert [m for m in messages if any(sign in m for sign in LEAK_SIGNS)] == []
    failed_commits = [m for m in messages if "Committing a session failed" in m]
    assert len(failed_commits) == MIX["commit-fail"]
    assert all("GET /commit-fail" in m for m in failed_commits)


def check_database(db: ServerDB) -> None:
    with db.engine.connect() as conn:
        texts = conn.execute(sa.select(Note.text)).scalars().all()
    committed = collections.Counter(text.rsplit("-", 1)[0] for text in texts)
    expected: collections.Counter[str] = collections.Counter()
    for kind, count in MIX.items():
        for prefix in COMMITS[kind]:
            expected[prefix] += count
    assert committed == expected
    if db.kind == "postgres":
        states = [state for _, state in backends(db.url, db.app_name)]
        assert [s for s in states if s.startswith("idle in transaction")] == []
        assert all(s == "idle" for s in states)


# -- the runs --------------------------------------------------------------------------


@pytest.mark.parametrize("serve", [werkzeug_server, waitress_server], ids=["werkzeug", "waitress"])
def test_in_process_server(
    serve: t.Callable[[WSGIApplication], t.ContextManager[int]],
    server_db: ServerDB,
    payload: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, inflight = wsgi_server_app.make_app(server_db.engine, payload)
    with caplog.at_level(logging.WARNING, logger="scoped_session"), serve(app) as port:
        outcomes = load(port, seed=1)
        assert inflight.wait_idle(TIMEOUT)  # every response closed by the server
        assert server_db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    check_outcomes(outcomes)
    check_database(server_db)
    check_library_log([r.getMessage() for r in caplog.records if r.name == "scoped_session"])


def test_gunicorn_gthread(server_db: ServerDB, payload: str, tmp_path: Path) -> None:
    log: list[str] = []
    with gunicorn_server(server_db, payload, tmp_path, log) as port:
        outcomes = load(port, seed=2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT * 2)
        try:
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert stats == {"idle": True, "checkedout": 0}
        check_database(server_db)  # while the worker still holds its pool
    check_outcomes(outcomes)
    # The worker's scoped_session logger has no handler: Python's last resort
    # writes its warnings and errors to stderr, one line per message.
    check_library_log([line for line in log if not line.startswith((" ", "Traceback"))])
    if server_db.kind == "postgres":
        server_db.engine.dispose()  # the test's own connection carries the same name
        assert backends(server_db.url, server_db.app_name) == []  # gone with the worker


# -- the example, as a script ------------------------------------------------------------


def test_the_example_serves_as_a_script(tmp_path: Path) -> None:
    with run_example(EXAMPLE, f"sqlite:///{tmp_path / 'ex.db'}", tmp_path, TIMEOUT) as run:
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=TIMEOUT)
        try:
            conn.request(
                "POST",
                "/notes",
                body="text=hello+there",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 303
            conn.request("GET", "/notes")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello there\n")
        finally:
            conn.close()
    assert run.returncode == 0
