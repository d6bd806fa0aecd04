"""Sessions that are not SQLAlchemy's, for pure-logic tests and benchmarks, and what
a test module needs to run without SQLAlchemy installed.

Nothing here imports SQLAlchemy: the real-database helpers live in ``helpers.py``,
which needs it. A module that mixes both kinds of test imports the SQLAlchemy names
under ``if HAS_SQLALCHEMY or t.TYPE_CHECKING:``; its real-database tests skip
without SQLAlchemy through their fixtures (``db``, ``sqlite_engine``, ``adb``, ...)
or, when they use none, through :data:`needs_sqlalchemy`.
"""

from __future__ import annotations

import importlib.util
import typing as t

import pytest

#: Whether SQLAlchemy is installed (the package runs without it).
HAS_SQLALCHEMY = importlib.util.find_spec("sqlalchemy") is not None

#: Why a real-database test skips without it.
NO_SQLALCHEMY = "SQLAlchemy is not installed: this test needs real sessions (extra 'sqlalchemy')"

#: Marks a test that uses SQLAlchemy without a fixture that skips for it.
needs_sqlalchemy = pytest.mark.skipif(not HAS_SQLALCHEMY, reason=NO_SQLALCHEMY)


class TrivialSession:
    """A session that does nothing, for pure-logic tests and benchmarks."""

    _is_asyncio = False  # SQLAlchemy's scoped_session reads this

    def __init__(self, **kw: t.Any) -> None:
        self.kw = kw
        self.closed = 0
        self.committed = 0

    def close(self) -> None:
        self.closed += 1

    def commit(self) -> None:
        self.committed += 1

    def rollback(self) -> None:
        pass


class AsyncTrivialSession:
    """An async session that does nothing, for pure-logic tests and benchmarks."""

    _is_asyncio = True  # SQLAlchemy's async_scoped_session reads this

    def __init__(self, **kw: t.Any) -> None:
        self.kw = kw
        self.closed = 0
        self.committed = 0

    async def close(self) -> None:
        self.closed += 1

    async def commit(self) -> None:
        self.committed += 1

    async def rollback(self) -> None:
        pass
