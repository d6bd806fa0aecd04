"""The gunicorn config file of test_greenlet_servers.py (``-c``).

With ``SS_GL_EARLY=1`` it imports the package and makes the app while gunicorn
loads it, in the arbiter: before any gevent worker monkey-patches, as a config
file that imports the application does. Otherwise it imports neither.
"""

from __future__ import annotations

import os
import typing as t

if os.environ.get("SS_GL_EARLY") == "1":
    import greenlet_server_app

    import scoped_session  # noqa: F401

    greenlet_server_app.app_from_env()


def post_worker_init(worker: t.Any) -> None:
    """After the worker patched and loaded the app, before its first request:
    psycopg2 waits through gevent from now on. Then the worker says it is ready
    with a file ``ready-PID`` in ``SS_GL_READY_DIR``, if set."""
    from psycogreen.gevent import patch_psycopg  # type: ignore[import-untyped]

    patch_psycopg()
    ready = os.environ.get("SS_GL_READY_DIR")
    if ready:
        with open(os.path.join(ready, f"ready-{os.getpid()}"), "w"):
            pass
