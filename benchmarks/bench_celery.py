"""Per-task cost of the Celery wiring: ``init_celery(app, Session, commit=True)``
against a task that opens and closes its own session in try/finally.

Both tasks run in this process through Celery's own tracer (what a worker's pool
process calls per task: signals, the task's run, the result), in rotating rounds,
each doing the same real work: a query and a commit on a SQLite file, or on
PostgreSQL when ``SCOPED_SESSION_TEST_POSTGRES_URL`` is set. The broker's round
trip, the same for both, is left out, so the ratio shows the wiring's cost against
the task alone, in CPU time of this thread (a database server's time is not
counted, for either). Bar: ours at most ``BAR`` of the plain task's time.

    python benchmarks/bench_celery.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import typing as t
import uuid

import sqlalchemy as sa
from _share import Result, Row, calls, header, print_rows, sample
from celery import Celery  # type: ignore[import-untyped]
from celery.app.trace import build_tracer  # type: ignore[import-untyped]
from sqlalchemy.orm import Session, sessionmaker

from scoped_session import ScopedSession
from scoped_session.celery import init_celery

BAR = 1.05
QUERY = sa.text("SELECT count(*) FROM bench_notes")


def make_engine(where: str) -> sa.Engine:
    url = os.environ.get("SCOPED_SESSION_TEST_POSTGRES_URL")
    engine = sa.create_engine(url) if url else sa.create_engine(f"sqlite:///{where}/bench.db")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bench_notes (id INTEGER PRIMARY KEY)"))
    return engine


def make_app(name: str) -> t.Any:
    app = Celery(name, set_as_current=False)
    app.conf.update(broker_url="memory://", task_ignore_result=True)
    return app


def tracer_of(app: t.Any, task: t.Any) -> t.Callable[[], object]:
    """What a worker runs for one delivery of ``task`` (no broker, no result)."""
    trace = build_tracer(task.name, task, app=app, hostname="bench")
    request = {"delivery_info": {}, "ignore_result": True}

    def run_once() -> object:
        return trace(uuid.uuid4().hex, (), {}, request)

    return run_once


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        # One CPU: the scheduler moving the process between cores moves the
        # rounds' times by more than the difference measured.
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as where:
        engine = make_engine(where)
        factory = sessionmaker(engine)
        Wired: ScopedSession[Session] = ScopedSession(sessionmaker(engine))

        wired_app = make_app("wired")
        init_celery(wired_app, Wired, commit=True)

        @wired_app.task(name="wired", shared=False)  # type: ignore[untyped-decorator]
        def wired() -> None:
            Wired.execute(QUERY)

        plain_app = make_app("plain")

        @plain_app.task(name="plain", shared=False)  # type: ignore[untyped-decorator]
        def plain() -> None:
            session = factory()
            try:
                session.execute(QUERY)
                session.commit()
            finally:
                session.close()

        # A worker finalizes its app before it builds the tracers.
        wired_app.finalize()
        plain_app.finalize()
        ours = tracer_of(wired_app, wired_app.tasks["wired"])
        theirs = tracer_of(plain_app, plain_app.tasks["plain"])
        # Many short rounds: the machine's drift between two halves of a round
        # stays small, and the median drops the rounds it hit.
        tasks, count = (100, 21) if args.quick else (100, 81)
        times = sample({"ours": calls(ours), "theirs": calls(theirs)}, count, tasks)
        left = Wired.remove_all()
        assert left == 0, f"{left} sessions were left behind"
        engine.dispose()
    kind = "PostgreSQL" if os.environ.get("SCOPED_SESSION_TEST_POSTGRES_URL") else "a SQLite file"
    print(header("Celery, init_celery(commit=True)", count, f"{tasks} tasks"))
    row = Row(
        f"a task: a query and a commit, {kind}", Result.of(times["ours"], times["theirs"]), BAR
    )
    passed = print_rows(
        "Per task (us), through Celery's tracer; anchor: a task that opens its own session"
        " and closes it in try/finally",
        [row],
        unit="us",
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
