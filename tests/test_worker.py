"""ScopedThreadPoolExecutor: sessions per job and per worker thread, on real databases."""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import os
import subprocess
import sys
import threading
import typing as t
import weakref
from concurrent.futures import Future
from pathlib import Path

import pytest
from fakes import HAS_SQLALCHEMY, TrivialSession, needs_sqlalchemy

from scoped_session import ScopedSession
from scoped_session.worker import ScopedThreadPoolExecutor, dispose_engines_after_fork

# The tests on real databases skip without SQLAlchemy (their fixtures, or the mark).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Base, Database, Note, drop_schema, make_postgres_engine
    from sqlalchemy.orm import Session as SASession
    from sqlalchemy.orm import sessionmaker

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30  # seconds: the bound on every wait in this file


def sa_scoped(engine: sa.Engine) -> ScopedSession[SASession]:
    return ScopedSession(sessionmaker(engine))


def add_note(Session: ScopedSession[SASession], text: str) -> None:
    Session.add(Note(text=text))
    Session.flush()


class FailingClose(TrivialSession):
    def close(self) -> None:
        super().close()
        raise OSError("close failed")


# -- arguments ----------------------------------------------------------------


def test_rejects_bad_arguments() -> None:
    Session = ScopedSession(TrivialSession)
    with pytest.raises(TypeError, match="takes a ScopedSession"):
        ScopedThreadPoolExecutor(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="holds an object of type str"):
        ScopedThreadPoolExecutor([Session, "x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one ScopedSession"):
        ScopedThreadPoolExecutor([])
    with pytest.raises(ValueError, match="per='job'"):
        ScopedThreadPoolExecutor(Session, per="process")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="commit must be True or False"):
        ScopedThreadPoolExecutor(Session, commit="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_workers"):
        ScopedThreadPoolExecutor(Session, max_workers=0)
    for per in ("job", "thread"):
        with pytest.raises(TypeError, match="initializer must be a callable"):
            ScopedThreadPoolExecutor(Session, per=per, initializer=42)


def test_refuses_a_flask_scoped_session() -> None:
    # Its sessions live in a Flask application context, which worker threads
    # lack: every job would fail at its first use of the session.
    pytest.importorskip("flask", reason="Flask is not installed")
    from scoped_session.flask import FlaskScopedSession

    FlaskSession = FlaskScopedSession(TrivialSession)
    for sessions in (FlaskSession, [ScopedSession(TrivialSession), FlaskSession]):
        with pytest.raises(
            TypeError, match=r"ScopedThreadPoolExecutor\(\) got a FlaskScopedSession as sessions"
        ) as refused:
            ScopedThreadPoolExecutor(sessions, max_workers=1)
        assert "ScopedSession(sessionmaker(engine))" in str(refused.value)
    for per in ("job", "thread"):
        with pytest.raises(TypeError, match="FlaskScopedSession"):
            ScopedThreadPoolExecutor(FlaskSession, per=per)


@pytest.mark.parametrize("per", ["job", "thread"])
def test_initializer_runs_once_per_thread_with_its_args(per: t.Literal["job", "thread"]) -> None:
    Session = ScopedSession(TrivialSession)
    seen: list[tuple[str, int]] = []
    with ScopedThreadPoolExecutor(
        Session,
        max_workers=1,
        per=per,
        initializer=lambda a, b: seen.append((a, b)),
        initargs=("x", 1),
        thread_name_prefix="init-test",
    ) as pool:
        names = [
            pool.submit(lambda: threading.current_thread().name).result(WAIT) for _ in range(3)
        ]
    assert seen == [("x", 1)]
    assert set(names) == {"init-test_0"}


def test_a_failing_initializer_breaks_the_pool_as_the_base_class_does() -> None:
    from concurrent.futures.thread import BrokenThreadPool

    Session = ScopedSession(TrivialSession)

    def bad() -> None:
        raise RuntimeError("initializer failed")

    with (
        ScopedThreadPoolExecutor(Session, max_workers=1, initializer=bad) as pool,
        pytest.raises(BrokenThreadPool),
    ):
        pool.submit(Session).result(WAIT)
    assert Session._stats.created == 0


# -- per="job" ------------------------------------------------------------------


def test_per_job_fresh_session_closed_after_each_job() -> None:
    Session = ScopedSession(TrivialSession)
    with ScopedThreadPoolExecutor(Session, max_workers=2, commit=True) as pool:
        sessions = [pool.submit(Session).result(timeout=WAIT) for _ in range(6)]
        # The unit ends before the future is resolved.
        assert [s.closed for s in sessions] == [1] * 6
    assert len({id(s) for s in sessions}) == 6
    assert [s.committed for s in sessions] == [1] * 6
    assert Session._stats.created == Session._stats.removed == 6


def test_per_job_commits_and_ends_on_real_database(db: Database) -> None:
    Session = sa_scoped(db.engine)
    with ScopedThreadPoolExecutor(Session, max_workers=2, commit=True) as pool:
        ok = pool.submit(add_note, Session, "ok")
        assert ok.result(timeout=WAIT) is None
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

        def boom() -> None:
            add_note(Session, "rolled back")
            raise KeyError("job failed")

        failed = pool.submit(boom)
        assert isinstance(failed.exception(timeout=WAIT), KeyError)
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.count_notes() == 1
    assert db.idle_in_transaction() == 0


def test_per_job_failed_commit_fails_the_future(db: Database) -> None:
    Session = sa_scoped(db.engine)
    with ScopedThreadPoolExecutor(Session, max_workers=1, commit=True) as pool:
        assert pool.submit(lambda: Session.add(Note(text="dup"))).result(timeout=WAIT) is None
        # The INSERT runs at commit: the UNIQUE violation is the commit's.
        future = pool.submit(lambda: Session.add(Note(text="dup")))
        assert isinstance(future.exception(timeout=WAIT), sa.exc.IntegrityError)
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # The worker is not poisoned.
        assert pool.submit(lambda: Session.add(Note(text="after"))).result(timeout=WAIT) is None
    assert db.count_notes() == 2
    assert db.idle_in_transaction() == 0


def test_per_job_without_commit_rolls_back(sqlite_engine: sa.Engine) -> None:
    Session = sa_scoped(sqlite_engine)
    with ScopedThreadPoolExecutor(Session, max_workers=1) as pool:
        pool.submit(add_note, Session, "never").result(timeout=WAIT)

        def kept() -> None:
            add_note(Session, "kept")
            Session.commit()

        pool.submit(kept).result(timeout=WAIT)
    with sqlite_engine.connect() as conn:
        texts = conn.execute(sa.select(Note.text)).scalars().all()
    assert texts == ["kept"]


@needs_sqlalchemy
def test_per_job_several_sessions(tmp_path: Path) -> None:
    engines = [sa.create_engine(f"sqlite:///{tmp_path / f'{n}.db'}") for n in (1, 2)]
    for engine in engines:
        Base.metadata.create_all(engine)
    first, second = (sa_scoped(e) for e in engines)
    try:
        with ScopedThreadPoolExecutor([first, second], max_workers=2, commit=True) as pool:

            def job(n: int) -> None:
                first.add(Note(text=f"a{n}"))
                second.add(Note(text=f"b{n}"))

            for future in [pool.submit(job, n) for n in range(5)]:
                assert future.result(timeout=WAIT) is None
        for engine, prefix in zip(engines, "ab", strict=True):
            with engine.connect() as conn:
                texts = set(conn.execute(sa.select(Note.text)).scalars())
            assert texts == {f"{prefix}{n}" for n in range(5)}
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        for engine in engines:
            engine.dispose()


def test_per_job_close_failure_keeps_the_jobs_exception(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(FailingClose)

    def boom() -> None:
        Session()
        raise KeyError("the job's own")

    with ScopedThreadPoolExecutor(Session, max_workers=1) as pool:
        exc = pool.submit(boom).exception(timeout=WAIT)
        assert isinstance(exc, KeyError)
        assert isinstance(pool.submit(Session).exception(timeout=WAIT), OSError)
    assert "Closing a job's session failed" in caplog.text
    assert Session._stats.created == Session._stats.removed == 2


@pytest.mark.parametrize("per", ["job", "thread"])
def test_each_future_gets_its_own_functions_result_with_several_submitters(
    per: t.Literal["job", "thread"],
) -> None:
    Session = ScopedSession(TrivialSession)

    def double(n: int) -> tuple[str, int]:
        Session()
        return ("double", 2 * n)

    def square(n: int) -> tuple[str, int]:
        Session()
        return ("square", n * n)

    with ScopedThreadPoolExecutor(Session, max_workers=4, per=per) as pool:

        def submitter(k: int) -> list[tuple[Future[tuple[str, int]], tuple[str, int]]]:
            fns = (double, square)
            out = []
            for n in range(300):
                fn = fns[(n + k) % 2]
                out.append((pool.submit(fn, n), fn(n)))
            return out

        with ScopedThreadPoolExecutor(Session, max_workers=4) as submitters:
            batches = [f.result(WAIT) for f in [submitters.submit(submitter, k) for k in range(4)]]
    pairs = [pair for batch in batches for pair in batch]
    assert [future.result(WAIT) for future, _ in pairs] == [want for _, want in pairs]


def test_the_pool_lets_the_last_submitted_function_go_at_shutdown() -> None:
    Session = ScopedSession(TrivialSession)

    class Job:
        def __call__(self) -> None:
            Session()

    job = Job()
    gone = weakref.ref(job)
    pool = ScopedThreadPoolExecutor(Session, max_workers=1)
    pool.submit(job).result(WAIT)
    del job
    pool.shutdown(wait=True)
    gc.collect()
    assert gone() is None


def test_per_job_nested_scope_joins_the_jobs_unit() -> None:
    Session = ScopedSession(TrivialSession)

    def job() -> tuple[TrivialSession, TrivialSession, int]:
        with Session.scope(commit=True) as inner:
            pass
        # The nested scope joined the job's unit: the session lives on.
        return inner, Session(), inner.closed

    with ScopedThreadPoolExecutor(Session, max_workers=1, commit=True) as pool:
        inner, after, closed_inside = pool.submit(job).result(WAIT)
        second = pool.submit(Session).result(WAIT)
    assert inner is after
    assert closed_inside == 0
    assert inner.closed == 1
    assert inner.committed == 1
    assert second is not inner
    assert second.closed == 1


def test_per_job_shadows_a_session_the_worker_made_outside(sqlite_engine: sa.Engine) -> None:
    Session = sa_scoped(sqlite_engine)
    outer: list[SASession] = []
    with ScopedThreadPoolExecutor(
        Session, max_workers=1, initializer=lambda: outer.append(Session())
    ) as pool:
        inner = pool.submit(Session).result(timeout=WAIT)
        assert inner is not outer[0]
        assert pool.submit(lambda: Session.registry()).result(timeout=WAIT) is not outer[0]
        # Back on the worker thread's own session between jobs.
        assert pool.submit(lambda: Session.registry.has()).result(timeout=WAIT) is False
    Session.remove_all()


# -- per="thread" ---------------------------------------------------------------


def test_per_thread_rolls_back_after_a_failed_job(db: Database) -> None:
    Session = sa_scoped(db.engine)

    def add_and_get(text: str) -> SASession:
        add_note(Session, text)
        return Session()

    with ScopedThreadPoolExecutor(Session, max_workers=1, per="thread") as pool:
        assert pool.per == "thread"
        first = pool.submit(add_and_get, "one").result(WAIT)
        Session_commit = pool.submit(Session.commit)
        assert Session_commit.result(timeout=WAIT) is None
        # A flush that fails leaves the session needing a rollback.
        failed = pool.submit(add_note, Session, "one")
        assert isinstance(failed.exception(timeout=WAIT), sa.exc.IntegrityError)
        after = pool.submit(add_and_get, "two").result(WAIT)
        assert after is first  # the same session, usable again
        pool.submit(Session.commit).result(timeout=WAIT)
        assert db.engine.pool.checkedout() <= 1  # type: ignore[attr-defined]
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.count_notes() == 2
    assert db.idle_in_transaction() == 0
    assert Session._stats.created == Session._stats.removed == 1


def test_per_thread_commit_after_each_job(db: Database) -> None:
    Session = sa_scoped(db.engine)
    with ScopedThreadPoolExecutor(Session, max_workers=1, per="thread", commit=True) as pool:
        assert pool.submit(add_note, Session, "a").result(timeout=WAIT) is None
        assert db.count_notes() == 1  # committed after the job, not at shutdown
        dup = pool.submit(lambda: Session.add(Note(text="a")))
        assert isinstance(dup.exception(timeout=WAIT), sa.exc.IntegrityError)
        assert pool.submit(add_note, Session, "b").result(timeout=WAIT) is None
    assert db.count_notes() == 2
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.idle_in_transaction() == 0


def test_per_thread_one_session_per_worker_closed_at_shutdown() -> None:
    Session = ScopedSession(TrivialSession)
    barrier = threading.Barrier(3, timeout=WAIT)

    def job() -> TrivialSession:
        session = Session()
        barrier.wait()  # three jobs at once: three worker threads
        return session

    pool = ScopedThreadPoolExecutor(Session, max_workers=3, per="thread")
    sessions = [f.result(WAIT) for f in [pool.submit(job) for _ in range(3)]]
    again = [pool.submit(Session).result(WAIT) for _ in range(9)]
    assert len({id(s) for s in sessions}) == 3
    assert {id(s) for s in again} <= {id(s) for s in sessions}
    assert [s.closed for s in sessions] == [0, 0, 0]
    pool.shutdown(wait=True)
    assert [s.closed for s in sessions] == [1, 1, 1]
    pool.shutdown(wait=True)  # idempotent
    assert [s.closed for s in sessions] == [1, 1, 1]


@pytest.mark.parametrize("per", ["job", "thread"])
def test_shutdown_without_wait_the_running_and_queued_jobs_close_their_sessions(
    per: t.Literal["job", "thread"],
) -> None:
    Session = ScopedSession(TrivialSession)
    started, release = threading.Event(), threading.Event()

    def blocked() -> TrivialSession:
        session = Session()
        started.set()
        assert release.wait(WAIT)
        return session

    pool = ScopedThreadPoolExecutor(Session, max_workers=1, per=per)
    future = pool.submit(blocked)
    queued = [pool.submit(Session) for _ in range(3)]
    assert started.wait(WAIT)
    pool.shutdown(wait=False)
    release.set()
    # per="thread": the running job's session is closed by the worker when the
    # job ends; the queued jobs run in units of their own. per="job": every job
    # has its own anyway.
    sessions = [future.result(WAIT)] + [f.result(WAIT) for f in queued]
    assert len({id(s) for s in sessions}) == 4
    assert [s.closed for s in sessions] == [1, 1, 1, 1]
    pool.shutdown(wait=True)
    assert Session._stats.created == Session._stats.removed == 4
    assert Session.remove_all() == 0


def test_per_thread_close_failures_all_closed_and_raised_as_a_group(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Session = ScopedSession(FailingClose)
    barrier = threading.Barrier(2, timeout=WAIT)

    def job() -> TrivialSession:
        barrier.wait()
        return Session()

    pool = ScopedThreadPoolExecutor(Session, max_workers=2, per="thread")
    sessions = [f.result(WAIT) for f in [pool.submit(job) for _ in range(2)]]
    with pytest.raises(ExceptionGroup) as raised:
        pool.shutdown(wait=True)
    assert [str(e) for e in raised.value.exceptions] == ["close failed", "close failed"]
    assert [s.closed for s in sessions] == [1, 1]
    assert caplog.text.count("Closing a session failed for shutdown()") == 2  # each logged


def test_context_exit_keeps_the_blocks_exception(caplog: pytest.LogCaptureFixture) -> None:
    Session = ScopedSession(FailingClose)
    with (
        pytest.raises(LookupError, match="the block's own"),
        ScopedThreadPoolExecutor(Session, max_workers=1, per="thread") as pool,
    ):
        session = pool.submit(Session).result(WAIT)
        raise LookupError("the block's own")
    assert session.closed == 1
    assert "close failed" in caplog.text


# -- PostgreSQL under load, garbage collector off -------------------------------


@pytest.fixture
def pg_db(pg_url: str) -> t.Iterator[Database]:
    engine, app_name, schema = make_postgres_engine(pg_url, pool_size=8, max_overflow=0)
    Base.metadata.create_all(engine)
    yield Database(engine, "postgres", pg_url, app_name)
    engine.dispose()
    drop_schema(pg_url, schema)


@pytest.mark.postgres
@pytest.mark.parametrize("per", ["job", "thread"])
def test_thousand_jobs_eight_threads_postgres_gc_disabled(
    pg_db: Database, per: t.Literal["job", "thread"]
) -> None:
    engine = pg_db.engine
    Session = sa_scoped(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Note), [{"text": "taken"}])

    def job(n: int) -> int:
        if n % 10 == 7:
            Session.add(Note(text="taken"))  # fails at commit (UNIQUE)
        else:
            Session.add(Note(text=f"job-{n}"))
        if n % 10 == 3:
            Session.flush()
            raise ValueError(n)  # fails after writing: rolled back
        return n

    jobs = 1000
    gc.disable()
    try:
        with ScopedThreadPoolExecutor(Session, max_workers=8, per=per, commit=True) as pool:
            futures: list[Future[int]] = [pool.submit(job, n) for n in range(jobs)]
            outcomes = [f.exception(timeout=WAIT) for f in futures]
    finally:
        gc.enable()
    assert sum(isinstance(e, ValueError) for e in outcomes) == jobs // 10
    assert sum(isinstance(e, sa.exc.IntegrityError) for e in outcomes) == jobs // 10
    succeeded = sum(e is None for e in outcomes)
    assert succeeded == jobs - 2 * jobs // 10
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert pg_db.idle_in_transaction() == 0
    assert pg_db.count_notes() == succeeded + 1
    assert Session._stats.reaped == 0
    assert Session._stats.created == Session._stats.removed


# -- the worker loop example ----------------------------------------------------


def run_example(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "worker_pool.py")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_sqlalchemy
def test_worker_pool_example_sqlite() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = run_example({**env, "DATABASE_URL": ""})
    assert proc.returncode == 0, proc.stderr
    assert "loop: 36 rows committed, 4 jobs failed" in proc.stdout
    assert "pool: 36 rows committed, 4 jobs failed" in proc.stdout
    assert "connections checked out: 0" in proc.stdout


@pytest.mark.postgres
def test_worker_pool_example_postgres(pg_url: str) -> None:
    engine, _, schema = make_postgres_engine(pg_url)
    engine.dispose()
    try:
        url = sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        proc = run_example({"DATABASE_URL": url.render_as_string(hide_password=False)})
        assert proc.returncode == 0, proc.stderr
        assert "loop: 36 rows committed, 4 jobs failed" in proc.stdout
        assert "connections checked out: 0" in proc.stdout
    finally:
        drop_schema(pg_url, schema)


# -- dispose_engines_after_fork: arguments and weakness --------------------------


def test_dispose_engines_after_fork_arguments() -> None:
    with pytest.raises(TypeError, match=r"dispose\(close=False\)"):
        dispose_engines_after_fork(object())  # type: ignore[arg-type]

    class FakeAsync:
        sync_engine = None

        def dispose(self, close: bool = True) -> None: ...

    with pytest.raises(TypeError, match="sync_engine"):
        dispose_engines_after_fork(FakeAsync())


@needs_sqlalchemy
def test_dispose_engines_after_fork_holds_engines_weakly(caplog: pytest.LogCaptureFixture) -> None:
    from scoped_session import worker

    engine = sa.create_engine("sqlite://")
    ref = weakref.ref(engine)
    dispose_engines_after_fork(engine)
    dispose_engines_after_fork(engine)  # twice is harmless
    assert engine in worker._fork_engines
    del engine
    gc.collect()
    assert ref() is None

    class Broken:
        def dispose(self, close: bool = True) -> None:
            raise OSError("dispose failed")

    broken, calls = Broken(), []

    class Recorder:
        def dispose(self, close: bool = True) -> None:
            calls.append(close)

    recorder = Recorder()
    dispose_engines_after_fork(broken, recorder)
    with caplog.at_level(logging.ERROR, "scoped_session"):
        worker._dispose_in_child()  # what the child runs; every engine is tried
    assert calls == [False]
    assert "after fork failed" in caplog.text
    worker._fork_engines.discard(broken)
    worker._fork_engines.discard(recorder)


# -- the bare pool trap ------------------------------------------------------------


def test_a_bare_pool_leaves_sessions_that_loose_sessions_reports(db: Database) -> None:
    """A plain ThreadPoolExecutor with no unit of work per job: each worker thread
    keeps its session, in a transaction, for as long as the thread lives. The
    diagnostic finds them while the threads still run."""
    if db.kind != "postgres":
        pytest.skip("idle in transaction is PostgreSQL's state")
    Session = sa_scoped(db.engine)
    barrier = threading.Barrier(2, timeout=WAIT)

    def job(text: str) -> None:
        add_note(Session, text)  # flushed, never committed, never removed
        barrier.wait()  # both threads hold a session at once

    line = add_note.__code__.co_firstlineno + 1  # Session.add(), which made it
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="bare") as pool:
        for future in [pool.submit(job, "one"), pool.submit(job, "two")]:
            future.result(timeout=WAIT)
        loose = Session.loose_sessions()
        assert len(loose) == 2
        for text in loose:
            assert text.startswith("the thread 'bare_")
            assert text.endswith(f"holds a session made at {__file__}:{line}")
        assert db.idle_in_transaction() == 2  # what a bare pool leaves behind
        assert db.count_notes() == 0  # and the writes are invisible
        assert Session.remove_all() == 2
    assert Session.loose_sessions() == []
    assert db.idle_in_transaction() == 0
    assert db.checkedout() == 0


def test_a_pool_with_units_leaves_no_loose_session() -> None:
    Session: ScopedSession[TrivialSession] = ScopedSession(TrivialSession)
    with ScopedThreadPoolExecutor(Session, max_workers=2) as pool:
        pool.submit(Session).result(timeout=WAIT)
        assert Session.loose_sessions() == []
    # A unit's session is never listed, open or not.
    with Session.scope():
        Session()
        assert Session.loose_sessions() == []
