"""Per-request cost of the ASGI ScopedSessionMiddleware, side by side in one process.

Each variant serves the same trivial ASGI app, which uses its request's session once
and sends a finished body (``http.response.start`` and one ``http.response.body``).
The session class does nothing, so that only the wiring is measured:

- floor: the app makes its own session and closes it (``commit()`` first, with
  commit). No wiring that gives a request one session can cost less;
- ours: ``ScopedSessionMiddleware(app, Session, commit=...)`` over an
  ``AsyncScopedSession``;
- anchor: what a user writes with SQLAlchemy's ``async_scoped_session(factory,
  scopefunc=asyncio.current_task)``: a middleware that runs the app in ``try:`` and
  ``await Session.remove()`` in ``finally:``. With commit, the same middleware
  also wraps ``send``: it awaits ``Session.commit()`` before it passes the
  ``http.response.start`` message on, when the status is below 400, so that the
  status is only sent once the commit went through (what ours promises).

The app is called directly in one event loop, each request in a task of its own and
awaited to its end, as a server runs it, with a prepared scope, receive and send.
Each variant's cost is its time per request above the floor's. Bar: ours at most
``BAR`` of the anchor's, with ``commit=False`` and with ``commit=True``; with the
calls and allocations per request of each (the event loop's work for the request's
task included, the same for all).

    python benchmarks/bench_asgi.py [--quick]

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import typing as t

from _share import Counts, Result, Row, awaits, count_async, header, print_rows, sample
from sqlalchemy.ext.asyncio import async_scoped_session

from scoped_session.asgi import ScopedSessionMiddleware
from scoped_session.asyncio import AsyncScopedSession

Message = t.MutableMapping[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]
ASGIApp = t.Callable[[Message, Receive, Send], t.Coroutine[t.Any, t.Any, None]]

#: Ours must cost at most this share of the anchor's cost above the floor.
BAR = 1.0

VARIANTS = ("floor", "ours", "anchor")

START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
BODY: Message = {"type": "http.response.body", "body": b"ok", "more_body": False}


class TrivialAsyncSession:
    _is_asyncio = True  # read by SQLAlchemy's async_scoped_session

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


def floor(commit: bool) -> ASGIApp:
    async def own_session() -> object:
        session = TrivialAsyncSession()
        if commit:
            await session.commit()
        await session.close()
        return session

    return make_app(own_session)


def scoped_app(Session: t.Callable[[], object]) -> ASGIApp:
    async def get_session() -> object:
        return Session()

    return make_app(get_session)


def ours(commit: bool) -> ASGIApp:
    Session = AsyncScopedSession(TrivialAsyncSession)
    return ScopedSessionMiddleware(scoped_app(Session), Session, commit=commit)


def anchor(commit: bool) -> ASGIApp:
    Session: async_scoped_session[t.Any] = async_scoped_session(
        t.cast("t.Any", TrivialAsyncSession), scopefunc=asyncio.current_task
    )
    app = scoped_app(Session)

    if not commit:

        async def removing(scope: Message, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
            finally:
                await Session.remove()

        return removing

    async def committing(scope: Message, receive: Receive, send: Send) -> None:
        async def commit_first(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                await Session.commit()
            await send(message)

        try:
            await app(scope, receive, commit_first)
        finally:
            await Session.remove()

    return committing


MAKERS: dict[str, t.Callable[[bool], ASGIApp]] = {
    "floor": floor,
    "ours": ours,
    "anchor": anchor,
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


def request(app: ASGIApp) -> t.Callable[[], t.Awaitable[None]]:
    """One request in a task of its own, awaited to its end, as a server runs it
    (uvicorn and hypercorn make a task per request): a session made in one
    request's task is never found by the next one's."""

    async def one() -> None:
        await asyncio.create_task(app(dict(SCOPE), receive, send))

    return one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    rounds, n, counted = (9, 2_000, 20) if args.quick else (31, 5_000, 50)

    requests = {
        (commit, name): request(MAKERS[name](commit))
        for commit in (False, True)
        for name in VARIANTS
    }
    with asyncio.Runner() as runner:
        times = sample({key: awaits(runner, one) for key, one in requests.items()}, rounds, n)
        counts: dict[tuple[bool, str], Counts] = {
            key: runner.run(count_async(one, counted)) for key, one in requests.items()
        }

    print(header("ASGI ScopedSessionMiddleware", rounds, f"{n:,} requests"))
    rows = [
        Row(
            f"a task per request, commit={commit}",
            Result.of(times[commit, "ours"], times[commit, "anchor"], times[commit, "floor"]),
            BAR,
            (counts[commit, "ours"], counts[commit, "anchor"], counts[commit, "floor"]),
        )
        for commit in (False, True)
    ]
    passed = print_rows(
        "Per request above the floor (the app makes and closes its own session); anchor:"
        " async_scoped_session(current_task) with a try/finally middleware that awaits"
        " remove(), with commit also committing before http.response.start",
        rows,
        unit="us",
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
