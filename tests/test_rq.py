"""RQ wiring: a unit of work per job, in process and under a real ``rq worker``
on Redis and PostgreSQL (the forking worker, SimpleWorker and SpawnWorker)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip("rq", reason="rq is not installed (test dependency group)")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed: the jobs write rows")

import psycopg
import redis
import sqlalchemy as sa
from fakes import TrivialSession
from helpers import Note, libpq_url
from queue_common import REDIS_URL, Base, Item, RunLog, make_engine
from rq import Queue, Retry
from rq.job import Job, JobStatus
from sqlalchemy.orm import Session as SASession
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession, ScopedSessionError
from scoped_session.rq import ScopedJob

TESTS = Path(__file__).resolve().parent
WAIT = 120  # seconds: the bound on a worker's whole run


# -- in process: the job class alone ---------------------------------------------


def add_note(Session: ScopedSession[SASession], text: str) -> str:
    Session.add(Note(text=text))  # inserted by the commit, after the return
    return text


def add_and_fail(Session: ScopedSession[SASession], text: str) -> None:
    Session.add(Note(text=text))
    Session.flush()
    raise ValueError("the job failed")


def add_and_retry(Session: ScopedSession[SASession], text: str) -> Retry:
    Session.add(Note(text=text))
    Session.flush()
    return Retry(max=1)


def job_class(Session: ScopedSession[SASession], commit: bool) -> type[ScopedJob]:
    class SqliteJob(ScopedJob):
        scoped_sessions = Session

    SqliteJob.commit = commit
    return SqliteJob


def make_job(cls: type[ScopedJob], func: t.Callable[..., t.Any], *args: t.Any) -> ScopedJob:
    # The client connects on first use; perform() alone never uses it.
    return t.cast("ScopedJob", cls.create(func, args=args, connection=redis.Redis()))


def notes(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(Note.text)).scalars())


def test_perform_runs_the_job_in_a_unit_of_work(sqlite_engine: sa.Engine) -> None:
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(sqlite_engine))
    Job = job_class(Session, commit=True)
    outside = Session()  # the worker's own session: shadowed, then back
    assert make_job(Job, add_note, Session, "one").perform() == "one"
    with pytest.raises(ValueError, match="the job failed"):
        make_job(Job, add_and_fail, Session, "two").perform()
    assert isinstance(make_job(Job, add_and_retry, Session, "three").perform(), Retry)
    # The commit is part of the job: a unique key taken fails the job.
    with pytest.raises(sa.exc.IntegrityError):
        make_job(Job, add_note, Session, "one").perform()
    assert Session() is outside
    Session.remove()
    assert notes(sqlite_engine) == ["one"]
    assert Session.stats().created == Session.stats().removed == 5
    assert sqlite_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_without_commit_the_job_commits_itself(sqlite_engine: sa.Engine) -> None:
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(sqlite_engine))
    Job = job_class(Session, commit=False)
    assert make_job(Job, add_note, Session, "rolled back").perform() == "rolled back"
    assert notes(sqlite_engine) == []
    assert not Session.registry.has()


def test_scoped_job_checks_its_attributes() -> None:
    Session = ScopedSession(TrivialSession)
    with pytest.raises(TypeError, match=r"BadSessions\.scoped_sessions takes a ScopedSession"):

        class BadSessions(ScopedJob):
            scoped_sessions = 42

    with pytest.raises(TypeError, match=r"BadCommit\.commit must be True or False"):

        class BadCommit(ScopedJob):
            scoped_sessions = (Session,)
            commit = "yes"  # type: ignore[assignment]

    class Unwired(ScopedJob):
        pass

    with pytest.raises(ScopedSessionError, match="set scoped_sessions = Session"):
        make_job(Unwired, add_note, Session, "x").perform()


# -- a real rq worker on Redis and PostgreSQL -------------------------------------


class RqRun(t.NamedTuple):
    tag: str
    schema: str
    url: str  # PostgreSQL, as the worker's engine takes it


@pytest.fixture
def rq_run(pg_url: str) -> t.Iterator[RqRun]:
    tag = f"ssrq-{uuid.uuid4().hex[:10]}"
    schema = tag.replace("-", "_")
    url = sa.make_url(pg_url).set(drivername="postgresql+psycopg").render_as_string(False)
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    engine = make_engine(url, schema, tag, 1)
    Base.metadata.create_all(engine)
    with sessionmaker(engine).begin() as session:
        session.add(Item(key="taken"))
    engine.dispose()
    yield RqRun(tag, schema, url)
    client = redis.Redis.from_url(REDIS_URL)
    Queue(tag, connection=client).delete(delete_jobs=True)
    client.delete(f"{tag}:runs", f"{tag}:parent")
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def backends(url: str, tag: str) -> list[tuple[int, str, str]]:
    """(pid, application_name, state) of the server backends of a run."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name, coalesce(state, '') FROM pg_stat_activity"
            " WHERE application_name LIKE %s",
            (f"{tag}-%",),
        ).fetchall()
    return [(int(pid), str(name), str(state)) for pid, name, state in rows]


def wait_for_no_backends(url: str, tag: str) -> list[tuple[int, str, str]]:
    """The run's backends once its processes have exited: the server ends each
    one when it reads the closed socket (bounded wait, then what is left)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for _ in range(100):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"{tag}-%",),
            ).fetchone()
            if left is None or left[0] == 0:
                break
            conn.execute("SELECT pg_sleep(0.1)")
    return backends(url, tag)


@pytest.mark.broker
@pytest.mark.postgres
@pytest.mark.parametrize(
    "worker_class", ["rq.worker.Worker", "rq.worker.SimpleWorker", "rq.worker.SpawnWorker"]
)
def test_real_rq_worker(rq_run: RqRun, worker_class: str) -> None:
    tag = rq_run.tag
    client = redis.Redis.from_url(REDIS_URL)
    queue = Queue(tag, connection=client)
    expected: dict[str, tuple[str, str | None]] = {}  # job id -> (status, row key)
    for n in range(6):
        job = queue.enqueue("queue_rq_jobs.insert", f"ok-{n}")
        expected[job.id] = (JobStatus.FINISHED, f"ok-{n}")
    expected[queue.enqueue("queue_rq_jobs.insert_taken", "dup").id] = (JobStatus.FAILED, None)
    expected[queue.enqueue("queue_rq_jobs.raises", "boom").id] = (JobStatus.FAILED, None)
    slow = queue.enqueue("queue_rq_jobs.too_slow", "slow", job_timeout=1)
    expected[slow.id] = (JobStatus.FAILED, None)
    retried = queue.enqueue("queue_rq_jobs.taken_then_fresh", "retried", retry=Retry(max=1))
    expected[retried.id] = (JobStatus.FINISHED, "retried")

    forks = worker_class == "rq.worker.Worker"
    parent = "0" if worker_class == "rq.worker.SpawnWorker" else "1"
    environ = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        QUEUE_DB_URL=rq_run.url,
        QUEUE_SCHEMA=rq_run.schema,
        QUEUE_TAG=tag,
        QUEUE_REDIS_URL=REDIS_URL,
        QUEUE_POOL_SIZE="2",
        QUEUE_PARENT_SESSION=parent,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--burst",
            "--url",
            REDIS_URL,
            "--job-class",
            "queue_rq_jobs.Job",
            "--worker-class",
            worker_class,
            "--path",
            str(TESTS),
            "--logging_level",
            "WARNING",
            tag,
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    # Every job's state matches its effect in the database.
    for job_id, (status, _) in expected.items():
        job = Job.fetch(job_id, connection=client)
        assert job.get_status() == status, (job.func_name, job.latest_result())
    timed_out = Job.fetch(slow.id, connection=client).latest_result()
    assert timed_out is not None
    assert "JobTimeoutException" in (timed_out.exc_string or "")
    engine = make_engine(rq_run.url, rq_run.schema, f"{tag}-check", 1)
    try:
        with engine.connect() as conn:
            keys = sorted(conn.execute(sa.select(Item.key)).scalars())
    finally:
        engine.dispose()
    assert keys == sorted(["taken", "retried", *(f"ok-{n}" for n in range(6))])

    runs = RunLog(REDIS_URL, tag).runs()
    assert collections.Counter(r["name"] for r in runs) == {
        "insert": 6,
        "insert_taken": 1,
        "raises": 1,
        "too_slow": 1,
        "taken_then_fresh": 2,
    }
    # A session per job, never one seen before.
    assert len({r["token"] for r in runs}) == len(runs)
    assert not any(r["reused"] for r in runs)
    # No server connection is used by two processes.
    pids_of: dict[int, set[int]] = collections.defaultdict(set)
    for r in runs:
        pids_of[r["backend"]].add(r["pid"])
    assert all(len(pids) == 1 for pids in pids_of.values())
    if worker_class == "rq.worker.SimpleWorker":
        assert len({r["pid"] for r in runs}) == 1
    else:
        assert len({r["pid"] for r in runs}) == len(runs)  # a work horse per job
    if parent == "1":
        parent_session, parent_idle = map(int, client.get(f"{tag}:parent").split())  # type: ignore[union-attr]
        # The worker's own session kept its transaction while the jobs ran:
        # no work horse closed (rolled back) it, nor used its connections.
        assert {r["parent_state"] for r in runs} == {"idle in transaction"}
        used = {r["backend"] for r in runs}
        assert parent_session not in used
        if forks:
            assert parent_idle not in used
    left = wait_for_no_backends(rq_run.url, tag)
    assert left == []
