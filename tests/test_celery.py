"""Celery wiring: a unit of work per task, with a real worker and real databases."""

from __future__ import annotations

import logging
import threading
import typing as t

import pytest

celery = pytest.importorskip("celery", reason="celery is not installed (extra 'celery')")

from celery import Celery, signals  # type: ignore[import-untyped]  # noqa: E402
from celery.contrib.testing.worker import start_worker  # type: ignore[import-untyped]  # noqa: E402
from fakes import HAS_SQLALCHEMY, TrivialSession  # noqa: E402

from scoped_session import ScopedSession, ScopedSessionError  # noqa: E402
from scoped_session.celery import init_celery  # noqa: E402

# The tests on real databases skip without SQLAlchemy (their fixtures).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Database, Note
    from sqlalchemy.orm import Session as SASession
    from sqlalchemy.orm import sessionmaker

WAIT = 30


def make_app() -> t.Any:
    app = Celery("scoped_session_tests", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        task_default_queue=f"q{id(app):x}",
        broker_transport_options={"polling_interval": 0.01},
    )
    return app


def task(app: t.Any, name: str, **options: t.Any) -> t.Callable[[t.Callable[..., t.Any]], t.Any]:
    """``app.task`` with a unique name, not shared with other apps (typed)."""
    return t.cast(
        "t.Callable[[t.Callable[..., t.Any]], t.Any]", app.task(name=name, shared=False, **options)
    )


class Recorder:
    """What each task run saw: whether its session was fresh, and the session."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[bool, object]] = []

    def record(self, Session: ScopedSession[t.Any]) -> None:
        fresh = not Session.registry.has()
        with self.lock:
            self.runs.append((fresh, Session()))


def define_tasks(app: t.Any, Session: ScopedSession[SASession], rec: Recorder) -> t.Any:
    @task(app, "add")
    def add(text: str) -> str:
        rec.record(Session)
        Session.add(Note(text=text))
        Session.flush()
        return text

    @task(app, "fail")
    def fail(text: str) -> None:
        rec.record(Session)
        Session.add(Note(text=text))
        Session.flush()
        raise ValueError("task failed")

    @task(app, "retry_once", bind=True, max_retries=1)
    def retry_once(self: t.Any, text: str) -> str:
        rec.record(Session)
        attempt = self.request.retries
        Session.add(Note(text=f"{text}-{attempt}"))
        Session.flush()
        if attempt == 0:
            raise self.retry(countdown=0)
        return text

    return add, fail, retry_once


@pytest.fixture(autouse=True)
def _keep_root_log_level() -> t.Iterator[None]:
    """celery's test worker sets the root logger to ERROR and leaves it so,
    which would hide later tests' warnings from caplog."""
    level = logging.root.level
    yield
    logging.root.setLevel(level)


@pytest.mark.slow
def test_real_worker_unit_of_work_per_task(db: Database) -> None:
    app = make_app()
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(db.engine))
    init_celery(app, Session, commit=True)
    # A second wiring on the same app, without commit: tasks commit themselves.
    Manual: ScopedSession[SASession] = ScopedSession(sessionmaker(db.engine))
    init_celery(app, Manual)
    rec = Recorder()
    add, fail, retry_once = define_tasks(app, Session, rec)

    @task(app, "commits")
    def commits(text: str) -> None:
        Manual.add(Note(text=text))
        Manual.commit()
        Manual.add(Note(text=f"{text}-uncommitted"))
        Manual.flush()

    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=WAIT
    ):
        results = [add.delay(f"note-{n}") for n in range(4)]
        failed = fail.delay("failed")
        retried = retry_once.delay("retried")
        manual = commits.delay("explicit")
        assert [r.get(timeout=WAIT) for r in results] == [f"note-{n}" for n in range(4)]
        with pytest.raises(ValueError, match="task failed"):
            failed.get(timeout=WAIT)
        assert retried.get(timeout=WAIT) == "retried"
        assert manual.get(timeout=WAIT) is None
    # The worker has stopped: every task_postrun has run.
    with db.engine.connect() as conn:
        texts = set(conn.execute(sa.select(Note.text)).scalars())
    # Committed after success only: not the failed task's, not the first
    # attempt's; the manual wiring keeps only what the task committed.
    assert texts == {*(f"note-{n}" for n in range(4)), "retried-1", "explicit"}
    runs = rec.runs
    assert len(runs) == 7
    assert all(fresh for fresh, _ in runs)
    assert len({id(s) for _, s in runs}) == 7
    # Every task opened a unit for both wirings; sessions made were all closed.
    assert Session._stats.created == Session._stats.removed == 7
    assert Manual._stats.created == Manual._stats.removed == 1
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.idle_in_transaction() == 0


class SeenAtSuccess:
    """How many notes another connection sees when Celery sends ``task_success``:
    the signal comes after the result is stored, so a task committed before
    that shows its note here."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.counts: list[int] = []

    def __call__(self, sender: t.Any = None, **kw: t.Any) -> None:
        with self.engine.connect() as conn:
            self.counts.append(conn.execute(sa.select(sa.func.count(Note.id))).scalar_one())


@pytest.mark.slow
def test_commit_decides_the_task_state(db: Database) -> None:
    app = make_app()
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(db.engine))
    init_celery(app, Session, commit=True)
    with Session.scope(commit=True):
        Session.add(Note(text="taken"))

    @task(app, "add_unflushed")
    def add_unflushed(text: str) -> str:
        Session.add(Note(text=text))  # inserted by the commit, after the body returned
        return text

    @task(
        app,
        "retried_on_commit",
        bind=True,
        autoretry_for=(sa.exc.IntegrityError,),
        max_retries=2,
        retry_kwargs={"countdown": 0},
    )
    def retried_on_commit(self: t.Any, text: str) -> str:
        # The first attempt's commit hits the unique constraint; the retry policy
        # of the task covers errors of the commit too.
        Session.add(Note(text="taken" if self.request.retries == 0 else text))
        return text

    seen = SeenAtSuccess(db.engine)
    signals.task_success.connect(seen, weak=False)
    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=WAIT
        ):
            ok = add_unflushed.delay("fresh")
            assert ok.get(timeout=WAIT) == "fresh"
            duplicate = add_unflushed.delay("taken")
            with pytest.raises(Exception) as failed:  # noqa: PT011 - any IntegrityError
                duplicate.get(timeout=WAIT)
            retried = retried_on_commit.delay("second")
            assert retried.get(timeout=WAIT) == "second"
    finally:
        signals.task_success.disconnect(seen)
    assert duplicate.state == "FAILURE"
    assert "IntegrityError" in type(failed.value).__name__ or "UNIQUE" in str(failed.value).upper()
    assert ok.state == retried.state == "SUCCESS"
    # Each success was committed before its result was stored: its note was
    # there when task_success came.
    assert seen.counts == [2, 3]
    with db.engine.connect() as conn:
        texts = sorted(conn.execute(sa.select(Note.text)).scalars())
    assert texts == ["fresh", "second", "taken"]
    assert Session._stats.created == Session._stats.removed == 5  # 4 runs + the seeding
    assert db.checkedout() == 0
    assert db.idle_in_transaction() == 0


def test_eager_commit_failure_fails_the_task(sqlite_engine: sa.Engine) -> None:
    app = make_app()
    app.finalize()
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(sqlite_engine))
    init_celery(app, Session, commit=True)

    @task(app, "add_eagerly")
    def add_eagerly(text: str) -> str:
        Session.add(Note(text=text))
        return text

    assert add_eagerly.apply(("one",)).get() == "one"
    result = add_eagerly.apply(("one",))
    assert result.state == "FAILURE"
    assert isinstance(result.result, sa.exc.IntegrityError)
    assert not Session.registry.has()
    with sqlite_engine.connect() as conn:
        assert list(conn.execute(sa.select(Note.text)).scalars()) == ["one"]
    assert sqlite_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_direct_call_inside_a_task_does_not_commit_its_unit(sqlite_engine: sa.Engine) -> None:
    app = make_app()
    app.finalize()
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(sqlite_engine))
    init_celery(app, Session, commit=True)

    @task(app, "nested", bind=True)
    def nested(self: t.Any, depth: int) -> int:
        Session.add(Note(text=f"depth-{depth}"))
        if depth == 0:
            # A plain call of the task's function: the same unit, committed
            # once, when the outer run returns, and only if it does.
            self.run(1)
            raise ValueError("outer failed")
        return depth

    # The first run's tracer was built before the task was wrapped (it was
    # defined after the app was finalized); the second one's after.
    assert nested.apply((0,)).state == "FAILURE"
    assert nested.apply((0,)).state == "FAILURE"
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count(Note.id))).scalar_one() == 0


def test_eager_task_joins_the_callers_unit(sqlite_engine: sa.Engine) -> None:
    app = make_app()
    Session: ScopedSession[SASession] = ScopedSession(sessionmaker(sqlite_engine))
    init_celery(app, Session, commit=True)
    rec = Recorder()
    add, fail, _ = define_tasks(app, Session, rec)

    with Session.scope(commit=True) as session:
        assert add.apply(("joined",)).get() == "joined"
        assert rec.runs[-1] == (False, session)  # the caller's session
        with sqlite_engine.connect() as conn:  # not committed by the task
            assert conn.execute(sa.select(sa.func.count(Note.id))).scalar_one() == 0
        assert fail.apply(("failed",)).state == "FAILURE"
        assert Session.registry.has()  # the caller's unit is still open
        session.rollback()
        session.add(Note(text="joined"))
    # Outside a unit an eager task gets its own, committed and closed.
    app.conf.task_always_eager = True
    assert add.delay("alone").get() == "alone"
    fresh, _ = rec.runs[-1]
    assert fresh
    assert not Session.registry.has()
    with sqlite_engine.connect() as conn:
        assert set(conn.execute(sa.select(Note.text)).scalars()) == {"joined", "alone"}
    assert sqlite_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_tasks_of_other_apps_are_left_alone() -> None:
    app, other = make_app(), make_app()
    Session = ScopedSession(TrivialSession)
    init_celery(app, Session)

    @task(other, "other")
    def sees_session() -> bool:
        return Session.registry.has()

    with Session.scope():
        Session()
        # Not wired: no unit was opened, so the caller's session is visible.
        assert sees_session.apply().get() is True


def test_worker_process_init_in_the_wiring_process_keeps_sessions() -> None:
    # Only a pool process (a fork child) drops what it inherited; the fork side
    # runs in test_worker_fork.py.
    app = make_app()
    Session = ScopedSession(TrivialSession)
    init_celery(app, Session)
    session = Session()
    signals.worker_process_init.send(sender=None)
    assert Session() is session
    assert session.closed == 0
    Session.remove()


def test_init_celery_arguments() -> None:
    app = make_app()
    Session = ScopedSession(TrivialSession)
    with pytest.raises(TypeError, match="Celery application first"):
        init_celery(Session, Session)
    with pytest.raises(TypeError, match="holds an object of type int"):
        init_celery(app, Session, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="commit must be True or False"):
        init_celery(app, Session, commit=1)  # type: ignore[arg-type]
    init_celery(app, Session)
    with pytest.raises(ScopedSessionError, match="already wired"):
        init_celery(app, Session)
