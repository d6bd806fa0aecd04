"""Per-request session overhead: FlaskScopedSession against Flask-SQLAlchemy.

Three Flask apps run in this process on one SQLite engine: a bare app, an app
with FlaskScopedSession and an app with Flask-SQLAlchemy. The view of the last two
touches the session once (so a session is made and closed per request). Each
request is a direct WSGI call with a prepared environ; the body is read and the
response closed, as a server would. Rounds are interleaved; the overhead of an
extension is its time per request minus the bare app's in the same round, and
the median over rounds is reported.

Bar: our overhead <= 0.6x Flask-SQLAlchemy's.

::

    python benchmarks/bench_flask.py            # about 10 s
    python benchmarks/bench_flask.py --quick    # about 2 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session as SASession
from sqlalchemy.orm import sessionmaker
from werkzeug.test import EnvironBuilder

from scoped_session.flask import FlaskScopedSession

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BAR = 0.6


def make_apps(url: str) -> tuple[dict[str, WSGIApplication], sa.Engine]:
    bare = Flask("bare")

    @bare.get("/")
    def bare_view() -> str:
        return "ok"

    fsa_app = Flask("flask_sqlalchemy")
    fsa_app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(fsa_app)

    @fsa_app.get("/")
    def fsa_view() -> str:
        db.session.info  # noqa: B018 (touch the session once)
        return "ok"

    with fsa_app.app_context():
        engine = db.engine  # one engine for both extensions

    # No extension: the view makes and closes a session itself. Its overhead is
    # the floor for any extension that makes one session per request.
    floor_app = Flask("floor")
    factory = sessionmaker(engine)

    @floor_app.get("/")
    def floor_view() -> str:
        session = factory()
        session.info  # noqa: B018
        session.close()
        return "ok"

    ours_app = Flask("scoped_session")
    Session = FlaskScopedSession(sessionmaker(engine))
    Session.init_app(ours_app)

    @ours_app.get("/")
    def ours_view() -> str:
        Session.info  # noqa: B018 (touch the session once)
        return "ok"

    apps: dict[str, WSGIApplication] = {
        "bare Flask": bare.wsgi_app,
        "FlaskScopedSession": ours_app.wsgi_app,
        "Flask-SQLAlchemy": fsa_app.wsgi_app,
        "view's own Session": floor_app.wsgi_app,
    }
    return apps, engine


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
    return None


def time_app(app: WSGIApplication, environ: WSGIEnvironment, n: int) -> float:
    """Microseconds per request over ``n`` requests."""
    start_response = t.cast("StartResponse", _start_response)
    started = time.perf_counter()
    for _ in range(n):
        body = app(dict(environ), start_response)
        for _chunk in body:
            pass
        body.close()  # type: ignore[attr-defined]
    return (time.perf_counter() - started) / n * 1e6


def time_session(engine: sa.Engine, n: int) -> float:
    """Microseconds for SQLAlchemy's own Session create + first use + close."""
    factory = sessionmaker(engine)
    started = time.perf_counter()
    for _ in range(n):
        session: SASession = factory()
        session.info  # noqa: B018
        session.close()
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    rounds, per_round = (7, 1500) if args.quick else (21, 3000)

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        apps, engine = make_apps(url)
        environ = EnvironBuilder(path="/").get_environ()
        for app in apps.values():  # warm up, and check that each app answers
            body = app(dict(environ), t.cast("StartResponse", _start_response))
            assert b"".join(body) == b"ok"
            time_app(app, environ, 200)

        times: dict[str, list[float]] = {name: [] for name in apps}
        session_times: list[float] = []
        for _ in range(rounds):
            for name, app in apps.items():
                times[name].append(time_app(app, environ, per_round))
            session_times.append(time_session(engine, per_round))
        engine.dispose()

    bare = times["bare Flask"]
    overhead = {
        name: statistics.median(x - b for x, b in zip(times[name], bare, strict=True))
        for name in ("FlaskScopedSession", "Flask-SQLAlchemy", "view's own Session")
    }
    ratio = overhead["FlaskScopedSession"] / overhead["Flask-SQLAlchemy"]
    floor = overhead["view's own Session"] / overhead["Flask-SQLAlchemy"]

    print(f"{rounds} interleaved rounds of {per_round} requests; median per request")
    print(f"{'app':<22}{'us/request':>12}{'overhead us':>14}")
    for name, values in times.items():
        extra = f"{overhead[name]:>14.2f}" if name in overhead else f"{'':>14}"
        print(f"{name:<22}{statistics.median(values):>12.2f}{extra}")
    print(f"{'(SQLAlchemy Session create+close, outside Flask)':<50}", end="")
    print(f"{statistics.median(session_times):.2f}")
    print()
    verdict = "PASS" if ratio <= BAR else "FAIL"
    print(f"{'bar':<50}{'ratio':>8}{'limit':>8}  verdict")
    label = "overhead: FlaskScopedSession / Flask-SQLAlchemy"
    print(f"{label:<50}{ratio:>8.2f}{BAR:>8.2f}  {verdict}")
    print(
        f"{'floor: own Session / Flask-SQLAlchemy (no bar)':<50}{floor:>8.2f}"
        "          (no extension can go below this)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
