"""The proxy's members that forward to :class:`sqlalchemy.ext.asyncio.AsyncSession`.

As in ``_session_api.py``: type checkers see SQLAlchemy's own ``async_scoped_session``;
at run time the members are those generated for the installed SQLAlchemy's line
(``_async_session_api_20.py``, ``_async_session_api_21.py``).
"""

from __future__ import annotations

import typing as t

from ._session_api import LINE

__all__ = ["AsyncSessionProxy"]

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio.scoping import async_scoped_session

    AsyncSessionProxy: t.TypeAlias = async_scoped_session[t.Any]
elif LINE == "20":
    from ._async_session_api_20 import AsyncSessionProxy
else:
    from ._async_session_api_21 import AsyncSessionProxy
