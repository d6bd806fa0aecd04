"""The thread scope under gevent and eventlet: a session per greenlet, whatever the
import order, with one warning when the patching came after the registry was made.

Each case runs in a fresh interpreter (patching cannot be undone): a thread-scoped
``ScopedSession`` is made before or after ``gevent.monkey.patch_all()`` (or
``eventlet.monkey_patch()``), then two greenlets each take a session and switch to
each other while they hold it. test_greenlet_servers.py runs the same under a real
``gunicorn -k gevent``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import typing as t

import pytest

pytest.importorskip("gevent", reason="gevent is not installed")

MOVED = "threading.local was replaced"
TIMEOUT = 60.0

#: Run as ``python -c SCRIPT LIBRARY ORDER USE``; prints what it saw as JSON.
SCRIPT = r"""
import json, logging, sys

library, order, use = sys.argv[1:]


def patch():
    if library == "gevent":
        from gevent import monkey

        monkey.patch_all()
    else:
        import eventlet

        eventlet.monkey_patch()


if order == "after":
    patch()

from scoped_session import ScopedSession

records = []


class Collect(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])


logging.getLogger("scoped_session").addHandler(Collect())


class FakeSession:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


Session = ScopedSession(FakeSession)
made = []

if order == "made":  # a session in the main thread, then the patching
    made.append(Session())
if order in ("before", "made"):
    patch()

if library == "gevent":
    import gevent
    import gevent.event

    Event = gevent.event.Event
    spawn = gevent.spawn

    def join(greenlets):
        gevent.joinall(greenlets, timeout=10, raise_error=True)
        assert all(g.dead for g in greenlets)

else:
    import eventlet
    import eventlet.event

    class Event:
        def __init__(self):
            self.event = eventlet.event.Event()

        def set(self):
            self.event.send()

        def wait(self, timeout):
            with eventlet.Timeout(timeout):
                self.event.wait()

    spawn = eventlet.spawn

    def join(greenlets):
        for g in greenlets:
            g.wait()

got = {}
holds = {"a": Event(), "b": Event()}


def work(name, other):
    def use_it():
        session = Session()
        made.append(session)
        holds[name].set()
        holds[other].wait(10)  # the other greenlet takes its session meanwhile
        got[name] = [id(session), id(Session())]

    if use == "unit":
        with Session.scope():
            use_it()
    else:
        use_it()
        Session.remove()


def second():
    holds["a"].wait(10)
    work("b", "a")


join([spawn(work, "a", "b"), spawn(second)])
import threading

print(json.dumps({
    "got": got,
    "closed": [s.closed for s in made],
    "records": records,
    "local": threading.local.__module__,
}))
"""


def run(library: str, order: str, use: str) -> dict[str, t.Any]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, library, order, use],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return t.cast("dict[str, t.Any]", json.loads(proc.stdout))


LIBRARIES = [
    "gevent",
    pytest.param(
        "eventlet",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("eventlet") is None, reason="eventlet is not installed"
        ),
    ),
]


@pytest.mark.parametrize("use", ["session", "unit"])
@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("library", LIBRARIES)
def test_a_session_per_greenlet(library: str, order: str, use: str) -> None:
    seen = run(library, order, use)
    assert seen["local"].startswith(library)  # threading.local was patched
    (a_start, a_end), (b_start, b_end) = seen["got"]["a"], seen["got"]["b"]
    assert a_start == a_end  # kept while the other greenlet took its own
    assert b_start == b_end
    assert a_start != b_start
    assert seen["closed"] == [True, True]
    if order == "before":
        assert len(seen["records"]) == 1, seen["records"]
        level, message = seen["records"][0]
        assert level == "WARNING"
        assert MOVED in message
    else:
        assert seen["records"] == []


@pytest.mark.xfail(
    reason="a session made in a thread before the patching is handed to every greenlet"
    " of that thread: the proxy reads the old slot, which still holds it, and never"
    " reaches the check that moves the scope",
    strict=True,
)
def test_a_session_made_before_the_patching_is_not_shared() -> None:
    seen = run("gevent", "made", "session")
    (a_start, a_end), (b_start, b_end) = seen["got"]["a"], seen["got"]["b"]
    assert a_start != b_start
    assert (a_start, b_start) == (a_end, b_end)
