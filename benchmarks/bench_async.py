"""AsyncScopedSession against SQLAlchemy's async_scoped_session, side by side.

SQLAlchemy's is given ``scopefunc=asyncio.current_task`` (a session per task, as its
documentation recommends). Both registries get the same trivial async session
class, so that what is measured is the registry and the proxy alone:

- the proxy: ``await Session.close()``, ``await Session.execute(stmt)`` and
  ``Session.add(obj)``, each in a loop inside one task that holds its session. Bar:
  ours takes at most ``BAR`` of SQLAlchemy's time;
- a unit per task, as a server or a job runner makes them: a task that gets its
  session, then ``await Session.remove()``, started and awaited one after another;
  each side's cost is above the floor, a task that makes its own session and
  closes it. Bar: at most ``TASK_BAR`` of SQLAlchemy's; with the calls and
  allocations per task of each;
- a real query, ``await execute(select(1))`` on in-memory aiosqlite, through each
  proxy, above the same call on a session directly: the proxy's own cost where
  users feel it, at most SQLAlchemy's (bar 1.0x).

    python benchmarks/bench_async.py           # full run
    python benchmarks/bench_async.py --quick   # a short run

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import typing as t

import sqlalchemy as sa
from _share import Case, Result, Row, awaits, clock, count_async, header, print_rows, sample
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine

from scoped_session.asyncio import AsyncScopedSession

#: Ours must take at most this share of SQLAlchemy's time, on the proxy rows.
BAR = 0.8
#: A unit per task, above the floor.
TASK_BAR = 1.0
#: The proxy's cost on a real query, against SQLAlchemy's proxy's.
QUERY_BAR = 1.0


class TrivialAsyncSession:
    """Does nothing; has what both registries call."""

    _is_asyncio = True  # read by SQLAlchemy's async_scoped_session

    async def close(self) -> None:
        pass

    async def execute(self, statement: object, params: object = None, **kw: object) -> None:
        pass

    def add(self, instance: object, _warn: bool = True) -> None:
        pass


# One loop per statement, written out: a loop that called a function per statement
# would time the call too.
async def loop_close(S: t.Any, n: int) -> None:
    for _ in range(n):
        await S.close()


async def loop_execute(S: t.Any, n: int) -> None:
    stmt = object()
    for _ in range(n):
        await S.execute(stmt)


async def loop_add(S: t.Any, n: int) -> None:
    obj = object()
    for _ in range(n):
        S.add(obj)


#: name, loop.
PROXY_ROWS = [
    ("await Session.close()", loop_close),
    ("await Session.execute(stmt)", loop_execute),
    ("Session.add(obj)", loop_add),
]


Target = t.TypeVar("Target")


def in_task(
    runner: asyncio.Runner,
    begin: t.Callable[[], t.Awaitable[Target]],
    loop: t.Callable[[Target, int], t.Awaitable[None]],
    end: t.Callable[[Target], t.Awaitable[object]],
) -> Case:
    """A case that runs ``loop`` in a task of its own: ``begin()`` returns the loop's
    target (its session made before the timing), ``end(target)`` closes it after."""

    async def body(n: int) -> float:
        target = await begin()
        start = clock()
        await loop(target, n)
        elapsed = clock() - start
        await end(target)
        return elapsed / n

    return lambda n: runner.run(body(n))


def held(
    runner: asyncio.Runner,
    registry: t.Any,
    first: t.Callable[[t.Any], t.Awaitable[object]],
    loop: t.Callable[[t.Any, int], t.Awaitable[None]],
) -> Case:
    """``in_task()`` on a registry: ``first(registry)`` makes the task's session,
    ``remove()`` ends it."""

    async def begin() -> t.Any:
        await first(registry)
        return registry

    async def end(target: t.Any) -> None:
        await target.remove()

    return in_task(runner, begin, loop, end)


async def make(registry: t.Any) -> None:
    registry()


def task_per_unit(registry: t.Any) -> t.Callable[[], t.Awaitable[None]]:
    """A unit: a task that gets its session, then removes it."""

    async def unit() -> None:
        registry()
        await registry.remove()

    async def one() -> None:
        await asyncio.create_task(unit())

    return one


def floor_per_unit() -> t.Callable[[], t.Awaitable[None]]:
    """The floor: a task that makes its own session and closes it."""

    async def unit() -> None:
        await TrivialAsyncSession().close()

    async def one() -> None:
        await asyncio.create_task(unit())

    return one


def query_cases(runner: asyncio.Runner, factory: t.Any, query: t.Any) -> dict[str, Case]:
    """``await execute(query)`` through ours, through SQLAlchemy's and on a session
    directly; every round's task begins its session with an untimed query."""
    ours = AsyncScopedSession(factory)
    theirs = async_scoped_session(factory, scopefunc=asyncio.current_task)

    async def first(target: t.Any) -> None:
        (await target.execute(query)).scalar_one()

    async def loop(target: t.Any, n: int) -> None:
        for _ in range(n):
            await target.execute(query)

    async def begin_direct() -> t.Any:
        session = factory()
        await first(session)
        return session

    async def close(session: t.Any) -> None:
        await session.close()

    return {
        "ours": held(runner, ours, first, loop),
        "theirs": held(runner, theirs, first, loop),
        "direct": in_task(runner, begin_direct, loop, close),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args(argv)
    rounds, number = (7, 20_000) if args.quick else (25, 50_000)
    task_rounds, tasks, counted = (9, 2_000, 20) if args.quick else (31, 5_000, 50)
    query_rounds, query_number = (21, 100) if args.quick else (101, 200)

    factory = t.cast("t.Any", TrivialAsyncSession)  # typed as an async_sessionmaker
    ours = AsyncScopedSession(TrivialAsyncSession)
    theirs: async_scoped_session[t.Any] = async_scoped_session(
        factory, scopefunc=asyncio.current_task
    )
    with asyncio.Runner() as runner:
        proxy = sample(
            {
                (name, side): held(runner, registry, make, loop)
                for name, loop in PROXY_ROWS
                for side, registry in (("ours", ours), ("theirs", theirs))
            },
            rounds,
            number,
        )
        units = {
            "ours": task_per_unit(ours),
            "theirs": task_per_unit(theirs),
            "floor": floor_per_unit(),
        }
        task_times = sample(
            {side: awaits(runner, one) for side, one in units.items()}, task_rounds, tasks
        )
        task_counts = {side: runner.run(count_async(one, counted)) for side, one in units.items()}
        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            query_times = sample(
                query_cases(runner, async_sessionmaker(engine), sa.select(1)),
                query_rounds,
                query_number,
            )
        finally:
            runner.run(engine.dispose())

    print(
        header(
            "AsyncScopedSession vs SQLAlchemy's async_scoped_session(scopefunc=current_task)",
            rounds,
            f"{number:,} calls",
        )
    )
    print(f"SQLAlchemy {sa.__version__}; both registries make the same do-nothing session")
    passed = print_rows(
        "The proxy (ns per call), in one task that holds its session",
        [
            Row(name, Result.of(proxy[name, "ours"], proxy[name, "theirs"]), BAR)
            for name, _ in PROXY_ROWS
        ],
    )
    passed &= print_rows(
        f"A unit per task: get, then await remove() ({task_rounds} rounds of {tasks:,} tasks),"
        " above the floor: a task that makes its own session and closes it",
        [
            Row(
                "a task per unit",
                Result.of(task_times["ours"], task_times["theirs"], task_times["floor"]),
                TASK_BAR,
                (task_counts["ours"], task_counts["theirs"], task_counts["floor"]),
                per="task",
            )
        ],
        unit="us",
    )
    passed &= print_rows(
        f"A real query on in-memory aiosqlite ({query_rounds} rounds of {query_number:,}"
        " calls), above the same call on the session itself (the floor); anchor: through"
        " SQLAlchemy's proxy",
        [
            Row(
                "await execute(select(1)), the proxy's cost",
                Result.of(query_times["ours"], query_times["theirs"], query_times["direct"]),
                QUERY_BAR,
            )
        ],
        unit="us",
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
