"""pytest plugin: run SQLAlchemy's own scoped-session tests with ours swapped in.

Loaded by ``tools/run_sqlalchemy_scoping_tests.py`` (``-p sqlalchemy_swap_plugin``) in
a pytest run over test files extracted from SQLAlchemy's sdist. Before those files are
imported it points the names they import (``from sqlalchemy.orm import
scoped_session``, ``from sqlalchemy.ext.asyncio import async_scoped_session``) at
:class:`scoped_session.ScopedSession` and
:class:`scoped_session.asyncio.AsyncScopedSession`. SQLAlchemy's own modules keep
theirs (``sqlalchemy.orm.events`` bound its ``scoped_session`` at import), so no
test passes because SQLAlchemy's internals were patched to accept ours.

It keeps, of the files given, only the tests listed in :data:`SUITE`, checks that
every collected test module sees our classes, and writes each test's outcome to the
JSON file named by ``--swap-results``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import json
import pathlib

import pytest


@dataclasses.dataclass(frozen=True)
class Selection:
    """The tests of one of SQLAlchemy's test files that use a scoped session."""

    #: The file, relative to the sdist's root; a glob, as files were renamed
    #: between versions (2.0.22 has ``test_scoping_py3k.py``).
    pattern: str
    #: Substrings of the node id that select its tests; empty: every test.
    keep: tuple[str, ...] = ()
    #: The database the file's tests run on: SQLite in memory, unless they need
    #: an asyncio driver (SQLAlchemy's ``async_dialect`` requirement) or a file
    #: (``multithreading_support``).
    url: str = "sqlite://"

    def selects(self, nodeid: str) -> bool:
        return not self.keep or any(part in nodeid for part in self.keep)


ASYNC_URL = "sqlite+aiosqlite://"
#: Relative to the folder pytest runs in.
FILE_URL = "sqlite:///scoping-tests.db"

SUITE = (
    # The two scoping test files, whole.
    Selection("test/orm/test_scoping.py"),
    Selection("test/ext/asyncio/test_scoping*.py", url=ASYNC_URL),
    # Tests elsewhere that build a scoped_session or async_scoped_session.
    Selection("test/orm/test_events.py", ("::test_scoped_session_",)),
    Selection("test/orm/test_deprecations.py", ("::DeprecationScopedSessionTest::",)),
    Selection("test/orm/test_bind.py", ("[scoped_session]",)),
    # Every test of this file runs with a module-level scoped_session made in setup.
    Selection("test/ext/test_serializer.py"),
    Selection("test/aaa_profiling/test_threading.py", ("::test_scoped_session_",), FILE_URL),
    Selection("test/ext/asyncio/test_session*.py", ("[async_scoped_session]",), ASYNC_URL),
)


def selection_for(path: str) -> Selection | None:
    """The entry of :data:`SUITE` for a test file path (relative, ``/``-separated)."""
    for selection in SUITE:
        if fnmatch.fnmatchcase(path, selection.pattern):
            return selection
    return None


#: The modules the tests import the registries from, and the names patched there.
#: (``sqlalchemy.orm.events`` keeps the class it imported: it must accept ours as is.)
PLACES = {
    "sqlalchemy.orm": "scoped_session",
    "sqlalchemy.orm.scoping": "scoped_session",
    "sqlalchemy.ext.asyncio": "async_scoped_session",
    "sqlalchemy.ext.asyncio.scoping": "async_scoped_session",
}


def _classes(config: pytest.Config) -> dict[str, object]:
    """The class each name must be in the tests: ours, or SQLAlchemy's own with
    ``--swap-baseline``."""
    if config.getoption("swap_baseline"):
        from sqlalchemy.ext.asyncio import async_scoped_session
        from sqlalchemy.orm import scoped_session

        return {"scoped_session": scoped_session, "async_scoped_session": async_scoped_session}
    from scoped_session import ScopedSession
    from scoped_session.asyncio import AsyncScopedSession

    return {"scoped_session": ScopedSession, "async_scoped_session": AsyncScopedSession}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sqlalchemy_swap_plugin")
    group.addoption("--swap-results", metavar="PATH", help="write the outcomes to this JSON file")
    group.addoption(
        "--swap-baseline",
        action="store_true",
        help="keep SQLAlchemy's own classes (to tell our failures from the set-up's)",
    )


#: Each selected test's outcome and its reason, by node id (one run per process).
_results: dict[str, dict[str, str]] = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # After SQLAlchemy's plugin has set its testing package up (at its own
    # sessionstart) and before any test module is imported (at collection).
    classes = _classes(session.config)
    for module_name, name in PLACES.items():
        setattr(importlib.import_module(module_name), name, classes[name])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        selection = selection_for(item.nodeid.partition("::")[0])
        (kept if selection and selection.selects(item.nodeid) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    classes = _classes(config)
    for module in {item.module for item in kept if isinstance(item, pytest.Function)}:
        for name, cls in classes.items():
            found = vars(module).get(name, cls)
            if found is not cls:
                raise pytest.UsageError(
                    f"{module.__name__}.{name} is {found!r}, not {cls!r}: the module"
                    " was imported before sqlalchemy_swap_plugin patched the name"
                )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    if report.failed:
        if entry["outcome"] not in ("failed", "error"):
            outcome = "failed" if report.when == "call" else "error"
            entry.update(outcome=outcome, reason=_reason(report))
    elif report.skipped and entry["outcome"] == "passed":
        outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        entry.update(outcome=outcome, reason=_reason(report))


def _reason(report: pytest.TestReport) -> str:
    """The first line of what failed, or why the test was skipped."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = str(crash.message)
    elif isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr)
    return (text.strip().splitlines() or [""])[0]


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("swap_results")
    if path:
        pathlib.Path(path).write_text(json.dumps(_results, indent=1, sort_keys=True))
