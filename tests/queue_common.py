"""What the queue workers' modules (``queue_celery_app``, ``queue_rq_jobs``) share
with the tests that start them: the table, an engine whose connections say
which process made them, and a log of task runs kept in Redis.

A worker is configured by environment variables (it is a subprocess started by
``rq worker`` or ``celery worker``): ``QUEUE_DB_URL``, ``QUEUE_SCHEMA``,
``QUEUE_TAG`` (the prefix of its connections' application_name and of its Redis
keys), ``QUEUE_REDIS_URL`` and ``QUEUE_POOL_SIZE``.
"""

from __future__ import annotations

import json
import os
import typing as t
import uuid

import redis
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

#: Redis database of the queue tests (not 0: that one is the machine's).
REDIS_URL = "redis://127.0.0.1:6379/7"


class Base(DeclarativeBase):
    pass


class Item(Base):
    """A row per key: the key is unique, so a task run twice cannot write twice,
    and a task that writes a taken key fails at its commit."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(100), unique=True)


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: the worker's test sets it")
    return value


def make_engine(url: str, schema: str, tag: str, pool_size: int) -> sa.Engine:
    """An engine in ``schema`` whose every connection is named ``{tag}-{pid}``
    after the process that opened it, so that the server's pg_stat_activity
    tells which process holds which connection."""
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"options": f"-csearch_path={schema}"},
    )

    @sa.event.listens_for(engine, "do_connect")
    def name_connection(
        dialect: object, conn_rec: object, cargs: object, cparams: dict[str, t.Any]
    ) -> None:
        cparams["application_name"] = f"{tag}-{os.getpid()}"

    return engine


def engine_from_env() -> sa.Engine:
    return make_engine(
        env("QUEUE_DB_URL"),
        env("QUEUE_SCHEMA"),
        env("QUEUE_TAG"),
        int(os.environ.get("QUEUE_POOL_SIZE", "2")),
    )


PID = sa.text("SELECT pg_backend_pid()")


class RunLog:
    """Each task run's facts, pushed to a Redis list as it runs: what it was,
    the process and the server backend it used, and its session's token (set in
    ``session.info`` by the first run that sees the session)."""

    def __init__(self, redis_url: str, tag: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.key = f"{tag}:runs"

    def record(self, session: Session, **facts: t.Any) -> dict[str, t.Any]:
        token = session.info.get("token")
        reused = token is not None
        if token is None:
            token = session.info["token"] = uuid.uuid4().hex
        facts.update(
            pid=os.getpid(),
            backend=session.execute(PID).scalar_one(),
            token=token,
            reused=reused,
        )
        self.redis.rpush(self.key, json.dumps(facts))
        return facts

    def runs(self) -> list[dict[str, t.Any]]:
        return [
            json.loads(raw) for raw in t.cast("list[bytes]", self.redis.lrange(self.key, 0, -1))
        ]
