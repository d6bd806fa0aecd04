"""After os.fork() the child starts with no sessions and never closes the parent's."""

from __future__ import annotations

import json
import os
import threading
import typing as t
import warnings

import pytest
from fakes import HAS_SQLALCHEMY, TrivialSession

from scoped_session import ScopedSession

# The tests on real databases skip without SQLAlchemy (their fixtures).
if HAS_SQLALCHEMY or t.TYPE_CHECKING:
    import sqlalchemy as sa
    from helpers import Database, checkedout
    from sqlalchemy.orm import Session, sessionmaker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


def in_child(body: t.Callable[[], dict[str, t.Any]]) -> dict[str, t.Any]:
    """Run ``body`` in a forked child and return what it reported."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        # pytest (and xdist) may run helper threads: fork then warns on 3.12+.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            report = body()
        except BaseException as exc:
            report, status = {"error": repr(exc)}, 1
        os.write(write, json.dumps(report).encode())
        os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, t.Any] = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


@pytest.mark.parametrize("scope", ["thread", "context", "scopefunc"])
def test_child_starts_empty_and_closes_nothing(scope: str) -> None:
    kwargs: dict[str, t.Any] = {"scope": scope} if scope != "scopefunc" else {}
    args: tuple[t.Any, ...] = (lambda: "k",) if scope == "scopefunc" else ()
    Scoped = ScopedSession(TrivialSession, *args, **kwargs)
    parent = Scoped()

    def child() -> dict[str, t.Any]:
        had = Scoped.registry.has()
        fresh = Scoped()
        removed_all = Scoped.remove_all()
        return {"had": had, "fresh": fresh is not parent, "closed": parent.closed, "n": removed_all}

    assert in_child(child) == {"had": False, "fresh": True, "closed": 0, "n": 1}
    assert Scoped() is parent
    assert parent.closed == 0
    Scoped.remove()


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_postgres_parent_connection_survives_children(db: Database) -> None:
    Scoped: ScopedSession[Session] = ScopedSession(sessionmaker(db.engine))
    pid_sql = sa.text("SELECT pg_backend_pid()")
    parent_pid = Scoped.scalar(pid_sql)  # a transaction is open on the connection
    # A second thread holds a session too: the child releases that dead thread's
    # storage, which must not close the parent's connection either.
    held, release = threading.Event(), threading.Event()
    thread_pids: list[int] = []

    def hold() -> None:
        thread_pids.append(Scoped.scalar(pid_sql))
        held.set()
        release.wait(timeout=30)
        thread_pids.append(Scoped.scalar(pid_sql))
        Scoped.remove()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(timeout=10)

    def child() -> dict[str, t.Any]:
        db.engine.dispose(close=False)  # the documented engine-side step
        had = Scoped.registry.has()
        pid = Scoped.scalar(pid_sql)
        Scoped.remove()
        return {"had": had, "pid": pid}

    reports = [in_child(child) for _ in range(3)]
    assert all(r["had"] is False for r in reports)
    assert all(r["pid"] not in (parent_pid, thread_pids[0]) for r in reports)
    # The parent's session, still in its transaction, keeps working.
    assert Scoped.scalar(pid_sql) == parent_pid
    Scoped.commit()
    release.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert thread_pids[0] == thread_pids[1]
    Scoped.remove()
    assert checkedout(db.engine) == 0
    assert db.idle_in_transaction() == 0


def test_sqlite_parent_session_survives_child(sqlite_engine: sa.Engine) -> None:
    Scoped: ScopedSession[Session] = ScopedSession(sessionmaker(sqlite_engine))
    Scoped.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    Scoped.execute(sa.text("INSERT INTO t VALUES (1)"))

    def child() -> dict[str, t.Any]:
        return {"had": Scoped.registry.has()}

    assert in_child(child) == {"had": False}
    Scoped.execute(sa.text("INSERT INTO t VALUES (2)"))
    Scoped.commit()
    assert Scoped.scalar(sa.text("SELECT count(*) FROM t")) == 2
    Scoped.remove()
    assert checkedout(sqlite_engine) == 0
