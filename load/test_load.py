"""The mixed load run: gunicorn (gthread) and werkzeug's threaded server at once,
many concurrent clients, PostgreSQL, every kind of endpoint including the
failing ones, background jobs, and injected faults (see load_app.py and
load_run.py).

Bounded: ``SCOPED_SESSION_LOAD_SECONDS`` (default 90) and
``SCOPED_SESSION_LOAD_REQUESTS`` (default 19,000) across two rounds, a warm-up
(a third of each) and the measured round; ``SCOPED_SESSION_LOAD_CLIENTS``
(default 48) clients. ``benchmarks/soak.py`` runs the same load for hours.
"""

from __future__ import annotations

import os
from pathlib import Path

import load_run
import pytest

pytestmark = [pytest.mark.load, pytest.mark.server]

POSTGRES_ENV = "SCOPED_SESSION_TEST_POSTGRES_URL"

#: Resident memory gunicorn's worker may gain between the end of the warm-up
#: and the end of the run, both measured when it is quiet.
RSS_GROWTH_LIMIT_KB = 4 * 1024
#: The in-process server starts a thread per connection in the test process
#: (which also runs the clients). With that churn glibc's per-thread arenas
#: fragment and its cache of dead threads' stacks (up to 40 MiB) fills and
#: empties: tox's load env caps the arenas at 2 and turns the stack cache off,
#: and the app trims the heap before reading its resident size. The bound is
#: still looser there, and Python's own heap is held tight instead.
RSS_GROWTH_LIMIT_IN_PROCESS_KB = 12 * 1024
#: The least bound on Python heap growth (blocks), for short runs.
BLOCKS_GROWTH_FLOOR = 8_000


def setting(name: str, default: float) -> float:
    value = os.environ.get(f"SCOPED_SESSION_LOAD_{name}")
    return float(value) if value else default


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.fail(f"The load run needs PostgreSQL: set {POSTGRES_ENV}.", pytrace=False)
    return url


def test_mixed_load(pg_url: str, tmp_path: Path) -> None:
    seconds = setting("SECONDS", 90)
    max_requests = int(setting("REQUESTS", 19_000))
    clients = int(setting("CLIENTS", 48))
    with load_run.LoadRun(pg_url, tmp_path) as run:
        warm_up = run.round(clients=clients, seconds=seconds / 3, max_requests=max_requests // 3)
        assert warm_up == []
        warm_requests = run.requests()
        measured = run.round(
            clients=clients,
            seconds=seconds - seconds / 3,
            max_requests=max_requests - warm_requests,
        )
        assert measured == []
        figures = run.figures(clients)
        assert run.finish() == []
    print("\n" + figures)

    # Every kind of request and fault happened on both servers.
    for name, tally in run.totals.items():
        missing = [kind for kind in load_run.MIX if not tally.count(kind)]
        assert missing == [], name
    growth = run.memory_growth()
    assert growth["gunicorn"][0] < RSS_GROWTH_LIMIT_KB, growth
    if os.environ.get("MALLOC_ARENA_MAX"):
        # Without it (set by tox's load env) glibc's arenas alone have grown the
        # in-process server by tens of MB in a run whose Python heap grew by a
        # few hundred blocks: resident memory says nothing about leaks there.
        # (With it but with the stack cache on, one run here measured +38.7 MiB
        # where the runs around it measured -18 MiB.)
        assert growth["werkzeug"][0] < RSS_GROWTH_LIMIT_IN_PROCESS_KB, growth
    # Python's heap settles a little more after the warm-up (a few thousand
    # blocks at most: caches, pools, peak concurrency), far less than one block
    # per request of a default run: a session, a cell or a frame kept per
    # request would fail this.
    measured_requests = run.requests() - warm_requests
    limit = max(measured_requests // 2, BLOCKS_GROWTH_FLOOR)
    assert all(blocks < limit for _, blocks in growth.values()), growth
