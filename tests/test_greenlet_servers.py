"""Sessions under a real ``gunicorn -k gevent`` on PostgreSQL, each greenlet its own.

Three integrations (greenlet_server_app.py): ``ScopedSessionMiddleware`` with the
thread scope and with ``scope="context"``, and ``FlaskScopedSession``; each with the
package imported after the worker monkey-patched (gunicorn imports the app in the
worker), and before it: by a config file that imports the package and makes the app
in the arbiter (greenlet_gunicorn_conf.py), or by ``--preload``.

The driver is psycopg2 with psycogreen's wait callback: it yields to the hub
whatever was imported first. psycopg 3 also yields under gevent, but only when it
is imported after the patching: it picks its wait function at import, and a C wait
picked before the patching (by a config file or ``--preload``, exactly the set-ups
here) blocks the whole worker while a query runs (six greenlets each in
``pg_sleep(0.5)``: 3.07 s with psycopg 3 imported first, 0.53 s with psycogreen;
see docs/greenlets.md).

Two workers with many greenlets each get a bounded mix of requests from concurrent
clients: plain ones, streamed bodies with a query after every chunk, and views that
raise. Then each worker reports (``/stats``, reached until both answered) and the
test checks:

- every request answered as its kind does, and each worker had more than one request,
  query and session in flight at once (so that greenlets really ran side by side,
  and psycopg2 yielded while it waited);
- no request got a session that another request had had, no session changed within
  a request, and no session was in flight for two requests at once;
- the table holds exactly the rows of the requests that should commit;
- each worker's pool has nothing checked out, and PostgreSQL has no connection of
  the app idle in a transaction;
- the thread scope made before the patching moved to the patched ``threading.local``
  with one warning in each worker, and no other set-up warned; nothing leaked.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.client
import json
import os
import random
import sys
import time
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gevent", reason="gevent is not installed")
pytest.importorskip("psycogreen", reason="psycogreen is not installed")
pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed")

import greenlet_server_app as gl_app
import sqlalchemy as sa
from helpers import Base, Note, backends, drop_schema, make_postgres_engine
from test_wsgi_servers import LEAK_SIGNS, Outcome, hit, run_gunicorn

pytestmark = [pytest.mark.server, pytest.mark.postgres]

TESTS = Path(__file__).parent
CONFIG = TESTS / "greenlet_gunicorn_conf.py"
WORKERS = 2
CLIENTS = 32
#: 300 requests per run, to the paths (and bodies) that test_wsgi_servers.hit knows.
MIX = {"plain": 150, "stream": 90, "fail": 60}
#: The notes each kind commits when it answered as expected.
COMMITS = {"plain": ["plain"], "stream": ["stream", "streamtail"], "fail": []}
STATUS = {"plain": 200, "stream": 200, "fail": 500}
MOVED = "threading.local was replaced"
TIMEOUT = 30.0
#: The most /stats requests sent to reach every worker.
STATS_TRIES = 200


class GreenletDB(t.NamedTuple):
    url: str
    engine: sa.Engine  # the test's own (psycopg 3): counts rows
    schema: str
    app_name: str  # the server's backends


@pytest.fixture
def gl_db(pg_url: str) -> t.Iterator[GreenletDB]:
    engine, app_name, schema = make_postgres_engine(pg_url)
    Base.metadata.create_all(engine)
    yield GreenletDB(pg_url, engine, schema, f"{app_name}-gevent")
    engine.dispose()
    drop_schema(pg_url, schema)


@contextlib.contextmanager
def gevent_gunicorn(
    db: GreenletDB, kind: str, order: str, cwd: Path, log: list[str]
) -> t.Iterator[int]:
    """gunicorn -k gevent with two workers serving ``kind``; ``order`` says where
    the package is first imported: ``after`` (by the worker, patched), ``config``
    (by the config file, in the arbiter) or ``preload``."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(TESTS),
            "SS_GL_EARLY": "1" if order == "config" else "",
            gl_app.ENV_URL: db.url,
            gl_app.ENV_APP_NAME: db.app_name,
            gl_app.ENV_SCHEMA: db.schema,
            gl_app.ENV_KIND: kind,
            "SS_GL_READY_DIR": str(cwd),
        }
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class=gevent",
        f"--workers={WORKERS}",
        "--worker-connections=200",
        "--bind=127.0.0.1:0",
        "--graceful-timeout=10",
        f"--config={CONFIG}",
        *(["--preload"] if order == "preload" else []),
        "greenlet_server_app:app_from_env()",
    ]
    # Its own working directory: the package comes from the installation.
    with run_gunicorn(command, cwd, env, log) as port:
        # gunicorn listens before its workers have loaded the app: the first one
        # up would take the whole load, and the other could not be checked.
        deadline = time.monotonic() + TIMEOUT
        while len(list(cwd.glob("ready-*"))) < WORKERS:
            if time.monotonic() > deadline:
                pytest.fail(f"not all {WORKERS} workers got ready:\n" + "".join(log))
            time.sleep(0.05)
        yield port


def load(port: int, seed: int) -> dict[str, Outcome]:
    """The mix from CLIENTS concurrent clients: each request's outcome by its id."""
    plan = [kind for kind, count in MIX.items() for _ in range(count)]
    random.Random(seed).shuffle(plan)
    ids = [uuid.uuid4().hex for _ in plan]
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(hit, port, kind, rid) for kind, rid in zip(plan, ids, strict=True)]
        # One bound for the whole run: a worker that hangs (two greenlets on one
        # session's connection) fails it once, not once for each request.
        _, pending = concurrent.futures.wait(futures, timeout=TIMEOUT * 2)
        if pending:
            pool.shutdown(cancel_futures=True)
            pytest.fail(f"{len(pending)} of {len(plan)} requests unanswered after {TIMEOUT * 2} s")
        return {rid: f.result() for rid, f in zip(ids, futures, strict=True)}


def worker_stats(port: int) -> dict[int, dict[str, t.Any]]:
    """Each worker's report: /stats, on a new connection each time, until every
    worker answered."""
    found: dict[int, dict[str, t.Any]] = {}
    for _ in range(STATS_TRIES):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT * 2)
        try:
            conn.request("GET", "/stats")
            response = conn.getresponse()
            assert response.status == 200
            stats = json.loads(response.read())
        finally:
            conn.close()
        found.setdefault(stats["pid"], stats)
        if len(found) == WORKERS:
            return found
    pytest.fail(f"only {len(found)} of {WORKERS} workers answered {STATS_TRIES} requests")


def notes(db: GreenletDB) -> collections.Counter[str]:
    with db.engine.connect() as conn:
        return collections.Counter(conn.execute(sa.select(Note.text)).scalars())


@pytest.mark.parametrize("order", ["after", "config", "preload"])
@pytest.mark.parametrize("kind", gl_app.KINDS)
def test_gunicorn_gevent(kind: str, order: str, gl_db: GreenletDB, tmp_path: Path) -> None:
    if kind == "flask":
        pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
    log: list[str] = []
    with gevent_gunicorn(gl_db, kind, order, tmp_path, log) as port:
        outcomes = load(port, seed=len(kind) + len(order))
        stats = worker_stats(port)
        # While the workers still hold their pools.
        states = [state for _, state in backends(gl_db.url, gl_db.app_name)]
        rows = notes(gl_db)

    wrong = [o for o in outcomes.values() if o.status != STATUS[o.kind] or not o.intact]
    assert wrong == []

    records: dict[str, list[int | None]] = {}
    for pid, report in stats.items():
        assert report["imported_patched"] is (order == "after"), pid
        assert report["threading_patched"] is True
        assert report["idle"] is True
        assert report["checkedout"] == 0
        # Greenlets side by side in each worker, each with a session of its own,
        # and queries that overlapped (psycopg2 yields while it waits).
        assert report["max_inflight"] > 1
        assert report["max_sessions"] > 1
        assert report["max_in_query"] > 1
        assert report["problems"] == []
        assert report["overlaps"] == []
        assert not records.keys() & report["records"].keys()
        records.update(report["records"])
    # Every request was seen once, with one session from its start to its end.
    assert records.keys() == outcomes.keys()
    assert [rid for rid, (start, end) in records.items() if start != end] == []

    expected = collections.Counter(
        f"{prefix}-{rid}" for rid, o in outcomes.items() for prefix in COMMITS[o.kind]
    )
    assert rows == expected
    assert sum(rows.values()) == MIX["plain"] + 2 * MIX["stream"]

    assert [s for s in states if s.startswith("idle in transaction")] == []
    assert all(s == "idle" for s in states), states

    messages = [line for line in log if not line.startswith((" ", "Traceback"))]
    assert [m for m in messages if any(sign in m for sign in LEAK_SIGNS)] == []
    assert [m for m in log if "Exception ignored" in m] == []
    moved = [m for m in messages if MOVED in m]
    assert len(moved) == (WORKERS if kind == "thread" and order != "after" else 0), moved
