"""The package without SQLAlchemy: it imports, and its registries and integrations
run on sessions that are not SQLAlchemy's; the few helpers that only make sense
with SQLAlchemy (``object_session``, ``identity_key``, ``query_property``) fail
with an error that names it.

Without SQLAlchemy installed the checks run here, in the test process. With it
installed they run in a fresh interpreter, twice: once with SQLAlchemy importable,
which must end without having imported it, and once with any import of it made
to fail, which must behave as if it were not installed.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import subprocess
import sys
import threading
import typing as t
import wsgiref.util
from pathlib import Path

import pytest
from fakes import HAS_SQLALCHEMY, AsyncTrivialSession, TrivialSession

from scoped_session import ScopedSession, SessionAlreadyPresent

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo

WAIT = 30.0  # seconds: the bound on every wait in this file

#: The package and the integrations that need nothing beyond the standard library
#: (and pytest, for the plugin).
MODULES = [
    "scoped_session",
    "scoped_session.asgi",
    "scoped_session.asyncio",
    "scoped_session.pytest_plugin",
    "scoped_session.worker",
    "scoped_session.wsgi",
]

#: The integrations with a framework of their own, imported when it is installed.
FRAMEWORK_MODULES = {"scoped_session.celery": "celery", "scoped_session.flask": "flask"}

#: Skips a test that runs without SQLAlchemy when it is installed (see the
#: subprocess tests at the end, which cover the same checks then).
without_sqlalchemy = pytest.mark.skipif(
    HAS_SQLALCHEMY, reason="SQLAlchemy is installed: the subprocess tests check this"
)


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def sqlalchemy_modules() -> list[str]:
    """Every SQLAlchemy module imported in this process."""
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.partition(".")[0] == "sqlalchemy" and module is not None
    )


class Notebook(TrivialSession):
    """A session that is not SQLAlchemy's and keeps what it was given."""

    def __init__(self, **kw: t.Any) -> None:
        super().__init__(**kw)
        self.added: list[object] = []

    # ``_warn``: the proxy passes on every parameter of SQLAlchemy's Session.add().
    def add(self, instance: object, *, _warn: bool = True) -> None:
        self.added.append(instance)


class AsyncNotebook(AsyncTrivialSession):
    """The same for asyncio: ``add()`` is plain, as on SQLAlchemy's AsyncSession."""

    def __init__(self, **kw: t.Any) -> None:
        super().__init__(**kw)
        self.added: list[object] = []

    def add(self, instance: object, *, _warn: bool = True) -> None:
        self.added.append(instance)


# -- the checks: plain functions, so that a fresh interpreter can run them too ------------


def check_the_modules_import() -> None:
    for name in MODULES + [m for m, needs in FRAMEWORK_MODULES.items() if installed(needs)]:
        importlib.import_module(name)


def check_a_registry() -> None:
    Session = ScopedSession(Notebook)
    session = Session()
    assert Session() is session
    note = object()
    Session.add(note)  # a member the proxy writes out
    Session.commit()
    assert session.added == [note]
    assert session.committed == 1
    assert Session().closed == 0  # the session's own members: through Session()
    with pytest.raises(AttributeError, match="has no attribute 'closed'"):
        Session.closed  # type: ignore[attr-defined]  # noqa: B018  # not forwarded
    with pytest.raises(SessionAlreadyPresent):
        Session(autoflush=False)
    Session.remove()
    assert session.closed == 1
    assert not Session.registry.has()

    with Session.scope(commit=True):
        in_unit = Session()
        Session.add(note)
    assert (in_unit.added, in_unit.committed, in_unit.closed) == ([note], 1, 1)
    assert not Session.registry.has()

    # A session in another thread that is still running: remove_all() closes it.
    mine, theirs = Session(), []
    made, release = threading.Event(), threading.Event()

    def other() -> None:
        theirs.append(Session())
        made.set()
        release.wait(WAIT)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert made.wait(WAIT)
        assert tuple(Session.stats()) == (2, 4, 2, 0)  # live, created, removed, reaped
        assert Session.remove_all() == 2
    finally:
        release.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert mine.closed == theirs[0].closed == 1
    assert tuple(Session.stats()) == (0, 4, 4, 0)


def check_an_async_registry() -> None:
    from scoped_session.asyncio import AsyncScopedSession

    Session = AsyncScopedSession(AsyncNotebook)

    async def child() -> AsyncNotebook:
        session = Session()
        await Session.remove()
        return session

    async def main() -> None:
        session = Session()
        assert Session() is session
        note = object()
        Session.add(note)
        await Session.commit()
        assert (session.added, session.committed) == ([note], 1)
        theirs = await asyncio.create_task(child())  # a task has its own session
        assert theirs is not session
        assert theirs.closed == 1
        await Session.remove()
        assert session.closed == 1

        async with Session.scope(commit=True):
            in_unit = Session()
            Session.add(note)
        assert (in_unit.added, in_unit.committed, in_unit.closed) == ([note], 1, 1)

        left = Session()
        assert tuple(Session.stats()) == (1, 4, 3, 0)  # live, created, removed, reaped
        assert await Session.remove_all() == 1
        assert left.closed == 1

    asyncio.run(main())


def check_the_wsgi_middleware() -> None:
    from scoped_session.wsgi import ScopedSessionMiddleware

    made: list[Notebook] = []

    def factory() -> Notebook:
        made.append(Notebook())
        return made[-1]

    Session = ScopedSession(factory)

    def app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        Session.add("note")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    statuses: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> t.Callable[[bytes], object]:
        statuses.append(status)
        return lambda data: None

    environ: dict[str, t.Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    body = ScopedSessionMiddleware(app, Session, commit=True)(environ, start_response)
    try:
        assert b"".join(body) == b"ok"
    finally:
        getattr(body, "close", lambda: None)()
    assert statuses == ["200 OK"]
    assert [(s.added, s.committed, s.closed) for s in made] == [(["note"], 1, 1)]


def check_the_worker_pool() -> None:
    from scoped_session.worker import ScopedThreadPoolExecutor

    made: list[Notebook] = []
    lock = threading.Lock()

    def factory() -> Notebook:
        with lock:
            made.append(Notebook())
            return made[-1]

    Session = ScopedSession(factory)
    with ScopedThreadPoolExecutor(Session, max_workers=2, commit=True) as pool:
        futures = [pool.submit(Session.add, n) for n in range(4)]
        assert [f.result(timeout=WAIT) for f in futures] == [None] * 4
    # A fresh session per job, committed and closed when the job ends.
    assert {n for s in made for n in s.added} == {0, 1, 2, 3}
    assert [(len(s.added), s.committed, s.closed) for s in made] == [(1, 1, 1)] * 4


def check_flask() -> None:
    from flask import Flask

    from scoped_session.flask import FlaskScopedSession

    app = Flask(__name__)
    made: list[Notebook] = []

    def factory() -> Notebook:
        made.append(Notebook())
        return made[-1]

    Session = FlaskScopedSession(factory, app, commit=True)

    @app.post("/notes")
    def add() -> str:
        Session.add("note")
        return "added"

    assert app.test_client().post("/notes").data == b"added"
    assert [(s.added, s.committed, s.closed) for s in made] == [(["note"], 1, 1)]


def check_the_sqlalchemy_only_helpers_name_it() -> None:
    """Only run where SQLAlchemy cannot be imported: each helper would import it."""
    from scoped_session.asyncio import AsyncScopedSession

    Session = ScopedSession(Notebook)
    AsyncSession = AsyncScopedSession(AsyncNotebook)
    calls: list[t.Callable[[], object]] = [
        lambda: Session.object_session(object()),
        lambda: Session.identity_key(Notebook, 1),
        lambda: AsyncSession.object_session(object()),
    ]

    class NotMapped:
        query = Session.query_property()

    calls.append(lambda: NotMapped.query)
    for call in calls:
        with pytest.raises(ImportError, match=r"(?i)sqlalchemy") as info:  # ModuleNotFoundError
            call()
        assert (info.value.name or "").partition(".")[0] == "sqlalchemy"
    assert Session.stats().created == 0  # none of them made a session


CHECKS = [
    check_the_modules_import,
    check_a_registry,
    check_an_async_registry,
    check_the_wsgi_middleware,
    check_the_worker_pool,
    check_flask,
]


def run_all(*, helpers: bool) -> None:
    """Every check in turn (``helpers``: also the SQLAlchemy-only helpers)."""
    for check in CHECKS:
        if check is not check_flask or installed("flask"):
            check()
    if helpers:
        check_the_sqlalchemy_only_helpers_name_it()


# -- without SQLAlchemy: here ---------------------------------------------------------


@without_sqlalchemy
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_without_sqlalchemy(check: t.Callable[[], None]) -> None:
    if check is check_flask:
        pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
    check()
    assert sqlalchemy_modules() == []


@without_sqlalchemy
def test_the_sqlalchemy_only_helpers_name_it() -> None:
    check_the_sqlalchemy_only_helpers_name_it()


# -- with SQLAlchemy installed: in a fresh interpreter -----------------------------------


@pytest.mark.skipif(
    not HAS_SQLALCHEMY, reason="SQLAlchemy is not installed: the checks above ran in process"
)
@pytest.mark.parametrize("blocked", [False, True], ids=["not-imported", "import-blocked"])
def test_in_a_fresh_interpreter(blocked: bool) -> None:
    """Not imported: the package and its use never import SQLAlchemy. Blocked: any
    import of it fails, as if it were not installed, and everything still works."""
    code = "\n".join(
        [
            "import sys",
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})",
            "sys.modules['sqlalchemy'] = None" if blocked else "",
            "import test_without_sqlalchemy as checks",
            f"checks.run_all(helpers={blocked})",
            "print(checks.sqlalchemy_modules())",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
