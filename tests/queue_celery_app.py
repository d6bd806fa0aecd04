"""The Celery app that ``tests/test_celery_brokers.py`` runs under a real
``celery -A queue_celery_app worker`` (configured as ``queue_common`` says, plus
``QUEUE_BROKER_URL``).

Each task writes the row of its key, or fails, in the unit of work that
``init_celery(..., commit=True)`` gives it, and logs its run to Redis. The
worker's main process opens a pooled connection at import, as a warmed-up
worker would: its pool processes must never use it.
"""

from __future__ import annotations

import os
import time
import typing as t

import redis
import sqlalchemy as sa
from celery import Celery  # type: ignore[import-untyped]
from queue_common import PID, Item, RunLog, engine_from_env, env
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session as SASession
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession
from scoped_session.celery import init_celery
from scoped_session.worker import dispose_engines_after_fork

TAG = env("QUEUE_TAG")
engine = engine_from_env()
dispose_engines_after_fork(engine)
Session: ScopedSession[SASession] = ScopedSession(sessionmaker(engine))
log = RunLog(env("QUEUE_REDIS_URL"), TAG)
kv = redis.Redis.from_url(env("QUEUE_REDIS_URL"))

app = Celery("queue_celery_app", set_as_current=False)
app.conf.update(
    broker_url=env("QUEUE_BROKER_URL"),
    result_backend=env("QUEUE_REDIS_URL"),
    task_default_queue=TAG,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
init_celery(app, Session, commit=True)

with engine.connect() as conn:
    conn.execute(PID)  # an idle pooled connection of the main process


def task(**options: t.Any) -> t.Callable[[t.Callable[..., t.Any]], t.Any]:
    return t.cast("t.Callable[[t.Callable[..., t.Any]], t.Any]", app.task(**options))


def record(name: str, key: str, attempt: int = 0) -> None:
    log.record(Session(), name=name, key=key, attempt=attempt)


def put(key: str) -> None:
    """Write the key's row, once however often the task runs."""
    Session.execute(insert(Item).values(key=key).on_conflict_do_nothing())


@task(name="ok")
def ok(key: str) -> str:
    record("ok", key)
    put(key)
    return key


@task(name="taken")
def taken(key: str) -> str:
    """Writes a taken key: the unique constraint fails the commit."""
    record("taken", key)
    Session.add(Item(key="taken"))
    return key


@task(name="boom")
def boom(key: str) -> None:
    record("boom", key)
    put(key)
    raise ValueError("the task failed")


@task(name="flaky", bind=True, max_retries=1)
def flaky(self: t.Any, key: str) -> str:
    attempt = self.request.retries
    record("flaky", key, attempt)
    put(key)
    if attempt == 0:
        raise self.retry(countdown=0)  # its write is rolled back
    return key


@task(
    name="commit_retry",
    bind=True,
    autoretry_for=(sa.exc.IntegrityError,),
    max_retries=2,
    retry_kwargs={"countdown": 0},
)
def commit_retry(self: t.Any, key: str) -> str:
    """The first attempt's commit fails; the task's retry policy covers it."""
    attempt = self.request.retries
    record("commit_retry", key, attempt)
    Session.add(Item(key="taken" if attempt == 0 else key))
    return key


@task(name="slow", soft_time_limit=0.5)
def slow(key: str) -> None:
    """Outlives its soft time limit (prefork pools enforce it); bounded."""
    record("slow", key)
    put(key)
    Session.flush()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.02)


@task(name="victim")
def victim(key: str) -> str:
    """The first run waits mid-transaction to be killed (SIGKILL) by the test;
    the redelivered run writes the row."""
    run = int(kv.incr(f"{TAG}:victim-runs:{key}"))
    record("victim", key, run - 1)
    put(key)
    if run == 1:
        kv.set(f"{TAG}:victim-pid", os.getpid())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("the victim was not killed")
    return key
