"""AsyncScopedSession against SQLAlchemy's async_scoped_session, side by side.

SQLAlchemy's is given ``scopefunc=asyncio.current_task`` (a session per task, as its
documentation recommends). Both registries get the same trivial async session
class, so what is measured is the registry and proxy alone: each statement runs in
a loop inside a task, ours and theirs in alternating rounds in one process; each
row reports the best round of each and their ratio, against a bar: ours must take
at most ``BAR`` of SQLAlchemy's time, on every row.

Then the proxy's share of a real query: ``await execute(select(1))`` on an
in-memory aiosqlite engine, through our proxy, through SQLAlchemy's and on a
session directly, in many short rotating rounds. That table has no bar (it is
informational), but it is what users feel: the proxy's overhead as a share of
the query.

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

import sqlalchemy as sa
from _share import print_share
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine

from scoped_session.asyncio import AsyncScopedSession

#: Ours must take at most this share of SQLAlchemy's time, on every row.
BAR = 0.8


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


async def query_loop(target: t.Any, statement: t.Any, number: int) -> float:
    """Nanoseconds per ``await target.execute(statement)``."""
    start = time.perf_counter()
    for _ in range(number):
        await target.execute(statement)
    return (time.perf_counter() - start) / number * 1e9


async def query_share(rounds: int, number: int) -> list[list[float]]:
    """Every round's ns per ``await execute(select(1))`` on in-memory aiosqlite:
    through ours, through SQLAlchemy's, and on a session directly (no proxy), the
    order rotated every round. Runs in one task, whose session each registry keeps
    from the first (untimed) query to the end."""
    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)
    ours = AsyncScopedSession(factory)
    theirs = async_scoped_session(factory, scopefunc=asyncio.current_task)
    direct = factory()
    query = sa.select(1)
    targets: list[t.Any] = [ours, theirs, direct]
    samples: list[list[float]] = [[] for _ in targets]
    try:
        for target in targets:  # begin, compile and cache, outside the timing
            (await target.execute(query)).scalar_one()
        for i in range(rounds):
            for k in range(len(targets)):
                j = (i + k) % len(targets)
                samples[j].append(await query_loop(targets[j], query, number))
    finally:
        await ours.remove()
        await theirs.remove()
        await direct.close()
        await engine.dispose()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, number = (5, 20_000) if args.quick else (15, 100_000)
    query_rounds, query_number = (21, 100) if args.quick else (151, 200)
    rows = asyncio.run(measure(rounds, number))

    print(
        f"Python {sys.version.split()[0]}, SQLAlchemy {sa.__version__},"
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

    through_ours, through_theirs, direct = asyncio.run(query_share(query_rounds, query_number))
    print_share(
        f"A real query: await Session.execute(select(1)), in-memory aiosqlite,"
        f" {query_rounds} rotating rounds of {query_number:,}",
        through_ours,
        through_theirs,
        direct,
        width=36,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
