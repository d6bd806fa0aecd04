"""Celery on real brokers: ``celery worker`` subprocesses (prefork and threads
pools) on Redis and on RabbitMQ, writing to PostgreSQL, under concurrent
producers, with tasks that raise, retry, fail at their commit, exceed a soft
time limit, and a pool process killed (SIGKILL) mid-task.

Afterwards every task's state is checked against its row, and the server's
connections against the processes that hold them.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip("celery", reason="celery is not installed (extra 'celery')")
pytest.importorskip("redis", reason="redis is not installed (test dependency group)")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed: the tasks write rows")

import psycopg
import redis
import sqlalchemy as sa
from celery import Celery  # type: ignore[import-untyped]
from helpers import libpq_url
from queue_common import REDIS_URL, Base, Item, RunLog, make_engine
from sqlalchemy.orm import sessionmaker

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

TESTS = Path(__file__).resolve().parent
WAIT = 180  # seconds: the bound on any one wait of a run
BROKERS = {
    "redis": "redis://127.0.0.1:6379/7",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
#: Tasks per run, by kind; a run on a prefork pool adds "slow" and "victim".
#: Four runs make 2,072 tasks.
PLAN = {"ok": 480, "taken": 10, "boom": 10, "flaky": 10, "commit_retry": 6}
PREFORK_ONLY = {"slow": 3, "victim": 1}
#: What each kind ends as, and whether its key's row exists then.
OUTCOME = {
    "ok": ("SUCCESS", True),
    "taken": ("FAILURE", False),
    "boom": ("FAILURE", False),
    "flaky": ("SUCCESS", True),
    "commit_retry": ("SUCCESS", True),
    "slow": ("FAILURE", False),
    "victim": ("SUCCESS", True),
}
PRODUCERS = 4
CHILDREN = 2  # prefork processes
THREADS = 4  # threads pool
POOL_SIZE = {"prefork": 1, "threads": 3}  # each process's engine pool (no overflow)


class Setup(t.NamedTuple):
    tag: str
    schema: str
    url: str  # PostgreSQL, as the workers' engine takes it


@pytest.fixture
def setup(pg_url: str) -> t.Iterator[Setup]:
    tag = f"sscel-{uuid.uuid4().hex[:10]}"
    schema = tag.replace("-", "_")
    url = sa.make_url(pg_url).set(drivername="postgresql+psycopg").render_as_string(False)
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    engine = make_engine(url, schema, f"{tag}-setup", 1)
    Base.metadata.create_all(engine)
    with sessionmaker(engine).begin() as session:
        session.add(Item(key="taken"))
    engine.dispose()
    yield Setup(tag, schema, url)
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{tag}:*",):
        keys = list(client.scan_iter(pattern))
        if keys:
            client.delete(*keys)
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def server_connections(url: str, tag: str) -> list[tuple[int, str, str]]:
    """(backend pid, application_name, state) of the run's server backends;
    a worker's application_name is ``{tag}-{os pid}``."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name, coalesce(state, '') FROM pg_stat_activity"
            " WHERE application_name LIKE %s AND application_name NOT LIKE %s",
            (f"{tag}-%", f"{tag}-setup%"),
        ).fetchall()
    return [(int(pid), str(name), str(state)) for pid, name, state in rows]


class Sampler(threading.Thread):
    """Watches the server while the run goes: the most connections any one
    process held at once. Samples, not timing: a count above the pool size in
    any sample is a failure."""

    def __init__(self, url: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.url, self.tag = url, tag
        self.most: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            per_process = collections.Counter(
                name for _, name, _ in server_connections(self.url, self.tag)
            )
            for name, count in per_process.items():
                self.most[name] = max(self.most[name], count)
            self.samples += 1


def plan(pool: str) -> list[tuple[str, str]]:
    kinds = dict(PLAN, **(PREFORK_ONLY if pool == "prefork" else {}))
    tasks = [(kind, f"{kind}-{n}") for kind, count in kinds.items() for n in range(count)]
    random.Random(7).shuffle(tasks)
    return tasks


def produce(app: Celery, tasks: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Send the tasks from PRODUCERS threads at once; task id -> (kind, key)."""
    sent: dict[str, tuple[str, str]] = {}
    lock = threading.Lock()
    start = threading.Barrier(PRODUCERS)
    errors: list[BaseException] = []

    def producer(share: list[tuple[str, str]]) -> None:
        try:
            start.wait(WAIT)
            for kind, key in share:
                result = app.send_task(kind, args=[key])
                with lock:
                    sent[result.id] = (kind, key)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=producer, args=(tasks[n::PRODUCERS],)) for n in range(PRODUCERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert not errors, errors
    return sent


def kill_the_victim(client: redis.Redis, tag: str, worker: subprocess.Popen[str]) -> int:
    """SIGKILL the pool process running the victim's first run, once it is
    waiting mid-transaction; returns its pid."""
    key = f"{tag}:victim-pid"
    for _ in range(WAIT * 10):
        raw = client.get(key)
        if raw is not None:
            pid = int(t.cast("bytes", raw))
            os.kill(pid, signal.SIGKILL)
            return pid
        assert worker.poll() is None, "the worker exited"
        threading.Event().wait(0.1)
    raise AssertionError("the victim task never started")


def stop(worker: subprocess.Popen[str], log_file: Path) -> str:
    """Warm shutdown (SIGTERM), bounded; returns the worker's output."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=WAIT)
        out = log_file.read_text()
        raise AssertionError(f"the worker did not stop on SIGTERM:\n{out}") from None
    return log_file.read_text()


def wait_until_gone(url: str, tag: str, names: set[str]) -> list[tuple[int, str, str]]:
    """The run's backends once those of the processes ``names`` are gone: the
    server ends a backend when it reads its closed socket (bounded wait)."""
    for _ in range(200):
        left = server_connections(url, tag)
        if not any(name in names for _, name, _ in left):
            return left
        threading.Event().wait(0.1)
    return server_connections(url, tag)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_real_celery_worker(setup: Setup, broker: str, pool: str, tmp_path: Path) -> None:
    tag = setup.tag
    broker_url = BROKERS[broker]
    client = redis.Redis.from_url(REDIS_URL)
    environ = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        QUEUE_DB_URL=setup.url,
        QUEUE_SCHEMA=setup.schema,
        QUEUE_TAG=tag,
        QUEUE_REDIS_URL=REDIS_URL,
        QUEUE_BROKER_URL=broker_url,
        QUEUE_POOL_SIZE=str(POOL_SIZE[pool]),
    )
    concurrency = CHILDREN if pool == "prefork" else THREADS
    # A file, not a pipe: a pipe nobody reads until the end fills up with the
    # failing tasks' tracebacks, and the pool processes block writing to it.
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as out:  # the worker writes to its own copy
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "queue_celery_app",
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=WARNING",
                f"--hostname={tag}@%h",
            ],
            cwd=TESTS,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    producer_app = Celery("producer", set_as_current=False)
    producer_app.conf.update(
        broker_url=broker_url,
        result_backend=REDIS_URL,
        task_default_queue=tag,
        broker_connection_retry_on_startup=True,
    )
    sampler = Sampler(setup.url, tag)
    sampler.start()
    output = ""
    sent: dict[str, tuple[str, str]] = {}
    try:
        tasks = plan(pool)
        sent = produce(producer_app, tasks)
        assert len(sent) == len(tasks)
        killed = kill_the_victim(client, tag, worker) if pool == "prefork" else None
        states: dict[str, str] = {}
        for task_id in sent:
            result = producer_app.AsyncResult(task_id)
            result.get(timeout=WAIT, propagate=False)
            states[task_id] = result.state
        # All done, the worker idle and alive: nobody is left in a transaction.
        victim = {f"{tag}-{killed}"} if killed else set()
        live = wait_until_gone(setup.url, tag, victim)
    finally:
        sampler.stop.set()
        sampler.join(WAIT)
        output = stop(worker, log_file)
        with producer_app.connection_for_write() as conn:
            if broker == "rabbitmq":
                conn.default_channel.queue_delete(tag)
        for task_id in sent:
            producer_app.AsyncResult(task_id).forget()
    assert not sampler.is_alive()
    assert worker.returncode == 0, output

    # Every task ended as its kind should, and its row says the same.
    engine = make_engine(setup.url, setup.schema, f"{tag}-setup", 1)
    try:
        with engine.connect() as conn:
            keys = set(conn.execute(sa.select(Item.key)).scalars())
    finally:
        engine.dispose()
    expected_keys = {"taken"}
    for task_id, (kind, key) in sent.items():
        state, has_row = OUTCOME[kind]
        assert states[task_id] == state, (kind, key, states[task_id], output[-3000:])
        assert (key in keys) == has_row, (kind, key)
        if has_row:
            expected_keys.add(key)
    assert keys == expected_keys  # nothing more: not a retried or killed attempt's

    runs = RunLog(REDIS_URL, tag).runs()
    attempts = collections.Counter(r["name"] for r in runs)
    kinds = collections.Counter(kind for kind, _ in sent.values())
    retried = kinds["flaky"] + kinds["commit_retry"] + kinds["victim"]
    assert sum(attempts.values()) == len(sent) + retried
    # A session per task run: no token seen twice, none made before the run.
    assert len({r["token"] for r in runs}) == len(runs)
    assert not any(r["reused"] for r in runs)
    # No server connection used by two processes; each process within its
    # pool, in its runs and in every sample of the server.
    processes_of: dict[int, set[int]] = collections.defaultdict(set)
    backends_of: dict[int, set[int]] = collections.defaultdict(set)
    for r in runs:
        processes_of[r["backend"]].add(r["pid"])
        backends_of[r["pid"]].add(r["backend"])
    assert all(len(pids) == 1 for pids in processes_of.values())
    assert max(len(b) for b in backends_of.values()) <= POOL_SIZE[pool]
    assert sampler.samples > 0
    assert max(sampler.most.values()) <= POOL_SIZE[pool], sampler.most
    worker_pids = set(backends_of)
    if pool == "prefork":
        # The victim's first run was in the killed child; it was redelivered
        # and ran again in another one.
        victim_runs = sorted((r["attempt"], r["pid"]) for r in runs if r["name"] == "victim")
        assert [attempt for attempt, _ in victim_runs] == [0, 1]
        assert victim_runs[0][1] == killed != victim_runs[1][1]
        assert worker.pid not in worker_pids  # the main process ran no task
    else:
        assert worker_pids == {worker.pid}
    # The main process's warm-up connection is alive; with prefork, never a task's.
    main = {pid for pid, name, _ in live if name == f"{tag}-{worker.pid}"}
    assert main
    if pool == "prefork":
        assert not main & set(processes_of)
    assert [state for _, _, state in live if state.startswith("idle in transaction")] == []
    assert not any(name in victim for _, name, _ in live)
    # The worker has stopped: its connections went with it.
    assert wait_until_gone(setup.url, tag, {name for _, name, _ in live}) == []
