"""What each way of wiring a session into Flask adds to a request, above a floor.

Every app runs in this process on one SQLite sessionmaker (one engine, a file), and
every request is a direct WSGI call with a copy of a prepared environ whose body is
read and closed, as a server would. The wirings:

- floor: no extension; the view makes its session and closes it itself
  (``commit()`` first, with commit). No wiring that gives a request one session
  can cost less;
- ours: ``FlaskScopedSession(factory, app, commit=...)``; with ``commit=True`` it
  commits for the view;
- Flask-SQLAlchemy 3.1 (``db.session``); with commit, plus an ``after_request``
  handler that commits ``db.session`` when the request made one and the status is
  below 400 (what ours does);
- SQLAlchemy's ``scoped_session`` with ``remove()`` in ``teardown_appcontext``
  (the pattern of Flask's own docs); with commit, plus the same ``after_request``
  handler.

Each wiring's cost is its time per request above the floor's; the view touches the
session once (``session.info``). Bars: ours at most ``BAR`` of Flask-SQLAlchemy's
(the bar of the issue) and of SQLAlchemy-plus-teardown's, with ``commit=False`` and
with ``commit=True``. Then a request that never touches the session, on each
wiring's app, above the same request on a bare Flask app: ours at most
Flask-SQLAlchemy's (each handler an extension registers costs a request some Flask
dispatch, whether or not it does anything). Each row comes with the calls and
allocations per request of ours, the anchor and the floor.

    python benchmarks/bench_flask.py            # about a minute
    python benchmarks/bench_flask.py --quick    # about 15 s

Exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import typing as t
from importlib.metadata import version
from pathlib import Path

import sqlalchemy as sa
from _share import Counts, Result, Row, calls, count, header, print_rows, sample
from flask import Flask, Response
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import orm
from werkzeug.test import EnvironBuilder

from scoped_session.flask import FlaskScopedSession

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Ours must cost at most this share of each anchor's cost above the floor.
BAR = 1.0

FLOOR = "floor"
OURS = "FlaskScopedSession"
FSA = "Flask-SQLAlchemy"
SA_TEARDOWN = "scoped_session + teardown"
BARE = "bare Flask"

#: Every app serves "/" (its view uses a session) and "/idle" (it does not).
TOUCH, IDLE = "/", "/idle"


def idle() -> str:
    return "ok"


def floor_app(factory: orm.sessionmaker[orm.Session], commit: bool) -> Flask:
    app = Flask("floor")

    @app.get(TOUCH)
    def view() -> str:
        session = factory()
        try:
            session.info  # noqa: B018 (touch the session once)
            if commit:
                session.commit()
        finally:
            session.close()
        return "ok"

    app.get(IDLE)(idle)
    return app


def ours_app(factory: orm.sessionmaker[orm.Session], commit: bool) -> Flask:
    app = Flask("scoped_session")
    Session = FlaskScopedSession(factory, app, commit=commit)

    @app.get(TOUCH)
    def view() -> str:
        Session.info  # noqa: B018 (the extension commits, with commit=True)
        return "ok"

    app.get(IDLE)(idle)
    return app


def committing(app: Flask, session: orm.scoped_session[t.Any]) -> None:
    """The ``after_request`` handler a user adds to commit before the response is
    sent: it commits the request's session, if the request made one."""

    @app.after_request
    def commit_session(response: Response) -> Response:
        if response.status_code < 400 and session.registry.has():
            session.commit()
        return response


def fsa_app(engine: sa.Engine, commit: bool) -> Flask:
    app = Flask("flask_sqlalchemy")
    # Its own engine would be a second SQLite pool: hand it ours instead, so that
    # every wiring checks out connections from the same one.
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy(app, session_options={"bind": engine})
    if commit:
        committing(app, db.session)

    @app.get(TOUCH)
    def view() -> str:
        db.session.info  # noqa: B018
        return "ok"

    app.get(IDLE)(idle)
    return app


def sa_teardown_app(factory: orm.sessionmaker[orm.Session], commit: bool) -> Flask:
    """The pattern of Flask's own docs ("SQLAlchemy in Flask")."""
    app = Flask("sa_teardown")
    db_session = orm.scoped_session(factory)
    if commit:
        committing(app, db_session)

    @app.teardown_appcontext
    def shutdown_session(exc: BaseException | None) -> None:
        db_session.remove()

    @app.get(TOUCH)
    def view() -> str:
        db_session.info  # noqa: B018
        return "ok"

    app.get(IDLE)(idle)
    return app


def bare_app() -> Flask:
    app = Flask("bare")
    app.get(IDLE)(idle)
    return app


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
    assert status == "200 OK", status


START_RESPONSE = t.cast("StartResponse", _start_response)


def request(app: WSGIApplication, environ: WSGIEnvironment) -> t.Callable[[], None]:
    """One request, as a server makes it: call, read the body, close it."""

    def one() -> None:
        body = app(environ.copy(), START_RESPONSE)
        for _chunk in body:
            pass
        body.close()  # type: ignore[attr-defined]

    return one


#: (group, wiring): "commit=False" and "commit=True" for "/", "idle, commit=..." for "/idle".
Key = tuple[str, str]


def make_requests(engine: sa.Engine) -> dict[Key, t.Callable[[], None]]:
    factory = orm.sessionmaker(engine)
    touch = EnvironBuilder(path=TOUCH).get_environ()
    untouched = EnvironBuilder(path=IDLE).get_environ()
    requests: dict[Key, t.Callable[[], None]] = {}
    for commit in (False, True):
        apps = {
            FLOOR: floor_app(factory, commit),
            OURS: ours_app(factory, commit),
            FSA: fsa_app(engine, commit),
            SA_TEARDOWN: sa_teardown_app(factory, commit),
        }
        for name, app in apps.items():
            requests[f"commit={commit}", name] = request(app.wsgi_app, touch)
        for name in (OURS, FSA):
            requests[f"idle, commit={commit}", name] = request(apps[name].wsgi_app, untouched)
    requests["idle", BARE] = request(bare_app().wsgi_app, untouched)
    return requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    # Many short rounds rather than a few long ones: each row's ours, anchor and
    # floor of a round are then timed within a fraction of a second of each
    # other, and the cost above the floor (a tenth of a request) is compared on a
    # machine whose speed drifts with what else runs on it.
    rounds, n, counted = (15, 200, 10) if args.quick else (81, 250, 25)

    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        requests = make_requests(engine)
        for one in requests.values():
            one()  # each app answers (the start_response asserts 200)
        times = sample({key: calls(one) for key, one in requests.items()}, rounds, n)
        counts: dict[Key, Counts] = {key: count(one, counted) for key, one in requests.items()}
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        engine.dispose()

    print(header("FlaskScopedSession", rounds, f"{n:,} requests"))
    print(
        f"Flask {version('flask')}, Flask-SQLAlchemy {version('flask-sqlalchemy')},"
        f" SQLAlchemy {sa.__version__}; real sessions on a SQLite file"
    )

    def row(name: str, group: str, anchor: str, floor: Key) -> Row:
        return Row(
            name,
            Result.of(times[group, OURS], times[group, anchor], times[floor]),
            BAR,
            (counts[group, OURS], counts[group, anchor], counts[floor]),
        )

    rows = []
    for commit in (False, True):
        group = f"commit={commit}"
        for anchor in (FSA, SA_TEARDOWN):
            rows.append(row(f"{group}, vs {anchor}", group, anchor, (group, FLOOR)))
    passed = print_rows(
        "Per request above the floor (the view makes and closes its own session); the view"
        " touches the session once. With commit=True the anchors commit in an after_request"
        " handler, the floor's view itself",
        rows,
        unit="us",
    )
    idle_rows = [
        row(f"commit={commit}, vs {FSA}", f"idle, commit={commit}", FSA, ("idle", BARE))
        for commit in (False, True)
    ]
    passed &= print_rows(
        "A request that never touches the session, above the same request on a bare Flask"
        " app (the floor)",
        idle_rows,
        unit="us",
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
