"""ASGI middleware: a unit of work per HTTP request or websocket connection.

::

    from sqlalchemy.ext.asyncio import async_sessionmaker
    from starlette.applications import Starlette
    from scoped_session.asyncio import AsyncScopedSession
    from scoped_session.asgi import ScopedSessionMiddleware

    Session = AsyncScopedSession(async_sessionmaker(engine))

    async def add_note(request):
        Session.add(Note(text="hi"))           # this request's session, made on first use
        return PlainTextResponse("saved")

    app = ScopedSessionMiddleware(Starlette(routes=[...]), Session, commit=True)

Each HTTP request gets a fresh session from every given registry and keeps it until
the response is over: a streamed body uses the view's session while it streams, and
the unit ends right after the last body message was sent, on the same event loop.
When the app stops before that (an error, a client that went away, a cancelled
task), the unit ends then, rolled back. A websocket connection gets one unit for
its whole life; lifespan and other scopes pass through untouched.

The registries can be :class:`~scoped_session.asyncio.AsyncScopedSession` objects or
sync :class:`~scoped_session.ScopedSession` objects made with ``scope="context"``: the
unit is opened in the request's task, so the request's session is also the one that
sync endpoints and dependencies see on the worker threads they run on (Starlette and
FastAPI copy the request's context there), whatever thread that is. A sync session's
commit and close run on a worker thread too, never blocking the event loop. A
cancelled request ends its units at once: Starlette and FastAPI wait for a sync
endpoint's thread before that, but sync work started with ``asyncio.to_thread`` is
left running by a cancellation and must not use the request's session then.

With ``commit=True`` the app's ``http.response.start`` is held until its first body
message, and the sessions are committed before the status goes out: a failed commit
raises out of the app's ``send()`` (the server answers 500 when nothing else does)
and a 2xx status means the view's writes are committed. Writes made while a
streamed body runs are committed after its last message, when it got there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing as t

from ._arguments import check_flag
from ._cells import Cell
from ._ending import Runner, commit_units_async, end_units_async, raise_failures
from ._proxy import ScopedSession
from ._registry import open_unit
from ._tasks import run_to_end
from .asyncio import AsyncScopedSession

__all__ = ["ScopedSessionMiddleware"]

logger = logging.getLogger("scoped_session")

Message = t.MutableMapping[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]
ASGIApp = t.Callable[[Message, Receive, Send], t.Awaitable[None]]
AnyScopedSession = ScopedSession[t.Any] | AsyncScopedSession[t.Any]
R = t.TypeVar("R")


async def _in_thread(func: t.Callable[[], object]) -> None:
    """Run ``func`` on the loop's default executor to its end, even if cancelled."""
    loop = asyncio.get_running_loop()
    await run_to_end(t.cast("asyncio.Future[None]", loop.run_in_executor(None, func)))


async def _run(method: t.Callable[[], object]) -> None:
    """Perform one step of ending a session: an async session's is awaited, a sync
    session's (which talks to the database) runs on a worker thread."""
    if inspect.iscoroutinefunction(method):
        await t.cast("t.Awaitable[object]", method())
    else:
        await _in_thread(method)


def _to_end(ending: t.Coroutine[t.Any, t.Any, object]) -> t.Awaitable[object] | None:
    """Start ``ending``: ``None`` when it finished without waiting (async sessions
    with nothing to flush, no session made), else what awaits the rest to its end
    even if the caller is cancelled meanwhile (``run_to_end``). Nothing can cancel
    a step that never suspends, and a task costs two trips through the event loop
    per request. A failure of a step that did not wait is raised here."""
    try:
        waiting = ending.send(None)
    except StopIteration:
        return None
    return run_to_end(_resume(ending, waiting))


async def _resume(ending: t.Coroutine[t.Any, t.Any, R], waiting: object) -> R:
    """Drive ``ending`` on, in the task ``run_to_end`` gives it: ``waiting`` is what
    it yielded to its task (an asyncio future, or None to let the loop run once),
    which it reads the outcome of when resumed."""
    while True:
        if waiting is None:
            await asyncio.sleep(0)
        else:
            await asyncio.wait((t.cast("asyncio.Future[t.Any]", waiting),))
        try:
            waiting = ending.send(None)
        except StopIteration as done:
            return t.cast("R", done.value)


def _is_context_scoped(scoped: ScopedSession[t.Any]) -> bool:
    return scoped.scope_kind == "context"


class ScopedSessionMiddleware:
    """Give each HTTP request and websocket connection a unit of work on every
    given scoped session.

    :param app: the ASGI application to wrap.
    :param session: an :class:`~scoped_session.asyncio.AsyncScopedSession`, or a
        :class:`~scoped_session.ScopedSession` made with ``scope="context"``; more
        may follow, each gets a unit of its own and each is ended even if another
        fails.
    :param commit: commit each session when nothing raised and the status is below
        400, before the status reaches the server (a websocket's: when the app
        returns without raising); otherwise roll back.
    """

    def __init__(
        self,
        app: ASGIApp,
        session: AnyScopedSession,
        /,
        *more_sessions: AnyScopedSession,
        commit: bool = False,
    ) -> None:
        if not callable(app) or isinstance(app, (ScopedSession, AsyncScopedSession)):
            raise TypeError(
                "ScopedSessionMiddleware() takes the ASGI application first, then the"
                f" scoped sessions; got an object of type {type(app).__name__} as the"
                " application."
            )
        sessions = (session, *more_sessions)
        for scoped in sessions:
            if isinstance(scoped, AsyncScopedSession):
                continue
            if not isinstance(scoped, ScopedSession):
                raise TypeError(
                    "ScopedSessionMiddleware() takes AsyncScopedSession or ScopedSession"
                    f" objects after the application; got an object of type"
                    f" {type(scoped).__name__}. Wrap the factory first:"
                    " Session = AsyncScopedSession(async_sessionmaker(engine))."
                )
            if not _is_context_scoped(scoped):
                raise ValueError(
                    f"{scoped!r} is not scoped by context: under ASGI many requests share"
                    " one thread, so a session per thread would be shared by them. Make"
                    " it with ScopedSession(session_factory, scope='context'), or use"
                    " AsyncScopedSession."
                )
        if len(set(map(id, sessions))) != len(sessions):
            raise ValueError(
                "The same scoped session was passed to ScopedSessionMiddleware() twice;"
                " pass each one once."
            )
        check_flag(commit, "commit")
        self.app = app
        self.sessions = sessions
        self.commit = commit
        # Async sessions' steps are awaited as they are; a sync session's go to a
        # worker thread (see _run), which costs a check per step.
        self._run: Runner | None = (
            None if all(isinstance(s, AsyncScopedSession) for s in sessions) else _run
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.app!r} sessions={len(self.sessions)}>"

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # An HTTP request, here rather than in a coroutine of its own: every request
        # would make one more.
        units = self._start()
        passage = _Passage(units, _Where((scope,)), self._run, send, self.commit)
        try:
            await self.app(scope, receive, passage.send)
        except BaseException as exc:
            if not passage.ended:
                passage.ended = True
                await _end_all(units, False, passage.where, passage.run, exc)
            raise
        failures = passage.failures
        if not passage.ended:
            # The app returned before its last body message: the client went away,
            # or the response is incomplete. Nothing of it is committed.
            passage.ended = True
            failures = await _end_all(units, False, passage.where, passage.run)
            if passage.held is not None:
                await send(passage.held)
        if failures:
            raise_failures(failures, passage.where)

    def _start(self) -> list[Cell]:
        # Opening a unit is bookkeeping only (no I/O), in the request's task: the
        # sync endpoints' threads get a copy of its context, hence its sessions.
        # So is undoing it, before any session was made: no await needed.
        started: list[Cell] = []
        try:
            for scoped in self.sessions:
                started.append(open_unit(scoped))
        except BaseException:
            for cell in reversed(started):
                cell.detach()
            raise
        return started

    async def _websocket(self, scope: Message, receive: Receive, send: Send) -> None:
        units = self._start()
        where = _Where((scope,))
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            await _end_all(units, False, where, self._run, exc)
            raise
        raise_failures(await _end_all(units, self.commit, where, self._run), where)


class _Passage:
    """One HTTP request on its way through the middleware: the app's ``send()`` is
    :meth:`send`, which ends the request's units right after the last body
    message (one object per request, where a closure would make a cell per
    variable it shares)."""

    __slots__ = (
        "commit",
        "ended",
        "failures",
        "held",
        "hold",
        "run",
        "server_send",
        "trailers",
        "units",
        "where",
    )

    def __init__(
        self, units: list[Cell], where: _Where, run: Runner | None, send: Send, hold: bool
    ) -> None:
        self.units = units
        self.where = where
        self.run = run
        self.server_send = send
        #: commit=True: hold the start message until the body, and commit first.
        self.hold = hold
        self.held: Message | None = None
        #: Whether to commit at the end (the status allowed it).
        self.commit = False
        self.trailers = False
        self.ended = False
        self.failures: t.Sequence[BaseException] = ()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.trailers = bool(message.get("trailers", False))
            if self.hold:
                self.held = message
                self.commit = int(message["status"]) < 400
                return
            await self.server_send(message)
            return
        held = self.held
        if held is not None:
            if self.commit:
                try:
                    rest = _to_end(commit_units_async(self.units, where=self.where, run=self.run))
                    if rest is not None:
                        await rest
                except BaseException:
                    self.held, self.commit = None, False
                    raise
            self.held = None
            await self.server_send(held)
        await self.server_send(message)
        if not self.ended and _is_last(message, self.trailers):
            self.ended = True
            self.failures = await _end_all(self.units, self.commit, self.where, self.run)


class _Where(tuple[Message]):
    """Names a request in logs ("GET /notes", "websocket /feed") from its ASGI
    scope, formatted only when one is written. A tuple: made without a call."""

    __slots__ = ()

    def __str__(self) -> str:
        scope = self[0]
        if scope["type"] == "websocket":
            return f"websocket {scope.get('path', '')}"
        return f"{scope.get('method', '?')} {scope.get('path', '')}"


def _is_last(message: Message, trailers: bool) -> bool:
    kind: str = message["type"]
    if trailers:
        return kind == "http.response.trailers" and not message.get("more_trailers", False)
    if kind in ("http.response.body", "http.response.zerocopysend"):
        return not bool(message.get("more_body", False))
    return kind == "http.response.pathsend"


async def _end_all(
    units: list[Cell],
    commit: bool,
    where: object,
    run: Runner | None,
    error: BaseException | None = None,
) -> list[BaseException]:
    """End every unit by the policy, to its end even if cancelled meanwhile (the
    cancellation is re-raised after). The policy's failure is returned, not raised:
    the app's send() must not fail for it."""
    try:
        rest = _to_end(end_units_async(units, commit=commit, error=error, where=where, run=run))
        if rest is not None:
            await rest
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return [exc]
    return []
