"""The jobs and the job class that ``tests/test_rq.py`` runs under a real
``rq worker --job-class queue_rq_jobs.Job`` (configured as ``queue_common`` says).

With ``QUEUE_PARENT_SESSION=1`` the worker process holds a session in an open
transaction and an idle pooled connection from import on, as a worker that
warmed up would: its work horses must drop both, not close or reuse them.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from queue_common import PID, Item, RunLog, engine_from_env, env
from rq import get_current_job
from sqlalchemy.orm import Session as SASession
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession
from scoped_session.rq import ScopedJob
from scoped_session.worker import dispose_engines_after_fork

engine = engine_from_env()
dispose_engines_after_fork(engine)
Session: ScopedSession[SASession] = ScopedSession(sessionmaker(engine))
log = RunLog(env("QUEUE_REDIS_URL"), env("QUEUE_TAG"))


class Job(ScopedJob):
    scoped_sessions = Session
    commit = True


if os.environ.get("QUEUE_PARENT_SESSION") == "1":
    # Outside any unit: the worker process's own session, in a transaction.
    parent_backend = Session.execute(PID).scalar_one()
    with engine.connect() as conn:
        idle_backend = conn.execute(PID).scalar_one()
    log.redis.set(f"{env('QUEUE_TAG')}:parent", f"{parent_backend} {idle_backend}")


def state_of(backend: int) -> str | None:
    """The server's state of another backend, as this job's session sees it."""
    return Session.execute(
        sa.text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}
    ).scalar_one_or_none()


def record(name: str, key: str) -> None:
    facts: dict[str, object] = {"name": name, "key": key}
    parent = log.redis.get(f"{env('QUEUE_TAG')}:parent")
    if parent is not None:
        facts["parent_state"] = state_of(int(parent.split()[0]))
    log.record(Session(), **facts)


def insert(key: str) -> str:
    record("insert", key)
    Session.add(Item(key=key))  # inserted by the commit, after the job returned
    return key


def insert_taken(key: str) -> str:
    """Writes a key that exists: the unique constraint fails the commit."""
    record("insert_taken", key)
    Session.add(Item(key="taken"))
    return key


def raises(key: str) -> None:
    record("raises", key)
    Session.add(Item(key=key))
    Session.flush()
    raise ValueError("the job failed")


def too_slow(key: str) -> None:
    """Flushes its row, then outlives its job timeout (RQ's death penalty
    interrupts it); bounded in case the timeout never comes."""
    record("too_slow", key)
    Session.add(Item(key=key))
    Session.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)


def taken_then_fresh(key: str) -> str:
    """Enqueued with ``Retry(max=1)``: the first attempt's commit fails, the
    retry writes ``key``."""
    job = get_current_job()
    assert job is not None
    first = job.retries_left == 1
    record("taken_then_fresh", key)
    Session.add(Item(key="taken" if first else key))
    return key
