"""The proxy's members that forward to :class:`sqlalchemy.orm.Session`.

Type checkers see SQLAlchemy's own ``scoped_session`` here, so that every member is
typed exactly as the installed SQLAlchemy types it, whichever release that is. At run
time the members are those that ``tools/generate_proxy.py`` wrote for the installed
SQLAlchemy's line (``_session_api_20.py``, ``_session_api_21.py``), which pass on
exactly the parameters that line's ``Session`` takes. The version is read without
importing SQLAlchemy; without it (sessions of another kind) the newest line is used.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import typing as t

__all__ = ["LINE", "SessionProxy", "installed_sqlalchemy", "line_for"]

#: The folder of an installed distribution's metadata: ``sqlalchemy-2.1.9.dist-info``.
_DIST_INFO = re.compile(r"sqlalchemy-(\d[^-]*)\.dist-info", re.IGNORECASE)


def installed_sqlalchemy() -> str | None:
    """The installed SQLAlchemy's version, or None; read without importing it."""
    module = sys.modules.get("sqlalchemy")
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version  # the one imported, should another be installed too
    spec = importlib.util.find_spec("sqlalchemy")  # finds it, imports nothing
    if spec is None:
        return None
    # The metadata beside the package that Python imports, which importlib.metadata
    # would read too: its import alone takes longer than this whole package's.
    for location in spec.submodule_search_locations or ():
        found = [_DIST_INFO.fullmatch(name) for name in os.listdir(os.path.dirname(location))]
        versions = [match[1] for match in found if match]
        if len(versions) == 1:
            return versions[0]
    from importlib import metadata

    try:
        return metadata.version("sqlalchemy")
    except metadata.PackageNotFoundError:
        return None


def line_for(version: str | None) -> str:
    """The suffix of the generated modules that fit SQLAlchemy ``version``: ``"20"``
    for 2.0 (and older), else ``"21"``, the newest."""
    found = re.match(r"(\d+)\.(\d+)", version or "")
    if found is not None and (int(found[1]), int(found[2])) < (2, 1):
        return "20"
    return "21"


#: The line whose members the proxies forward (``_async_session_api.py`` reads it too).
LINE = line_for(installed_sqlalchemy())

if t.TYPE_CHECKING:
    from sqlalchemy.orm.scoping import scoped_session

    SessionProxy: t.TypeAlias = scoped_session[t.Any]
elif LINE == "20":
    from ._session_api_20 import SessionProxy
else:
    from ._session_api_21 import SessionProxy
