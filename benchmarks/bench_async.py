"""AsyncScopedSession against SQLAlchemy's async_scoped_session, side by side.

SQLAlchemy's is given ``scopefunc=asyncio.current_task`` (a session per task, as its
documentation recommends). Both registries get the same trivial async session
class, so what is measured is the registry and proxy alone: each statement runs in
a loop inside a task, ours and theirs in alternating rounds in one process; each
row reports the best round of each and their ratio.

    python benchmarks/bench_async.py           # full run
    python benchmarks/bench_async.py --quick   # a short run

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import typing as t

from sqlalchemy.ext.asyncio import async_scoped_session

from scoped_session import _tasks
from scoped_session.asyncio import AsyncScopedSession

#: Ours must take at most this share of SQLAlchemy's time.
BAR = 0.6


class TrivialAsyncSession:
    """Does nothing; has what both registries call."""

    _is_asyncio = True  # read by SQLAlchemy's async_scoped_session

    async def close(self) -> None:
        pass

    async def execute(self, statement: object, params: object = None, **kw: object) -> None:
        pass

    def add(self, instance: object, _warn: bool = True) -> None:
        pass


#: name, statement (run in an ``async def`` loop with ``S`` the registry).
ROWS = [
    ("await Session.close()", "await S.close()"),
    ("await Session.execute(stmt)", "await S.execute(stmt)"),
    ("Session.add(obj)", "S.add(obj)"),
    ("Session(); await Session.remove()", "S(); await S.remove()"),
]


def timed(stmt: str) -> t.Callable[[t.Any, int], t.Awaitable[float]]:
    """An async function that runs ``stmt`` ``number`` times in a task of its own
    (the caller's session made first) and returns nanoseconds per run."""
    source = (
        "async def loop(S, number):\n"
        "    stmt = obj = object()\n"
        "    S()\n"
        "    start = perf_counter()\n"
        "    for _ in range(number):\n"
        f"        {stmt}\n"
        "    elapsed = perf_counter() - start\n"
        "    await S.remove()\n"
        "    return elapsed / number * 1e9\n"
    )
    namespace: dict[str, t.Any] = {"perf_counter": time.perf_counter}
    exec(source, namespace)
    loop = namespace["loop"]

    async def run(registry: t.Any, number: int) -> float:
        return t.cast("float", await asyncio.create_task(loop(registry, number)))

    return run


async def compare(
    stmt: str, ours: t.Any, theirs: t.Any, rounds: int, number: int
) -> tuple[float, float]:
    """Best-of-rounds ns per run for ours and theirs, timed alternately."""
    run = timed(stmt)
    best_ours = best_theirs = float("inf")
    for i in range(rounds):
        pair = [(ours, True), (theirs, False)]
        if i % 2:
            pair.reverse()
        for registry, is_ours in pair:
            ns = await run(registry, number)
            if is_ours:
                best_ours = min(best_ours, ns)
            else:
                best_theirs = min(best_theirs, ns)
    return best_ours, best_theirs


async def measure(rounds: int, number: int) -> list[tuple[str, float, float]]:
    ours = AsyncScopedSession(TrivialAsyncSession)
    # SQLAlchemy types its factory as an async_sessionmaker; any factory works.
    factory = t.cast("t.Any", TrivialAsyncSession)
    theirs: async_scoped_session[t.Any] = async_scoped_session(
        factory, scopefunc=asyncio.current_task
    )
    rows = []
    for name, stmt in ROWS:
        n = number // 4 if "remove" in stmt else number
        o, s = await compare(stmt, ours, theirs, rounds, n)
        rows.append((name, o, s))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, number = (5, 20_000) if args.quick else (15, 100_000)
    rows = asyncio.run(measure(rounds, number))

    speedups = "on" if _tasks.ASYNC_SPEEDUPS is not None else "off (pure Python)"
    print(
        f"Python {sys.version.split()[0]}, C speedups {speedups},"
        f" best of {rounds} alternating rounds"
    )
    print("theirs: sqlalchemy async_scoped_session(scopefunc=asyncio.current_task)\n")
    print(f"{'':36} {'ours':>9} {'SQLAlchemy':>11} {'ratio':>7} {'bar':>6}")
    failed = False
    for name, o, s in rows:
        ratio = o / s
        ok = ratio <= BAR
        failed |= not ok
        verdict = "ok" if ok else "MISSED"
        print(f"{name:36} {o:7.1f}ns {s:9.1f}ns {ratio:6.2f}x {BAR:5.2f}x  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
