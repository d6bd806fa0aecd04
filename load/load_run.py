"""The mixed load run: real servers, concurrent clients, rounds, and the checks
after each round. Used by test_load.py (one bounded run) and by
benchmarks/soak.py (the same load for hours).

Two servers serve :mod:`load_app` over 127.0.0.1 at once, on one PostgreSQL
schema: werkzeug's threaded server in this process (its background jobs run
here too) and gunicorn's gthread worker in a subprocess. The clients run as
threads of a third process; each keeps a connection (a client that leaves
mid-stream uses a throwaway one) and sends a weighted mix of every endpoint,
also the failing ones.

A round runs the clients for a while, then waits until each server is quiet
(every response closed, every job done) and checks everything at once: see
:func:`check_round`.
"""

from __future__ import annotations

import array
import collections
import contextlib
import http.client
import itertools
import json
import logging
import multiprocessing
import os
import queue
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import load_app
import psycopg
import sqlalchemy as sa
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

HERE = Path(__file__).resolve().parent
WAIT = 60.0  # seconds: the bound on every wait

#: Weights of the endpoints in the mix.
MIX = {
    "read": 22,
    "write": 20,
    "slow": 8,
    "stream": 10,
    "disconnect": 4,
    "raise": 6,
    "dup": 6,
    "commit-fault": 3,
    "close-fault": 3,
    "kill": 1,
    "enqueue": 17,
}
JOB_MIX = {"ok": 8, "raise": 1, "dup": 1}
FAILING = frozenset({"raise", "dup", "commit-fault", "close-fault", "kill"})
#: Server-side fault counters (load_app.Tracker.faults) that each failing
#: request bumps exactly once.
FAULT_OF = {"raise": "view", "commit-fault": "commit", "close-fault": "close", "kill": "kill"}
#: What the failing requests raise out of the app: injected failures, the
#: constraint violation, and the disconnect seen after a killed backend.
EXPECTED_ERRORS = frozenset({"InjectedFault", "IntegrityError", "OperationalError"})
STREAM_LENGTH = len(load_app.FILLER) * load_app.STREAM_FILLERS
#: Whether a streamed response whose client left commits what its view wrote:
#: ScopedSessionMiddleware commits before the status goes out; Flask commits a
#: streamed response only when its body has run to its end.
DISCONNECT_COMMITS = {"/w": True, "/f": False}
#: What the library logs when a session outlived its request or thread.
LEAK_SIGNS = ("was never closed", "garbage collected", "finalizer")
KEY_SPAN = 10**12  # each server's keys start at a multiple of this


# -- database --------------------------------------------------------------------------


def libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class LoadDB:
    """A schema of its own on PostgreSQL, its table, and server-side counts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tag = uuid.uuid4().hex[:10]
        self.schema = f"ss_load_{self.tag}"
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        self.engine = load_app.make_engine(url, self.app_name("check"), self.schema, (1, 1))
        load_app.create_tables(self.engine)

    def app_name(self, role: str) -> str:
        return f"ss-load-{self.tag}-{role}"

    def keys(self, low: int, high: int) -> set[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(load_app.Row.key).where(load_app.Row.key.between(low, high - 1))
            )
            return set(rows.scalars())

    def backends(self, app_name: str) -> list[str]:
        """The state of every backend named ``app_name``."""
        with psycopg.connect(libpq(self.url), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT coalesce(state, '') FROM pg_stat_activity WHERE application_name = %s",
                (app_name,),
            ).fetchall()
        return [str(state) for (state,) in rows]

    def drop(self) -> None:
        self.engine.dispose()
        with psycopg.connect(libpq(self.url), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


# -- servers ---------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    # Keep-alive and chunked bodies, set here rather than by make_server (which
    # would set it on werkzeug's own handler class, for every later server).
    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextlib.contextmanager
def werkzeug_server(app: WSGIApplication, *, threaded: bool = True) -> t.Iterator[int]:
    """werkzeug's server on 127.0.0.1 in a thread; threaded: a thread per
    connection, else every request on the serving thread."""
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, app, threaded=threaded, request_handler=QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        assert not thread.is_alive()


class Gunicorn:
    """A gunicorn gthread server in a subprocess; its stderr is read as it comes
    (a full pipe would stall the worker), scanned for leak signs, and its last
    lines kept for a failure message."""

    def __init__(self, env: dict[str, str], cwd: Path, threads: int) -> None:
        full_env = dict(os.environ)
        full_env.update(env)
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class=gthread",
            "--workers=1",
            f"--threads={threads}",
            "--keep-alive=300",  # clients keep their connections between requests
            "--bind=127.0.0.1:0",
            "--graceful-timeout=20",
            f"--pythonpath={HERE}",
            "load_app:make_app_from_env()",
        ]
        # Its own working directory: the package comes from the installation.
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.leak_lines: list[str] = []
        self._ports: queue.Queue[int | None] = queue.Queue()
        self._drainer = threading.Thread(target=self._drain)
        self._drainer.start()
        try:
            port = self._ports.get(timeout=WAIT)
        except queue.Empty:
            port = None
        if port is None:
            self.stop()
            raise RuntimeError("gunicorn did not start:\n" + "".join(self.tail))
        self.port = port

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line)
            if any(sign in line for sign in LEAK_SIGNS) and len(self.leak_lines) < 20:
                self.leak_lines.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                self._ports.put(int(found.group(1)))
        self._ports.put(None)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            self._drainer.join(WAIT)
            assert not self._drainer.is_alive()
            assert self.proc.stderr is not None
            self.proc.stderr.close()


class LogCounter(logging.Handler):
    """Counts log records by logger and first line, keeping no record: an
    in-process server under load logs thousands of expected failures."""

    def __init__(self) -> None:
        # Level 0, filtered in emit(): werkzeug adds a handler of its own to its
        # logger unless one at its level (INFO) is there.
        super().__init__()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        head = record.getMessage().partition("\n")[0]
        self.counts[(record.name, head[:160])] += 1

    def leaks(self) -> list[str]:
        return [head for (_, head) in self.counts if any(s in head for s in LEAK_SIGNS)]


@contextlib.contextmanager
def counted_logs(*names: str) -> t.Iterator[LogCounter]:
    """Route the named loggers to a LogCounter only, for the duration."""
    counter = LogCounter()
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(counter)
        logger.propagate = False
    try:
        yield counter
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(counter)
            logger.propagate = propagate


# -- clients ---------------------------------------------------------------------------


class Tally:
    """One client's (or, merged, one server's) outcomes."""

    def __init__(self) -> None:
        self.requests = 0
        self.committed = 0  # rows the responses said were committed
        self.statuses: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.keys = array.array("q")  # their keys (one round's)
        self.ok_jobs = array.array("q")  # keys of jobs submitted as "ok"
        self.job_kinds: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.problem_count = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 20:
            self.problems.append(text)

    def merge(self, other: Tally, *, keys: bool = True) -> None:
        """Add ``other``'s outcomes; without ``keys`` only their counts (a
        total over hours must not grow)."""
        self.requests += other.requests
        self.committed += other.committed
        self.statuses.update(other.statuses)
        if keys:
            self.keys.extend(other.keys)
            self.ok_jobs.extend(other.ok_jobs)
        self.job_kinds.update(other.job_kinds)
        self.problem_count += other.problem_count
        self.problems.extend(other.problems[: max(0, 20 - len(self.problems))])

    def count(self, kind: str) -> int:
        return sum(n for (_, k, _), n in self.statuses.items() if k == kind)


class Client:
    """One client: a kept connection to one server, requests one at a time."""

    def __init__(self, port: int, prefixes: list[str], seed: int) -> None:
        self.port = port
        self.prefixes = prefixes
        self.rng = random.Random(seed)
        self.tally = Tally()
        self._conn: http.client.HTTPConnection | None = None
        self._kinds = list(MIX)
        self._weights = list(MIX.values())

    def _get(self, path: str) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            self._conn.request("GET", path)
            response = self._conn.getresponse()
            body = response.read()
        except BaseException:
            self.close()
            raise
        return response.status, body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def one(self) -> None:
        """Send one request of the mix and record what came back."""
        prefix = self.rng.choice(self.prefixes)
        kind = self.rng.choices(self._kinds, self._weights)[0]
        path = f"{prefix}/{kind}"
        if kind == "enqueue":
            job = self.rng.choices(list(JOB_MIX), list(JOB_MIX.values()))[0]
            path += f"?job={job}"
        tally = self.tally
        tally.requests += 1
        try:
            if kind == "disconnect":
                status, body = self._leave_early(path)
            else:
                status, body = self._get(path)
        except (OSError, http.client.HTTPException) as exc:
            tally.problem(f"{path}: {exc!r}")
            return
        tally.statuses[(prefix, kind, status)] += 1
        expected = 500 if kind in FAILING else 200
        if status != expected:
            tally.problem(f"{path}: status {status}, expected {expected}")
            return
        if kind in FAILING or kind == "read":
            return
        try:
            self._record_keys(kind, path, body)
        except ValueError:
            tally.problem(f"{path}: unexpected body {body[:60]!r}")

    def _record_keys(self, kind: str, path: str, body: bytes) -> None:
        tally = self.tally
        if kind == "stream":
            first, filler, last = body.split(b"\n")
            if len(filler) != STREAM_LENGTH:
                raise ValueError("a stream body of the wrong length")
            tally.keys.extend((int(first), int(last)))
            tally.committed += 2
        elif kind == "enqueue":
            job = path.rpartition("=")[2]
            tally.job_kinds[job] += 1
            if job == "ok":
                tally.ok_jobs.append(int(body))
        elif kind == "disconnect":
            key = int(body)
            if DISCONNECT_COMMITS[path.partition("/disconnect")[0]]:
                tally.keys.append(key)
                tally.committed += 1
        else:
            tally.keys.append(int(body))
            tally.committed += 1

    def _leave_early(self, path: str) -> tuple[int, bytes]:
        """Read the status and the first line of a streamed body, then leave
        with a reset (the unread rest makes the server's next write fail)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.request("GET", path)
            response = conn.getresponse()
            line = response.readline().rstrip(b"\n")
            response.close()
        finally:
            conn.close()
        return response.status, line


# -- a round ---------------------------------------------------------------------------


class Memory(t.NamedTuple):
    """A server's memory, read when it is quiet (or its growth between two
    readings): resident kB, what its C allocator has handed out in kB (None
    where glibc cannot tell), and Python's heap blocks."""

    rss_kb: int
    heap_kb: int | None
    py_blocks: int

    def __sub__(self, other: object) -> Memory:
        if not isinstance(other, Memory):
            return NotImplemented
        heap = None
        if self.heap_kb is not None and other.heap_kb is not None:
            heap = self.heap_kb - other.heap_kb
        return Memory(self.rss_kb - other.rss_kb, heap, self.py_blocks - other.py_blocks)


class Target:
    """One server under load: where it listens, and what it reported."""

    def __init__(self, name: str, port: int, prefixes: list[str], app_name: str) -> None:
        self.name = name
        self.port = port
        self.prefixes = prefixes
        self.app_name = app_name
        #: /_stats after the last round, without what grows with the run.
        self.last: dict[str, t.Any] | None = None
        self.key_low = 0  # the first key of the current round

    def stats(self) -> dict[str, t.Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT * 3)
        try:
            conn.request("GET", "/_stats")
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{self.name}: /_stats answered {response.status}")
        stats: dict[str, t.Any] = json.loads(data)
        return stats


#: A server as the clients see it: name, port, mount prefixes.
Address = tuple[str, int, list[str]]


def run_round(
    targets: list[Address], *, clients: int, seconds: float, max_requests: int, seed: int
) -> dict[str, Tally]:
    """Run ``clients`` clients (spread over the targets) until ``seconds`` have
    passed or ``max_requests`` were sent; return each target's tally.

    Meant to run in a process of its own (see LoadRun), so that the clients'
    threads and buffers do not count in an in-process server's memory.
    """
    deadline = time.monotonic() + seconds
    sent = itertools.count()
    errors: list[BaseException] = []
    per_client: list[tuple[str, Client]] = []
    for number in range(clients):
        name, port, prefixes = targets[number % len(targets)]
        per_client.append((name, Client(port, prefixes, seed * 1000 + number)))

    def run(client: Client) -> None:
        try:
            while time.monotonic() < deadline and next(sent) < max_requests:
                client.one()
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(client,)) for _, client in per_client]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + WAIT * 2)
        assert not thread.is_alive()
    if errors:
        raise errors[0]
    tallies = {name: Tally() for name, _, _ in targets}
    for name, client in per_client:
        tallies[name].merge(client.tally)
    return tallies


def check_round(
    db: LoadDB,
    target: Target,
    tally: Tally,
    stats: dict[str, t.Any],
    previous: dict[str, t.Any] | None,
    pool_size: int,
) -> list[str]:
    """Everything that must hold once a server is quiet after a round; returns
    what did not (empty: all is well)."""
    problems = [f"client: {p}" for p in tally.problems]
    if tally.problem_count > len(tally.problems):
        problems.append(f"client: {tally.problem_count - len(tally.problems)} more problems")

    def expect(what: str, got: object, wanted: object) -> None:
        if got != wanted:
            problems.append(f"{what}: {got!r}, expected {wanted!r}")

    expect("quiet after the round", stats["idle"], True)
    expect("pool connections checked out", stats["checkedout"], 0)
    sessions = stats["sessions"]
    expect("sessions made but not closed", sessions["created"] - sessions["closed"], 0)
    expect("sessions still alive", sessions["alive"], 0)
    expect("owner violations", stats["violations"], 0)
    if stats["violation_samples"]:
        problems.extend(f"violation: {v}" for v in stats["violation_samples"])
    for name, counts in stats["scoped"].items():
        expect(f"{name}: sessions live", counts["live"], 0)
        expect(f"{name}: sessions made but not removed", counts["created"] - counts["removed"], 0)
        expect(f"{name}: sessions reaped by a finalizer", counts["reaped"], 0)
    expect("jobs that ended unexpectedly", stats["jobs"]["unexpected"], [])
    unexpected = set(stats["errors"]) - EXPECTED_ERRORS
    expect("exceptions of unexpected types reached the server", sorted(unexpected), [])
    if previous is not None:
        expect("server pid (a restarted worker?)", stats["pid"], previous["pid"])

    # Each failing request bumped its fault counter once: none was missed (a
    # kill whose connection was not invalidated does not count).
    before = previous["faults"] if previous else {}
    for kind, fault in FAULT_OF.items():
        injected = stats["faults"].get(fault, 0) - before.get(fault, 0)
        expect(f"faults '{fault}' injected by {kind}", injected, tally.count(kind))

    # Exactly the rows of the successful writes and jobs, no more, no fewer.
    ok_jobs = set(stats["jobs"]["ok"])
    expect("jobs that committed vs. jobs submitted to commit", ok_jobs == set(tally.ok_jobs), True)
    wanted = set(tally.keys) | ok_jobs
    found = db.keys(target.key_low, stats["next_key"])
    if found != wanted:
        problems.append(
            f"rows: {len(found - wanted)} unexpected (e.g. {sorted(found - wanted)[:5]}),"
            f" {len(wanted - found)} missing (e.g. {sorted(wanted - found)[:5]})"
        )

    states = db.backends(target.app_name)
    if len(states) > pool_size:
        problems.append(f"{len(states)} backends open, more than the pool size {pool_size}")
    expect("backends not idle", [s for s in states if s != "idle"], [])
    return problems


# -- the whole run ---------------------------------------------------------------------


class LoadRun:
    """Both servers on one schema, ready for rounds.

    :param url: the PostgreSQL URL.
    :param cwd: gunicorn's working directory.
    :param pool: ``(pool_size, max_overflow)`` of each server's engine.
    :param gunicorn_threads: gthread threads of the one gunicorn worker.
    """

    def __init__(
        self,
        url: str,
        cwd: Path,
        *,
        pool: tuple[int, int] = (6, 6),
        gunicorn_threads: int = 12,
    ) -> None:
        self.url = url
        self.cwd = cwd
        self.pool = pool
        self.gunicorn_threads = gunicorn_threads
        self.targets: list[Target] = []
        self.round_number = 0
        self.load_seconds = 0.0  # spent in rounds, checks aside
        self.totals: dict[str, Tally] = {}
        self.jobs_committed = 0
        #: Each server's memory after the first round (the warm-up) and after
        #: the last one, both taken when quiet.
        self.memory_baseline: dict[str, Memory] = {}
        self.memory_last: dict[str, Memory] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LoadRun:
        stack = self._stack
        try:
            self.db = db = LoadDB(self.url)
            stack.callback(db.drop)
            # In-process: werkzeug's threaded server, with jobs in this process.
            self.logs = stack.enter_context(counted_logs("scoped_session", "werkzeug", "load_app"))
            engine = load_app.make_engine(self.url, db.app_name("wz"), db.schema, self.pool)
            stack.callback(engine.dispose)
            admin = load_app.make_admin_engine(self.url, db.app_name("wz-admin"))
            stack.callback(admin.dispose)
            self.app = load_app.make_app(engine, key_base=1 * KEY_SPAN, admin_engine=admin)
            stack.callback(self.app.close)
            port = stack.enter_context(werkzeug_server(self.app))
            self.targets.append(Target("werkzeug", port, self.app.prefixes, db.app_name("wz")))
            # A subprocess: gunicorn's gthread worker.
            env = {
                load_app.ENV_URL: self.url,
                load_app.ENV_APP_NAME: db.app_name("gu"),
                load_app.ENV_SCHEMA: db.schema,
                load_app.ENV_KEY_BASE: str(2 * KEY_SPAN),
                load_app.ENV_POOL: f"{self.pool[0]},{self.pool[1]}",
            }
            self.gunicorn = Gunicorn(env, self.cwd, self.gunicorn_threads)
            stack.callback(self.gunicorn.stop)
            self.targets.append(
                Target("gunicorn", self.gunicorn.port, self.app.prefixes, db.app_name("gu"))
            )
            # The clients run in a process of their own, made once ("spawn":
            # this process has threads, which fork must not copy).
            self._clients = stack.enter_context(
                ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            )
            for target in self.targets:
                self.totals[target.name] = Tally()
                target.key_low = target.stats()["next_key"]
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def round(self, *, clients: int, seconds: float, max_requests: int) -> list[str]:
        """One round; returns its problems."""
        self.round_number += 1
        started = time.monotonic()
        future = self._clients.submit(
            run_round,
            [(target.name, target.port, target.prefixes) for target in self.targets],
            clients=clients,
            seconds=seconds,
            max_requests=max_requests,
            seed=self.round_number,
        )
        tallies = future.result(timeout=seconds + WAIT * 3)
        self.load_seconds += time.monotonic() - started
        problems: list[str] = []
        for target in self.targets:
            stats = target.stats()
            previous = target.last
            found = check_round(
                self.db, target, tallies[target.name], stats, previous, self.pool[0]
            )
            problems.extend(f"{target.name}: {p}" for p in found)
            self.jobs_committed += len(stats["jobs"]["ok"])
            stats["jobs"]["ok"] = len(stats["jobs"]["ok"])
            stats["request_threads"] = len(stats["request_threads"])
            target.last = stats
            target.key_low = stats["next_key"]
            self.totals[target.name].merge(tallies[target.name], keys=False)
            memory = Memory(stats["rss_kb"], stats["heap_kb"], stats["py_blocks"])
            self.memory_last[target.name] = memory
            self.memory_baseline.setdefault(target.name, memory)
        problems.extend(f"werkzeug: log: {line}" for line in self.logs.leaks())
        problems.extend(f"gunicorn: log: {line.strip()}" for line in self.gunicorn.leak_lines)
        return problems

    def requests(self) -> int:
        return sum(tally.requests for tally in self.totals.values())

    def memory_growth(self) -> dict[str, Memory]:
        """Each server's growth since the first round (the warm-up)."""
        return {name: self.memory_last[name] - base for name, base in self.memory_baseline.items()}

    def finish(self) -> list[str]:
        """Stop gunicorn and check that its backends went away with it."""
        self.gunicorn.stop()
        left = self.db.backends(self.db.app_name("gu"))
        return [f"gunicorn: {len(left)} backends left after it stopped"] if left else []

    def figures(self, clients: int) -> str:
        """The run so far, in a few lines."""
        lines = []
        total = Tally()
        for tally in self.totals.values():
            total.merge(tally, keys=False)
        elapsed = self.load_seconds
        faults: collections.Counter[str] = collections.Counter()
        for target in self.targets:
            if target.last:
                faults.update(target.last["faults"])
        rows = total.committed + self.jobs_committed
        lines.append(
            f"{total.requests} requests from {clients} clients in {elapsed:.0f} s"
            f" ({total.requests / max(elapsed, 1e-9):.0f}/s), {self.round_number} rounds,"
            f" servers: {', '.join(target.name for target in self.targets)}"
        )
        lines.append(
            "faults injected: "
            f"commit() raising {faults['commit']}, close() raising {faults['close']},"
            f" backends killed {faults['kill']}, views raising {faults['view']},"
            f" constraint violations {total.count('dup') + total.job_kinds['dup']},"
            f" client disconnects {total.count('disconnect')},"
            f" jobs raising {total.job_kinds['raise']}"
        )
        last = [target.last for target in self.targets if target.last]
        sessions = sum(stats["sessions"]["created"] for stats in last)
        violations = sum(stats["violations"] for stats in last)
        checked = sum(stats["checkedout"] for stats in last)
        lines.append(
            f"rows committed and found exactly: {rows}; sessions: {sessions};"
            f" owner violations: {violations}; connections checked out after: {checked}"
        )
        states = {t.name: self.db.backends(t.app_name) for t in self.targets}
        lines.append(
            "backends after: "
            + ", ".join(
                f"{name} {len(s)} (pool size {self.pool[0]}),"
                f" idle in transaction {sum(x.startswith('idle in') for x in s)}"
                for name, s in states.items()
            )
        )
        memory = []
        for name, before in self.memory_baseline.items():
            now = self.memory_last[name]
            growth = now - before
            heap = "n/a" if growth.heap_kb is None else f"{growth.heap_kb / 1024:+.2f} MiB"
            memory.append(
                f"{name} resident {before.rss_kb / 1024:.1f} -> {now.rss_kb / 1024:.1f} MiB"
                f" ({growth.rss_kb / 1024:+.1f}), C heap in use {heap},"
                f" Python heap blocks {growth.py_blocks:+d}"
            )
        lines.append("memory after warm-up -> now: " + "; ".join(memory))
        return "\n".join(lines)
