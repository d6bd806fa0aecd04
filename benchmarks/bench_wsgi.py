"""Per-request overhead of ScopedSessionMiddleware, side by side in one process.

Each variant serves the same trivial app, which uses its request's session once
(a trivial session class, so that only the bookkeeping is measured):

- ours: ``ScopedSessionMiddleware(app, Session)``; a unit of work per request,
  ended when the response is closed (or when the app returns a finished body).
- LocalManager: werkzeug's ``LocalManager.make_middleware`` over a ``Local``
  that holds the session (it forgets the session at close(); it never closes it).
- try/finally: ``try: return app(...) finally: Session.remove()`` (closes the
  session before a streamed body runs: wrong for streaming, but the floor).

The app is called directly with a prepared environ; the body is consumed and
closed as a server would. Overhead = variant time - the bare app's time (the bare
app makes and closes its session itself). Rounds are interleaved; each row shows
the median over rounds. Bars: ours <= 1.0x LocalManager's overhead for a list body,
and <= 0.7x for a streamed one (issue #17: LocalManager only forgets its locals
at close(); ours also ends a unit of work there, and must still cost less).

    python benchmarks/bench_wsgi.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import typing as t

from werkzeug.local import Local, LocalManager

from scoped_session import ScopedSession
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Ours must cost at most this share of LocalManager's overhead, per body kind.
BARS = {"list": 1.0, "streamed": 0.7}


class TrivialSession:
    def close(self) -> None:
        pass


def make_app(get_session: t.Callable[[], object], streamed: bool) -> WSGIApplication:
    chunks = [b"ok"]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        get_session()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter(chunks) if streamed else chunks

    return app


def bare_app(streamed: bool) -> WSGIApplication:
    def get_session() -> object:
        session = TrivialSession()
        session.close()
        return session

    return make_app(get_session, streamed)


def ours(streamed: bool) -> WSGIApplication:
    Session = ScopedSession(TrivialSession)
    return ScopedSessionMiddleware(make_app(Session, streamed), Session)


def local_manager(streamed: bool) -> WSGIApplication:
    local = Local()

    def get_session() -> object:
        try:
            return local.session
        except AttributeError:
            local.session = TrivialSession()
            return local.session

    return LocalManager([local]).make_middleware(make_app(get_session, streamed))


def try_finally(streamed: bool) -> WSGIApplication:
    Session = ScopedSession(TrivialSession)
    app = make_app(Session, streamed)

    def wrapper(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        try:
            return app(environ, start_response)
        finally:
            Session.remove()

    return wrapper


VARIANTS: dict[str, t.Callable[[bool], WSGIApplication]] = {
    "bare app": bare_app,
    "ours": ours,
    "LocalManager": local_manager,
    "try/finally": try_finally,
}


def start_response(
    status: str, headers: list[tuple[str, str]], exc_info: object = None
) -> t.Callable[[bytes], object]:
    return len


def time_requests(app: WSGIApplication, environ: WSGIEnvironment, n: int) -> float:
    """Seconds per request: call, consume, close, like a server."""
    sr = t.cast("StartResponse", start_response)
    begin = time.perf_counter()
    for _ in range(n):
        body = app(environ, sr)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - begin) / n


def run(streamed: bool, rounds: int, n: int) -> dict[str, float]:
    environ: WSGIEnvironment = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.version": (1, 0)}
    apps = {name: make(streamed) for name, make in VARIANTS.items()}
    for app in apps.values():
        time_requests(app, environ, n // 10)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():  # interleaved: drift hits every variant alike
            samples[name].append(time_requests(app, environ, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    rounds, n = (5, 5_000) if args.quick else (15, 30_000)

    print(f"WSGI per-request overhead (median of {rounds} rounds x {n} requests)")
    header = (
        f"{'body':<9} {'variant':<13} {'total ns':>9} {'overhead ns':>12}"
        f" {'vs LocalManager':>16} {'vs try/finally':>15}"
    )
    print(header)
    print("-" * len(header))
    failed = []
    for streamed in (False, True):
        body = "streamed" if streamed else "list"
        times = run(streamed, rounds, n)
        base = times["bare app"]
        overhead = {name: max(times[name] - base, 1e-12) for name in times}
        for name in VARIANTS:
            if name == "bare app":
                print(f"{body:<9} {name:<13} {times[name] * 1e9:>9.0f} {'-':>12}")
                continue
            vs_lm = overhead[name] / overhead["LocalManager"]
            vs_tf = overhead[name] / overhead["try/finally"]
            print(
                f"{body:<9} {name:<13} {times[name] * 1e9:>9.0f} {overhead[name] * 1e9:>12.0f}"
                f" {vs_lm:>15.2f}x {vs_tf:>14.2f}x"
            )
        ratio = overhead["ours"] / overhead["LocalManager"]
        bar = BARS[body]
        verdict = "ok" if ratio <= bar else "FAILED"
        if ratio > bar:
            failed.append(body)
        print(f"  bar ({body}): ours <= {bar:.1f}x LocalManager's overhead: {ratio:.2f}x {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
