"""Fork: children get sessions on their own connections; the parent's keep working.

Each scenario runs in a fresh interpreter (this file run as a script): forking
the multi-threaded pytest process (xdist, server threads) could deadlock the
child and warns on Python 3.12+. The script's parent has a single thread; its
children report through pipes and end with ``os._exit``; every wait is bounded.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import select
import subprocess
import sys
import traceback
import typing as t

import pytest

pytest.importorskip(
    "sqlalchemy",
    reason="SQLAlchemy is not installed: the children connect to PostgreSQL through it",
)

import sqlalchemy as sa
from helpers import Base, Note, drop_schema, make_postgres_engine
from sqlalchemy.orm import Session as SASession
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession
from scoped_session.worker import dispose_engines_after_fork

CHILDREN = 3
WAIT = 30
PID = sa.text("SELECT pg_backend_pid()")


# -- the scenario (runs in the subprocess) --------------------------------------


def child_work(Session: ScopedSession[SASession], n: int) -> dict[str, t.Any]:
    inherited = Session.registry.has()
    with Session.scope(commit=True) as session:
        pid = session.execute(PID).scalar_one()
        session.add(Note(text=f"child-{n}"))
    return {"inherited": inherited, "pid": pid, "os_pid": os.getpid()}


#: Set in the "celery" mode: what a prefork pool process runs first.
on_child_start: list[t.Callable[[], object]] = []


def forked_child(Session: ScopedSession[SASession], n: int, fd: int) -> t.NoReturn:
    code = 1
    try:
        for hook in on_child_start:
            hook()
        os.write(fd, json.dumps(child_work(Session, n)).encode())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def read_child(fd: int) -> dict[str, t.Any]:
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], WAIT)
        if not ready:
            raise TimeoutError("a child did not report in time")
        chunk = os.read(fd, 65536)
        if not chunk:  # EOF: the child has exited
            break
        data += chunk
    os.close(fd)
    return t.cast("dict[str, t.Any]", json.loads(data))


def run_os_fork(Session: ScopedSession[SASession], count: int) -> list[dict[str, t.Any]]:
    children = []
    for n in range(count):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            forked_child(Session, n, write_fd)
        os.close(write_fd)
        children.append((pid, read_fd))
    reports = []
    for pid, read_fd in children:
        reports.append(read_child(read_fd))
        _, status = os.waitpid(pid, 0)  # the pipe hit EOF: it has exited
        reports[-1]["exit"] = os.waitstatus_to_exitcode(status)
    return reports


def mp_child(
    Session: ScopedSession[SASession], n: int, conn: multiprocessing.connection.Connection
) -> None:
    conn.send(child_work(Session, n))
    conn.close()


def run_multiprocessing(Session: ScopedSession[SASession], count: int) -> list[dict[str, t.Any]]:
    ctx = multiprocessing.get_context("fork")
    started = []
    for n in range(count):
        parent_end, child_end = ctx.Pipe(duplex=False)
        process = ctx.Process(target=mp_child, args=(Session, n, child_end))
        process.start()
        child_end.close()
        started.append((process, parent_end))
    reports = []
    for process, parent_end in started:
        if not parent_end.poll(WAIT):
            raise TimeoutError("a child did not report in time")
        report = parent_end.recv()
        process.join(WAIT)
        if process.is_alive():
            raise TimeoutError("a child did not exit in time")
        report["exit"] = process.exitcode
        reports.append(report)
    return reports


def scenario(mode: str, url: str, app_name: str, schema: str, dispose: bool) -> dict[str, t.Any]:
    engine = sa.create_engine(
        url, connect_args={"application_name": app_name, "options": f"-csearch_path={schema}"}
    )
    if dispose:
        dispose_engines_after_fork(engine)
    Session = ScopedSession(sessionmaker(engine))
    if mode == "celery":
        from celery import Celery, signals  # type: ignore[import-untyped]

        from scoped_session.celery import init_celery

        init_celery(Celery("fork_test", set_as_current=False), Session)
        on_child_start.append(lambda: signals.worker_process_init.send(sender=None))
    # The parent holds a session in an open transaction (connection A) and
    # the pool holds an idle connection (B): a child must use neither.
    parent_pid = Session.execute(PID).scalar_one()
    Session.add(Note(text="parent"))
    Session.flush()
    with engine.connect() as conn:
        idle_pid = conn.execute(PID).scalar_one()
    # Without the helper, children would share one socket: run only one then.
    count = CHILDREN if dispose else 1
    run = run_multiprocessing if mode == "multiprocessing" else run_os_fork
    children = run(Session, count)
    result: dict[str, t.Any] = {"parent_pid": parent_pid, "idle_pid": idle_pid}
    result["children"] = children
    if dispose:
        # The parent's transaction and its pooled connection survived.
        result["parent_pid_after"] = Session.execute(PID).scalar_one()
        Session.commit()
        Session.remove()
        with engine.connect() as a, engine.connect() as b:
            result["pool_pids_after"] = sorted(
                [a.execute(PID).scalar_one(), b.execute(PID).scalar_one()]
            )
        with engine.connect() as conn:
            result["notes"] = sorted(conn.execute(sa.select(Note.text)).scalars())
        result["checked_out"] = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    return result


# -- the tests ------------------------------------------------------------------


@pytest.fixture
def pg_schema(pg_url: str) -> t.Iterator[tuple[str, str]]:
    engine, app_name, schema = make_postgres_engine(pg_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield app_name, schema
    drop_schema(pg_url, schema)


def run_scenario(
    mode: str, pg_url: str, app_name: str, schema: str, dispose: bool
) -> dict[str, t.Any]:
    args = [mode, pg_url, app_name, schema, "dispose" if dispose else "keep"]
    proc = subprocess.run(
        [sys.executable, "-W", "error", __file__, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return t.cast("dict[str, t.Any]", json.loads(proc.stdout))


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["os.fork", "multiprocessing", "celery"])
def test_fork_children_get_their_own_connections(
    pg_url: str, pg_schema: tuple[str, str], mode: str
) -> None:
    result = run_scenario(mode, pg_url, *pg_schema, dispose=True)
    parent = {result["parent_pid"], result["idle_pid"]}
    children = result["children"]
    assert [c["exit"] for c in children] == [0] * CHILDREN
    assert not any(c["inherited"] for c in children)
    child_pids = [c["pid"] for c in children]
    assert len(set(child_pids)) == CHILDREN
    assert not parent & set(child_pids)
    assert result["parent_pid_after"] == result["parent_pid"]
    assert result["pool_pids_after"] == sorted(parent)
    assert result["notes"] == sorted(["parent", *(f"child-{n}" for n in range(CHILDREN))])
    assert result["checked_out"] == 0


@pytest.mark.postgres
def test_fork_without_dispose_shares_the_parents_pooled_connection(
    pg_url: str, pg_schema: tuple[str, str]
) -> None:
    # The control: without the helper a child takes the parent's idle pooled
    # connection (several children at once corrupt it), which is what the
    # test above would catch.
    result = run_scenario("os.fork", pg_url, *pg_schema, dispose=False)
    children = result["children"]
    assert [c["exit"] for c in children] == [0]
    assert children[0]["pid"] == result["idle_pid"]
    assert not any(c["inherited"] for c in children)  # sessions: the core's part


if __name__ == "__main__":
    mode, url, app, schema_name, dispose_arg = sys.argv[1:6]
    print(json.dumps(scenario(mode, url, app, schema_name, dispose_arg == "dispose")))
