"""ScopedSession against sqlalchemy.orm.scoped_session, side by side.

Both registries get the same trivial session class, so what is measured is the
registry and proxy alone. Ours and theirs are timed in alternating rounds in one
process; each row reports the best round of each and their ratio.

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

from sqlalchemy.orm import scoped_session as sa_scoped_session

from scoped_session import ScopedSession, _scopes


class TrivialSession:
    _is_asyncio = False  # read by SQLAlchemy's scoped_session on every call

    def close(self) -> None:
        pass


def best_of(stmt: str, env: dict[str, t.Any], number: int) -> float:
    """Nanoseconds per call of one timing round."""
    return timeit.timeit(stmt, globals=env, number=number) / number * 1e9


def compare(
    ours: tuple[str, dict[str, t.Any]],
    theirs: tuple[str, dict[str, t.Any]],
    rounds: int,
    number: int,
) -> tuple[float, float]:
    """Best-of-rounds ns/call for ours and theirs, timed alternately."""
    best_ours = best_theirs = float("inf")
    for i in range(rounds):
        pair = [(ours, True), (theirs, False)]
        if i % 2:
            pair.reverse()
        for (stmt, env), is_ours in pair:
            ns = best_of(stmt, env, number)
            if is_ours:
                best_ours = min(best_ours, ns)
            else:
                best_theirs = min(best_theirs, ns)
    return best_ours, best_theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, number = (5, 50_000) if args.quick else (15, 200_000)

    ours = ScopedSession(TrivialSession)
    # SQLAlchemy types its factory as a sessionmaker; any factory works at run time.
    factory = t.cast("t.Any", TrivialSession)
    theirs: sa_scoped_session[t.Any] = sa_scoped_session(factory)
    key = object()
    ours_keyed = ScopedSession(TrivialSession, scopefunc=threading.get_ident)
    theirs_keyed: sa_scoped_session[t.Any] = sa_scoped_session(factory, threading.get_ident)
    for registry in (ours, theirs, ours_keyed, theirs_keyed):
        registry()
    del key

    rows: list[tuple[str, float, float, float]] = []

    def row(name: str, stmt: str, bar: float, number: int = number) -> None:
        o, s = compare((stmt, {"S": ours}), (stmt, {"S": theirs}), rounds, number)
        rows.append((name, o, s, bar))

    row("proxied close()", "S.close()", 0.5)
    row("Session()", "S()", 0.5)
    row("Session(); Session.remove()", "S(); S.remove()", 0.5, number // 4)
    o, s = compare(
        ("S.close()", {"S": ours_keyed}), ("S.close()", {"S": theirs_keyed}), rounds, number
    )
    rows.append(("proxied close(), scopefunc", o, s, 0.6))

    speedups = "on" if _scopes.speedups is not None else "off (pure Python)"
    print(
        f"Python {sys.version.split()[0]}, C speedups {speedups},"
        f" best of {rounds} alternating rounds\n"
    )
    print(f"{'':32} {'ours':>9} {'SQLAlchemy':>11} {'ratio':>7} {'bar':>6}")
    failed = False
    for name, o, s, bar in rows:
        ratio = o / s
        ok = ratio <= bar
        failed |= not ok
        verdict = "ok" if ok else "MISSED"
        print(f"{name:32} {o:7.1f}ns {s:9.1f}ns {ratio:6.2f}x {bar:5.2f}x  {verdict}")

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
    ok = ratio <= 1.1
    failed |= not ok
    print(
        f"\nproxied close() with 1,000 live threads holding sessions: {many:.1f}ns"
        f" vs {one:.1f}ns with one: {ratio:.2f}x (bar 1.10x) {'ok' if ok else 'MISSED'}"
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
    live = sum(1 for cell in ours._scope.cells() if cell.session is not None)
    ok = growth < 16_384 and live == 0
    failed |= not ok
    print(
        f"{cycles:,} get/remove cycles: tracemalloc growth {growth:+,} bytes,"
        f" sessions left in the registry: {live} {'ok' if ok else 'MISSED'}"
    )
    for registry in (ours, theirs, ours_keyed, theirs_keyed):
        registry.remove()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
