"""ScopedSession against sqlalchemy.orm.scoped_session, side by side.

Both registries get the same trivial session class, so that the first rows measure
the registry and the proxy alone: a proxied ``close()``, ``Session()``,
``Session(); Session.remove()``, and a proxied ``commit()`` on registries keyed by a
custom ``scopefunc``. Bar: ours takes at most ``BAR`` of SQLAlchemy's time on each.

Then, with the same rounds and the same table:

- a proxied ``close()`` while 1,000 other threads hold sessions of the registry,
  against the same on a registry that holds only the caller's: the lookup does not
  depend on how many scopes exist (bar ``MANY_THREADS_BAR``);
- a real query, ``execute(select(1))`` on in-memory SQLite, through our proxy and
  through SQLAlchemy's, each above the same call on a session directly (the floor):
  the proxy's own cost where users feel it, at most SQLAlchemy's (bar 1.0x).

Last, a check that 100,000 get/remove cycles leave nothing behind.

    python benchmarks/bench_core.py           # full run
    python benchmarks/bench_core.py --quick   # a short run

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import tracemalloc
import typing as t

import sqlalchemy as sa
from _share import Case, Result, Row, header, print_rows, sample, statement, verdict
from sqlalchemy.orm import scoped_session as sa_scoped_session
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession

#: Ours must take at most this share of SQLAlchemy's time, on the registry rows.
BAR = 0.8
#: A proxied call with 1,000 other threads holding sessions, against one thread.
MANY_THREADS_BAR = 1.1
#: The proxy's cost on a real query, against SQLAlchemy's proxy's.
QUERY_BAR = 1.0
#: Memory left behind by get/remove cycles, in bytes.
GROWTH_BAR = 16_384


class TrivialSession:
    _is_asyncio = False  # read by SQLAlchemy's scoped_session when it makes one

    def close(self) -> None:
        pass

    def commit(self) -> None:
        pass


#: name, statement (``S`` is the registry).
REGISTRY_ROWS = [
    ("proxied close()", "S.close()", False),
    ("Session()", "S()", False),
    ("Session(); Session.remove()", "S(); S.remove()", False),
    ("proxied commit(), scopefunc registry", "S.commit()", True),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, number = (7, 20_000) if args.quick else (25, 100_000)
    query_rounds, query_number = (21, 300) if args.quick else (101, 1_000)

    factory = t.cast("t.Any", TrivialSession)  # SQLAlchemy types it as a sessionmaker
    ours = ScopedSession(TrivialSession)
    theirs: sa_scoped_session[t.Any] = sa_scoped_session(factory)
    ours_keyed = ScopedSession(TrivialSession, scopefunc=threading.get_ident)
    theirs_keyed: sa_scoped_session[t.Any] = sa_scoped_session(factory, threading.get_ident)
    # 1,000 threads hold a session of this one while it is timed (below).
    crowded = ScopedSession(TrivialSession)
    for registry in (ours, theirs, ours_keyed, theirs_keyed, crowded):
        registry()

    engine = sa.create_engine("sqlite://")
    real = sessionmaker(engine)
    ours_real = ScopedSession(real)
    theirs_real = sa_scoped_session(real)
    direct = real()
    query = sa.select(1)
    for target in (ours_real, theirs_real, direct):
        # Begin each session's transaction, compile and cache the query, untimed.
        target.execute(query).scalar_one()

    cases: dict[tuple[str, str], Case] = {}
    units: dict[tuple[str, str], int] = {}
    for name, stmt, keyed in REGISTRY_ROWS:
        pair = (ours_keyed, theirs_keyed) if keyed else (ours, theirs)
        for side, registry in zip(("ours", "theirs"), pair, strict=True):
            cases[name, side] = statement(stmt, {"S": registry})
            units[name, side] = number // 4 if "remove" in stmt else number
    cases["crowded", "ours"] = statement("S.close()", {"S": crowded})
    units["crowded", "ours"] = number
    # The proxy costs a few tenths of a microsecond of a query's 15 or so: many short
    # rounds, so that the median of the rounds' differences sees it.
    query_cases = {
        side: statement("S.execute(q)", {"S": target, "q": query})
        for side, target in (("ours", ours_real), ("theirs", theirs_real), ("direct", direct))
    }
    query_times = sample(query_cases, query_rounds, query_number)

    # Every registry row is timed while the 1,000 threads wait: the crowded
    # registry's row and the one it is compared with see the same process.
    release = threading.Event()
    ready = threading.Barrier(1001)

    def hold() -> None:
        crowded()
        ready.wait(timeout=60)
        release.wait(timeout=600)
        crowded.remove()

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(1000)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=60)
    try:
        times = sample(cases, rounds, units)
    finally:
        release.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()

    rows = [
        Row(name, Result.of(times[name, "ours"], times[name, "theirs"]), BAR)
        for name, _, _ in REGISTRY_ROWS
    ]
    rows.append(
        Row(
            "close(), 1,000 threads hold sessions",
            Result.of(times["crowded", "ours"], times["proxied close()", "ours"]),
            MANY_THREADS_BAR,
        )
    )
    query_rows = [
        Row(
            "execute(select(1)), the proxy's cost",
            Result.of(query_times["ours"], query_times["theirs"], query_times["direct"]),
            QUERY_BAR,
        )
    ]
    ours_real.remove()
    theirs_real.remove()
    direct.close()
    engine.dispose()

    print(header("ScopedSession vs SQLAlchemy's scoped_session", rounds, f"{number:,} calls"))
    print(f"SQLAlchemy {sa.__version__}; both registries make the same do-nothing session")
    passed = print_rows(
        "The registry and the proxy (ns per call); anchor: SQLAlchemy's scoped_session, or"
        " for the 1,000-threads row ours with only the caller's session",
        rows,
    )
    passed &= print_rows(
        f"A real query on in-memory SQLite ({query_rounds} rounds of {query_number:,} calls),"
        " above the same"
        " call on the session itself (the floor); anchor: through SQLAlchemy's proxy",
        query_rows,
        unit="us",
    )
    passed &= check_growth()
    for registry in (ours, theirs, ours_keyed, theirs_keyed, crowded):
        registry.remove()
    return 0 if passed else 1


def check_growth() -> bool:
    """Get/remove cycles must leave nothing behind: no memory, no session."""
    cycles = 100_000
    registry = ScopedSession(TrivialSession)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(cycles):
        registry()
        registry.remove()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    left = registry.remove_all()
    ok = growth < GROWTH_BAR and left == 0
    print(
        f"\n{cycles:,} get/remove cycles: tracemalloc growth {growth:+,} bytes"
        f" (bar < {GROWTH_BAR:+,}), sessions left for remove_all(): {left} (bar 0)"
        f"  {verdict(ok)}"
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
