"""Background workers with scoped sessions: a pool, and a long-running job loop.

Run it: ``python examples/worker_pool.py`` (a SQLite file in a temporary
folder), or with ``DATABASE_URL=postgresql+psycopg://...`` for PostgreSQL (it
creates and drops its own table, ``example_worker_pool_jobs``).

It runs 40 jobs on a ScopedThreadPoolExecutor and 40 through two worker-loop
threads; every tenth job fails. Each job has a session of its own, committed
when it succeeds and always closed, so the program ends with no connection
checked out and exactly the successful jobs' rows.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import tempfile
import threading
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session import ScopedSession
from scoped_session.worker import ScopedThreadPoolExecutor

log = logging.getLogger("worker_pool")

JOBS = 40


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "example_worker_pool_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(sa.String(20))
    n: Mapped[int]


def make_session(url: str) -> tuple[sa.Engine, ScopedSession[sa.orm.Session]]:
    engine = sa.create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    return engine, ScopedSession(sessionmaker(engine))


def run_pool(Session: ScopedSession[sa.orm.Session]) -> int:
    """The jobs of a ScopedThreadPoolExecutor: a unit of work each."""

    def job(n: int) -> None:
        Session.add(JobRow(source="pool", n=n))
        Session.flush()
        if n % 10 == 9:
            raise ValueError(f"job {n} failed")  # rolled back; the pool goes on

    with ScopedThreadPoolExecutor(Session, max_workers=4, commit=True) as pool:
        futures = [pool.submit(job, n) for n in range(JOBS)]
    return sum(1 for f in futures if f.exception() is not None)


def run_loops(Session: ScopedSession[sa.orm.Session], threads: int = 2) -> int:
    """The long-running worker loop: ``while True`` with a unit of work per job."""
    jobs: queue.Queue[int | None] = queue.Queue()
    failed: list[int] = []

    def handle(n: int) -> None:
        Session.add(JobRow(source="loop", n=n))
        Session.flush()
        if n % 10 == 9:
            raise ValueError(f"job {n} failed")

    def worker_loop() -> None:
        while True:
            n = jobs.get(timeout=30)  # a real loop blocks for good; this one is bounded
            if n is None:
                return
            try:
                with Session.scope(commit=True):
                    handle(n)
            except Exception:
                # The unit was rolled back and closed; the loop serves the next job.
                log.info("job %d failed", n, exc_info=True)
                failed.append(n)

    workers = [threading.Thread(target=worker_loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for n in range(JOBS):
        jobs.put(n)
    for _ in workers:
        jobs.put(None)
    for worker in workers:
        worker.join(timeout=60)
        if worker.is_alive():
            raise RuntimeError("a worker loop did not stop")
    return len(failed)


def main(argv: t.Sequence[str] = ()) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("DATABASE_URL") or f"sqlite:///{os.path.join(tmp, 'jobs.db')}"
        engine, Session = make_session(url)
        try:
            pool_failed = run_pool(Session)
            loop_failed = run_loops(Session)
            with engine.connect() as conn:
                rows = dict(
                    conn.execute(
                        sa.select(JobRow.source, sa.func.count()).group_by(JobRow.source)
                    ).all()
                )
            checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
            print(f"pool: {rows.get('pool', 0)} rows committed, {pool_failed} jobs failed")
            print(f"loop: {rows.get('loop', 0)} rows committed, {loop_failed} jobs failed")
            print(f"connections checked out: {checked_out}")
            expected = JOBS - JOBS // 10
            ok = (
                rows.get("pool") == expected
                and rows.get("loop") == expected
                and pool_failed == loop_failed == JOBS // 10
                and checked_out == 0
            )
            if os.environ.get("DATABASE_URL"):
                Base.metadata.drop_all(engine)
        finally:
            engine.dispose()
    print("ok" if ok else "UNEXPECTED RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
