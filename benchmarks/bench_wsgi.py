"""Per-request cost of the WSGI ScopedSessionMiddleware, side by side in one process.

Each variant serves the same trivial app, which uses its request's session once; the
session class does nothing, so that only the wiring is measured. The app returns a
list body, or a streamed one (an iterator), and is called with ``commit=False`` or
``commit=True``:

- floor: the app makes its own session and closes it (``commit()`` first, with
  commit). No wiring that gives a request one session can cost less;
- ours: ``ScopedSessionMiddleware(app, Session, commit=...)``, whose app gets its
  session from our ``ScopedSession``;
- anchor: what a user writes with SQLAlchemy's ``scoped_session``: werkzeug's
  ``ClosingIterator(app(environ, start_response), Session.remove)``, so that the
  session lives until the server closes the body, also a streamed one. With
  commit, the same, and a ``start_response`` that the middleware wraps: it commits
  the session, when the status is below 400 and no ``exc_info`` is given, before it
  calls the server's ``start_response``, so that the status is only sent once the
  commit went through (what ours promises).

The trivial session says it is in no transaction (``in_transaction()``), as a
SQLAlchemy session that did nothing since its commit: at ``close()`` ours commits
only a session that began one again.

Then the streamed rows again with a real SQLAlchemy session on in-memory SQLite, the
app running one query: where users feel it, such as the commit at ``close()`` that a
stream which wrote nothing no longer pays (an empty transaction, begun and
committed). These rows are printed, not judged: the floor's own noise (a query, tens
of microseconds) is larger than the wiring; their calls per request are exact.

The app is called directly with a copy of a prepared environ, its body consumed and
closed as a server would. Each variant's cost is its time per request above the
floor's. Bar: ours at most ``BAR`` of the anchor's, for both bodies, with and
without commit; with the calls and allocations per request of each.

    python benchmarks/bench_wsgi.py [--quick]

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import sys
import typing as t

from _share import Counts, Result, Row, calls, count, header, print_rows, sample
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session as SASession
from sqlalchemy.orm import scoped_session as sa_scoped_session
from sqlalchemy.orm import sessionmaker
from werkzeug.wsgi import ClosingIterator

from scoped_session import ScopedSession
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Ours must cost at most this share of the anchor's cost above the floor.
BAR = 1.0

VARIANTS = ("floor", "ours", "anchor")


class TrivialSession:
    _is_asyncio = False  # read by SQLAlchemy's scoped_session when it makes one

    def commit(self) -> None:
        pass

    def in_transaction(self) -> bool:
        # As a SQLAlchemy session that did nothing since its last commit.
        return False

    def close(self) -> None:
        pass


def make_app(get_session: t.Callable[[], object], streamed: bool) -> WSGIApplication:
    chunks = [b"ok"]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        get_session()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter(chunks) if streamed else chunks

    return app


def floor(streamed: bool, commit: bool) -> WSGIApplication:
    def own_session() -> object:
        session = TrivialSession()
        if commit:
            session.commit()
        session.close()
        return session

    return make_app(own_session, streamed)


def ours(streamed: bool, commit: bool) -> WSGIApplication:
    Session = ScopedSession(TrivialSession)
    return ScopedSessionMiddleware(make_app(Session, streamed), Session, commit=commit)


def anchor(streamed: bool, commit: bool) -> WSGIApplication:
    Session: sa_scoped_session[t.Any] = sa_scoped_session(t.cast("t.Any", TrivialSession))
    return anchor_wiring(make_app(Session, streamed), Session, commit)


def anchor_wiring(
    app: WSGIApplication, Session: sa_scoped_session[t.Any], commit: bool
) -> WSGIApplication:
    if not commit:

        def closing(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
            return ClosingIterator(app(environ, start_response), Session.remove)

        return closing

    def committing(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        def commit_first(
            status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
        ) -> t.Callable[[bytes], object]:
            if exc_info is None and int(status[:3]) < 400:
                Session.commit()
            return start_response(status, headers, exc_info)

        return ClosingIterator(app(environ, commit_first), Session.remove)

    return committing


MAKERS: dict[str, t.Callable[[bool, bool], WSGIApplication]] = {
    "floor": floor,
    "ours": ours,
    "anchor": anchor,
}

#: The real rows' engine and query.
ENGINE = create_engine("sqlite://")
QUERY = select(1)


def real(name: str, commit: bool) -> WSGIApplication:
    """A streamed request whose app runs one query on a real session."""
    if name == "floor":

        def own_session() -> object:
            with SASession(ENGINE) as session:
                session.execute(QUERY)
                if commit:
                    session.commit()
            return session

        return make_app(own_session, streamed=True)
    if name == "ours":
        Session = ScopedSession(sessionmaker(ENGINE))
        return ScopedSessionMiddleware(
            make_app(lambda: Session.execute(QUERY), streamed=True), Session, commit=commit
        )
    anchor_session: sa_scoped_session[SASession] = sa_scoped_session(sessionmaker(ENGINE))
    return anchor_wiring(
        make_app(lambda: anchor_session.execute(QUERY), streamed=True), anchor_session, commit
    )


ENVIRON: WSGIEnvironment = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
}


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: object = None
) -> t.Callable[[bytes], object]:
    return len


START_RESPONSE = t.cast("StartResponse", _start_response)


def request(app: WSGIApplication) -> t.Callable[[], None]:
    """One request, as a server makes it: call, consume, close."""

    def one() -> None:
        body = app(ENVIRON.copy(), START_RESPONSE)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    rounds, n, counted = (9, 2_000, 20) if args.quick else (41, 5_000, 50)

    groups = [(streamed, commit) for commit in (False, True) for streamed in (False, True)]
    requests = {
        (group, name): request(MAKERS[name](*group)) for group in groups for name in VARIANTS
    }
    times = sample({key: calls(one) for key, one in requests.items()}, rounds, n)
    counts: dict[tuple[tuple[bool, bool], str], Counts] = {
        key: count(one, counted) for key, one in requests.items()
    }

    print(header("WSGI ScopedSessionMiddleware", rounds, f"{n:,} requests"))
    rows = []
    for group in groups:
        streamed, commit = group
        body = "streamed body" if streamed else "list body"
        rows.append(
            Row(
                f"{body}, commit={commit}",
                Result.of(times[group, "ours"], times[group, "anchor"], times[group, "floor"]),
                BAR,
                (counts[group, "ours"], counts[group, "anchor"], counts[group, "floor"]),
            )
        )
    passed = print_rows(
        "Per request above the floor (the app makes and closes its own session); anchor:"
        " SQLAlchemy's scoped_session with ClosingIterator(body, Session.remove), with"
        " commit also committing in start_response",
        rows,
        unit="us",
    )

    real_requests = {
        (commit, name): request(real(name, commit)) for commit in (False, True) for name in VARIANTS
    }
    real_times = sample({key: calls(one) for key, one in real_requests.items()}, rounds, n // 5)
    real_counts = {key: count(one, counted) for key, one in real_requests.items()}
    real_rows = [
        Row(
            f"streamed body, commit={commit}",
            Result.of(
                real_times[commit, "ours"],
                real_times[commit, "anchor"],
                real_times[commit, "floor"],
            ),
            BAR,
            (
                real_counts[commit, "ours"],
                real_counts[commit, "anchor"],
                real_counts[commit, "floor"],
            ),
            judged=False,
        )
        for commit in (False, True)
    ]
    print(header("\nThe same with a real session", rounds, f"{n // 5:,} requests"))
    print_rows(
        "Per request above the floor, a SQLAlchemy session on in-memory SQLite running"
        " select(1); the same anchor. Not judged: the floor's own noise is larger than"
        " the wiring; the calls per request are exact",
        real_rows,
        unit="us",
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
