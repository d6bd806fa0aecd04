"""ScopedSession against sqlalchemy.orm.scoped_session, side by side.

Both registries get the same trivial session class, so what the first table
measures is the registry and proxy alone. Ours and theirs are timed in
alternating rounds in one process; each row reports the best round of each and
their ratio, against a bar: ours must take at most ``BAR`` of SQLAlchemy's time.

Then the proxy's share of a real query: ``execute(select(1))`` on an in-memory
SQLite engine, through our proxy, through SQLAlchemy's and on a session directly,
in many short rotating rounds. That table has no bar (it is informational), but
it is what users feel: the proxy's overhead as a share of the query.

    python benchmarks/bench_core.py           # full run
    python benchmarks/bench_core.py --quick   # a short run

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import timeit
import tracemalloc
import typing as t

import sqlalchemy as sa
from _share import print_share
from sqlalchemy.orm import scoped_session as sa_scoped_session
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession

#: Ours must take at most this share of SQLAlchemy's time, on every row.
BAR = 0.8
#: A proxied call with 1,000 other threads holding sessions, against one thread.
MANY_THREADS_BAR = 1.1
#: Memory left behind by get/remove cycles, in bytes.
GROWTH_BAR = 16_384


class TrivialSession:
    _is_asyncio = False  # read by SQLAlchemy's scoped_session on every call

    def close(self) -> None:
        pass


Variant = tuple[str, dict[str, t.Any]]


def best_of(stmt: str, env: dict[str, t.Any], number: int) -> float:
    """Nanoseconds per call of one timing round."""
    return timeit.timeit(stmt, globals=env, number=number) / number * 1e9


def time_rounds(variants: list[Variant], rounds: int, number: int) -> list[list[float]]:
    """Every round's ns/call of each variant, the order rotated every round so that
    drift in the machine's speed hits each one alike."""
    samples: list[list[float]] = [[] for _ in variants]
    for i in range(rounds):
        for k in range(len(variants)):
            j = (i + k) % len(variants)
            stmt, env = variants[j]
            samples[j].append(best_of(stmt, env, number))
    return samples


def compare(ours: Variant, theirs: Variant, rounds: int, number: int) -> tuple[float, float]:
    """Best-of-rounds ns/call for ours and theirs, timed alternately."""
    o, s = time_rounds([ours, theirs], rounds, number)
    return min(o), min(s)


def query_share(rounds: int, number: int) -> None:
    """Print the proxy's share of ``execute(select(1))`` on in-memory SQLite."""
    engine = sa.create_engine("sqlite://")
    factory = sessionmaker(engine)
    ours = ScopedSession(factory)
    theirs = sa_scoped_session(factory)
    direct = factory()
    query = sa.select(1)
    # Begin each session's transaction, compile and cache the query, outside the timing.
    ours.execute(query).scalar_one()
    theirs.execute(query).scalar_one()
    direct.execute(query).scalar_one()
    stmt = "S.execute(q)"
    o, s, d = time_rounds(
        [(stmt, {"S": target, "q": query}) for target in (ours, theirs, direct)], rounds, number
    )
    ours.remove()
    theirs.remove()
    direct.close()
    engine.dispose()
    print_share(
        f"A real query: Session.execute(select(1)), in-memory SQLite, {rounds} rotating"
        f" rounds of {number:,}",
        o,
        s,
        d,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, number = (5, 50_000) if args.quick else (15, 200_000)
    query_rounds, query_number = (21, 500) if args.quick else (151, 2_000)

    ours = ScopedSession(TrivialSession)
    # SQLAlchemy types its factory as a sessionmaker; any factory works at run time.
    factory = t.cast("t.Any", TrivialSession)
    theirs: sa_scoped_session[t.Any] = sa_scoped_session(factory)
    ours_keyed = ScopedSession(TrivialSession, scopefunc=threading.get_ident)
    theirs_keyed: sa_scoped_session[t.Any] = sa_scoped_session(factory, threading.get_ident)
    for registry in (ours, theirs, ours_keyed, theirs_keyed):
        registry()

    rows: list[tuple[str, float, float]] = []

    def row(name: str, stmt: str, number: int = number, keyed: bool = False) -> None:
        o, s = compare(
            (stmt, {"S": ours_keyed if keyed else ours}),
            (stmt, {"S": theirs_keyed if keyed else theirs}),
            rounds,
            number,
        )
        rows.append((name, o, s))

    row("proxied close()", "S.close()")
    row("Session()", "S()")
    row("Session(); Session.remove()", "S(); S.remove()", number // 4)
    row("proxied close(), scopefunc", "S.close()", keyed=True)

    print(
        f"Python {sys.version.split()[0]}, SQLAlchemy {sa.__version__},"
        f" best of {rounds} alternating rounds\n"
    )
    print(f"{'':32} {'ours':>9} {'SQLAlchemy':>11} {'ratio':>7} {'bar':>6}")
    failed = False
    for name, o, s in rows:
        ratio = o / s
        ok = ratio <= BAR
        failed |= not ok
        verdict = "ok" if ok else "MISSED"
        print(f"{name:32} {o:7.1f}ns {s:9.1f}ns {ratio:6.2f}x {BAR:5.2f}x  {verdict}")

    # Many live threads, each holding a session: the caller's lookup must not
    # depend on how many other scopes exist.
    one, _ = compare(("S.close()", {"S": ours}), ("S.close()", {"S": ours}), rounds, number)
    release = threading.Event()
    ready = threading.Barrier(1001)

    def hold() -> None:
        ours()
        ready.wait(timeout=60)
        release.wait(timeout=120)
        ours.remove()

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(1000)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=60)
    many, _ = compare(("S.close()", {"S": ours}), ("S.close()", {"S": ours}), rounds, number)
    release.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    ratio = many / one
    ok = ratio <= MANY_THREADS_BAR
    failed |= not ok
    print(
        f"\nproxied close() with 1,000 live threads holding sessions: {many:.1f}ns"
        f" vs {one:.1f}ns with one: {ratio:.2f}x (bar {MANY_THREADS_BAR:.2f}x)"
        f" {'ok' if ok else 'MISSED'}"
    )

    # Memory: get/remove cycles must leave nothing behind.
    cycles = 100_000
    ours.remove()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(cycles):
        ours()
        ours.remove()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    live = ours.stats().live
    ok = growth < GROWTH_BAR and live == 0
    failed |= not ok
    print(
        f"{cycles:,} get/remove cycles: tracemalloc growth {growth:+,} bytes"
        f" (bar < {GROWTH_BAR:+,}), sessions left in the registry: {live} (bar 0)"
        f" {'ok' if ok else 'MISSED'}"
    )
    for registry in (ours, theirs, ours_keyed, theirs_keyed):
        registry.remove()

    query_share(query_rounds, query_number)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
