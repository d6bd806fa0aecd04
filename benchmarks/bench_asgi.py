"""Per-request overhead of the ASGI ScopedSessionMiddleware, side by side in one process.

Each variant serves the same trivial ASGI app, which uses its request's session
once and sends a finished body (``http.response.start`` and one
``http.response.body``). The registry is an ``AsyncScopedSession`` of a trivial
async session class, so that only the bookkeeping is measured:

- ours: ``ScopedSessionMiddleware(app, Session, commit=...)``; a unit of work per
  request, ended after the last body message (committed first with
  ``commit=True``, before the status goes out).
- raw middleware: ``try: await app(scope, receive, send) finally: await
  Session.remove()`` on the same kind of registry (with ``commit=True``:
  ``await Session.commit()`` after the app, then the remove).

The app is called directly, in one event loop, each request in a task of its
own as a server runs it, with a prepared scope, receive and send. Overhead =
variant time - the bare app's time (the bare app makes and closes its session
itself). Rounds are interleaved; each row shows the median
over rounds. Bar: ours <= 1.0x the raw middleware's overhead, with
``commit=False`` and with ``commit=True``.

    python benchmarks/bench_asgi.py [--quick]

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import typing as t

from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession

Message = t.MutableMapping[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]
ASGIApp = t.Callable[[Message, Receive, Send], t.Coroutine[t.Any, t.Any, None]]

#: Ours must cost at most this share of the raw middleware's overhead.
BAR = 1.0

START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
BODY: Message = {"type": "http.response.body", "body": b"ok", "more_body": False}


class TrivialAsyncSession:
    async def commit(self) -> None:
        pass

    async def close(self) -> None:
        pass


def make_app(get_session: t.Callable[[], t.Awaitable[object]]) -> ASGIApp:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await get_session()
        await send(START)
        await send(BODY)

    return app


def bare_app(commit: bool) -> ASGIApp:
    async def get_session() -> object:
        session = TrivialAsyncSession()
        if commit:
            await session.commit()
        await session.close()
        return session

    return make_app(get_session)


def scoped_app(Session: AsyncScopedSession[TrivialAsyncSession]) -> ASGIApp:
    async def get_session() -> object:
        return Session()

    return make_app(get_session)


def ours(commit: bool) -> ASGIApp:
    Session = AsyncScopedSession(TrivialAsyncSession)
    return ScopedSessionMiddleware(scoped_app(Session), Session, commit=commit)


def raw_middleware(commit: bool) -> ASGIApp:
    Session = AsyncScopedSession(TrivialAsyncSession)
    app = scoped_app(Session)

    if commit:

        async def committing(scope: Message, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
                await Session.commit()
            finally:
                await Session.remove()

        return committing

    async def middleware(scope: Message, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            await Session.remove()

    return middleware


VARIANTS: dict[str, t.Callable[[bool], ASGIApp]] = {
    "bare app": bare_app,
    "ours": ours,
    "raw middleware": raw_middleware,
}

SCOPE: Message = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [],
}
REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> Message:
    return REQUEST


async def send(message: Message) -> None:
    pass


async def time_requests(app: ASGIApp, n: int) -> float:
    """Seconds per request, each run in a task of its own and awaited to its end,
    as a server runs it (uvicorn and hypercorn make a task per request): a
    session made in one request's task is never found by the next one's."""
    create_task = asyncio.get_running_loop().create_task
    begin = time.perf_counter()
    for _ in range(n):
        await create_task(app(SCOPE, receive, send))
    return (time.perf_counter() - begin) / n


async def run(commit: bool, rounds: int, n: int) -> dict[str, float]:
    apps = {name: make(commit) for name, make in VARIANTS.items()}
    for app in apps.values():
        await time_requests(app, n // 10)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():  # interleaved: drift hits every variant alike
            samples[name].append(await time_requests(app, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    rounds, n = (5, 5_000) if args.quick else (15, 30_000)

    print(f"ASGI per-request overhead (median of {rounds} rounds x {n} requests)")
    header = f"{'commit':<7} {'variant':<15} {'total ns':>9} {'overhead ns':>12} {'vs raw':>8}"
    print(header)
    print("-" * len(header))
    failed = []
    for commit in (False, True):
        times = asyncio.run(run(commit, rounds, n))
        base = times["bare app"]
        overhead = {name: max(times[name] - base, 1e-12) for name in times}
        for name in VARIANTS:
            if name == "bare app":
                print(f"{commit!s:<7} {name:<15} {times[name] * 1e9:>9.0f} {'-':>12}")
                continue
            vs_raw = overhead[name] / overhead["raw middleware"]
            print(
                f"{commit!s:<7} {name:<15} {times[name] * 1e9:>9.0f}"
                f" {overhead[name] * 1e9:>12.0f} {vs_raw:>7.2f}x"
            )
        ratio = overhead["ours"] / overhead["raw middleware"]
        verdict = "ok" if ratio <= BAR else "FAILED"
        if ratio > BAR:
            failed.append(commit)
        print(
            f"  bar (commit={commit}): ours <= {BAR:.1f}x the raw middleware's overhead:"
            f" {ratio:.2f}x {verdict}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
