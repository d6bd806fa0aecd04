"""A session factory that is not SQLAlchemy's: ``Session()`` is typed as its own class
(checked by ``test_typing.py``).

Each ``reveal_type`` must reveal the type named in its line's comment, under both
checkers, and the file must type-check with no error. Never imported.
"""

from __future__ import annotations

from typing import reveal_type

from scoped_session import ScopedSession
from scoped_session.asyncio import AsyncScopedSession


class MySession:
    def close(self) -> None: ...


class MyAsyncSession:
    async def close(self) -> None: ...


Session = ScopedSession(MySession)
AsyncSession = AsyncScopedSession(MyAsyncSession)


def sync_use() -> None:
    reveal_type(Session())  # MySession
    reveal_type(Session(option=1))  # MySession
    reveal_type(Session.registry())  # MySession
    with Session.scope() as session:
        reveal_type(session)  # MySession
    mine: MySession = Session()
    reveal_type(mine)  # MySession
    Session.remove()


async def async_use() -> None:
    reveal_type(AsyncSession())  # MyAsyncSession
    reveal_type(AsyncSession.registry())  # MyAsyncSession
    async with AsyncSession.scope() as session:
        reveal_type(session)  # MyAsyncSession
    mine: MyAsyncSession = AsyncSession()
    reveal_type(mine)  # MyAsyncSession
    await AsyncSession.remove()
