"""What each way of wiring a session into Flask adds to a request, above a floor.

Every app runs in this process on one SQLite sessionmaker (one engine), and every
request is a direct WSGI call with a prepared environ whose body is read and
closed, as a server would. The wirings:

- floor: no extension; the view makes its session and closes it itself. No wiring
  that makes one session per request can cost less;
- minimal: one ``teardown_appcontext`` handler, the session kept on the app context
  (in ``flask.g``);
- SQLAlchemy's ``scoped_session``, with ``remove()`` in ``teardown_appcontext``;
- Flask-SQLAlchemy 3.1;
- FlaskScopedSession;
- for reference, the handlers alone: the floor app plus the no-op handlers that
  FlaskScopedSession's wiring needs Flask to dispatch (a teardown, to close; and
  after the response is made, a per-request ``after_this_request`` without
  commit, an app-wide ``after_request`` with it, to see a streamed body and to
  commit before the response is sent). No wiring with those handlers can cost
  less; a table row shows what they cost.

Two groups: views that touch the session once (``commit=False``), and views that
commit (the others' views call ``commit()``; FlaskScopedSession's view does not,
its ``commit=True`` does). A third table compares a request that never touches
the session, on each wiring's app, with the same request on a bare Flask app.

Times are CPU time of this thread (on a shared machine, the time the scheduler
gives other processes is not the app's). Rounds are interleaved (each round runs
every case, in a rotated order), and a wiring's cost is the median over rounds of
its time per request minus the floor's in the same round, with the standard error
of that median: a wiring costs a few microseconds, well under the spread between
rounds on a busy machine, which a difference of two medians would not cancel.

Bars (issue #17):

- FlaskScopedSession's cost above the floor is at most 0.5x Flask-SQLAlchemy's,
  and below SQLAlchemy-plus-teardown's, in both groups;
- a request that never touches the session costs nothing measurable against a
  bare app: the difference is within two standard errors of zero. (Each handler
  an extension registers costs a request some Flask dispatch, ``ensure_sync()``
  among it, whether or not it does anything: the other wirings' rows show that
  of one handler; FlaskScopedSession has two, after_request and teardown.)

::

    python benchmarks/bench_flask.py            # about a minute
    python benchmarks/bench_flask.py --quick    # about 5 s
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
import typing as t
from importlib.metadata import version
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, Response, after_this_request, g
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import orm
from werkzeug.test import EnvironBuilder

from scoped_session.flask import FlaskScopedSession

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: At most this share of Flask-SQLAlchemy's cost above the floor.
BAR = 0.5
#: "Nothing measurable": within this many standard errors of zero.
NOISE = 2.0

#: The wirings, in the order of the tables.
FLOOR = "floor: the view's own Session"
MINIMAL = "minimal: teardown + flask.g"
SA_TEARDOWN = "SQLAlchemy scoped_session + teardown"
FSA = "Flask-SQLAlchemy"
OURS = "FlaskScopedSession"
HANDLERS = "reference: the floor + no-op handlers"
WIRINGS = (FLOOR, MINIMAL, SA_TEARDOWN, FSA, OURS, HANDLERS)
BARE = "bare Flask"
BARE_TEARDOWN = "reference: bare Flask + a no-op teardown"

#: Every app serves "/" (its view uses a session) and "/idle" (it does not).
TOUCH, IDLE = "/", "/idle"


def idle() -> str:
    return "ok"


def floor_app(factory: orm.sessionmaker[orm.Session], commit: bool, watch: bool = False) -> Flask:
    app = Flask("floor")

    @app.get(TOUCH)
    def view() -> str:
        if watch:  # the reference row's: a no-op after this request
            after_this_request(_unchanged)
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


def minimal_app(factory: orm.sessionmaker[orm.Session], commit: bool) -> Flask:
    app = Flask("minimal")

    def get_session() -> orm.Session:
        if "session" not in g:
            g.session = factory()
        session: orm.Session = g.session
        return session

    @app.teardown_appcontext
    def close_session(exc: BaseException | None) -> None:
        session = g.pop("session", None)
        if session is not None:
            session.close()

    @app.get(TOUCH)
    def view() -> str:
        session = get_session()
        session.info  # noqa: B018
        if commit:
            session.commit()
        return "ok"

    app.get(IDLE)(idle)
    return app


def sa_teardown_app(factory: orm.sessionmaker[orm.Session], commit: bool) -> Flask:
    """The pattern of Flask's own docs ("SQLAlchemy in Flask")."""
    app = Flask("sa_teardown")
    db_session = orm.scoped_session(factory)

    @app.teardown_appcontext
    def shutdown_session(exc: BaseException | None) -> None:
        db_session.remove()

    @app.get(TOUCH)
    def view() -> str:
        db_session.info  # noqa: B018
        if commit:
            db_session.commit()
        return "ok"

    app.get(IDLE)(idle)
    return app


def fsa_app(engine: sa.Engine, commit: bool) -> Flask:
    app = Flask("flask_sqlalchemy")
    # Its own engine would be a second SQLite pool: hand it ours instead, so that
    # every wiring checks out connections from the same one.
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy(app, session_options={"bind": engine})

    @app.get(TOUCH)
    def view() -> str:
        db.session.info  # noqa: B018
        if commit:
            db.session.commit()
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


def handlers_app(factory: orm.sessionmaker[orm.Session], commit: bool) -> Flask:
    """The floor app, plus the handlers FlaskScopedSession registers, doing nothing."""
    app = floor_app(factory, commit, watch=not commit)
    app.teardown_appcontext(_no_teardown)
    if commit:
        app.after_request(_unchanged)
    return app


def _no_teardown(exc: BaseException | None) -> None:
    pass


def _unchanged(response: Response) -> Response:
    return response


def bare_app(teardown: bool = False) -> Flask:
    app = Flask("bare")
    if teardown:
        app.teardown_appcontext(_no_teardown)
    app.get(TOUCH)(idle)
    app.get(IDLE)(idle)
    return app


class Case(t.NamedTuple):
    app: WSGIApplication
    environ: WSGIEnvironment


def make_cases(engine: sa.Engine) -> dict[tuple[str, str], Case]:
    """The cases by (group, wiring)."""
    factory = orm.sessionmaker(engine)
    touch = EnvironBuilder(path=TOUCH).get_environ()
    untouched = EnvironBuilder(path=IDLE).get_environ()
    cases: dict[tuple[str, str], Case] = {}
    for commit in (False, True):
        group = f"commit={commit}"
        apps = {
            FLOOR: floor_app(factory, commit),
            MINIMAL: minimal_app(factory, commit),
            SA_TEARDOWN: sa_teardown_app(factory, commit),
            FSA: fsa_app(engine, commit),
            OURS: ours_app(factory, commit),
            HANDLERS: handlers_app(factory, commit),
        }
        for name, app in apps.items():
            cases[group, name] = Case(app.wsgi_app, touch)
        if not commit:  # the others' handlers do the same either way
            for name in (MINIMAL, SA_TEARDOWN, FSA):
                cases["idle", name] = Case(apps[name].wsgi_app, untouched)
        cases["idle", f"{OURS}, {group}"] = Case(apps[OURS].wsgi_app, untouched)
    cases["idle", BARE] = Case(bare_app().wsgi_app, untouched)
    cases["idle", BARE_TEARDOWN] = Case(bare_app(teardown=True).wsgi_app, untouched)
    return cases


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
    assert status == "200 OK", status


START_RESPONSE = t.cast("StartResponse", _start_response)


def time_case(case: Case, n: int) -> float:
    """Microseconds per request over ``n`` requests, in CPU time of this thread:
    on a shared machine, the time the scheduler gives other processes meanwhile
    is not the app's."""
    app, environ = case
    started = time.thread_time()
    for _ in range(n):
        body = app(environ.copy(), START_RESPONSE)
        for _chunk in body:
            pass
        body.close()  # type: ignore[attr-defined]
    return (time.thread_time() - started) / n * 1e6


class Cost(t.NamedTuple):
    """A case's time per request, and its cost above a reference case."""

    time: float  # median over rounds, us
    cost: float  # median over rounds of (time - reference's time), us
    error: float  # standard error of that median, us


def cost(times: list[float], reference: list[float]) -> Cost:
    diffs = [a - b for a, b in zip(times, reference, strict=True)]
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    # The median's standard error, from the interquartile range (normal errors).
    error = 0.93 * (q3 - q1) / math.sqrt(len(diffs))
    return Cost(statistics.median(times), statistics.median(diffs), error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--rounds", type=int, help="rounds (default 21, quick 7)")
    parser.add_argument("--requests", type=int, help="requests per case and round")
    args = parser.parse_args(argv)
    rounds, per_round = (7, 600) if args.quick else (21, 2000)
    rounds = args.rounds or rounds
    per_round = args.requests or per_round

    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        cases = make_cases(engine)
        for case in cases.values():  # warm up, and check that each app answers
            body = case.app(case.environ.copy(), START_RESPONSE)
            assert b"".join(body) == b"ok"
            time_case(case, 200)
        keys = list(cases)
        times: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
        for number in range(rounds):
            shift = number % len(keys)  # rotated: no case always runs first
            for key in keys[shift:] + keys[:shift]:
                times[key].append(time_case(cases[key], per_round))
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        engine.dispose()

    print(
        f"Python {platform.python_version()}, Flask {version('flask')},"
        f" Flask-SQLAlchemy {version('flask-sqlalchemy')}, SQLAlchemy {sa.__version__};"
        f" {rounds} interleaved rounds of {per_round} requests per case"
    )
    verdicts: list[bool] = []
    width = 40
    for commit in (False, True):
        group = f"commit={commit}"
        views = (
            "views commit themselves; ours commits for its view"
            if commit
            else "views touch the session once"
        )
        print(f"\n{group} ({views})")
        print(f"{'wiring':{width}}{'us/request':>11}{'above the floor':>20}")
        floor = times[group, FLOOR]
        costs = {name: cost(times[group, name], floor) for name in WIRINGS}
        for name, found in costs.items():
            above = "" if name == FLOOR else f"{found.cost:+9.2f} ±{found.error:5.2f} us"
            print(f"{name:{width}}{found.time:>11.2f}{above:>20}")
        ours, fsa, sa_teardown = costs[OURS].cost, costs[FSA].cost, costs[SA_TEARDOWN].cost
        ratio = ours / fsa
        verdicts += [ratio <= BAR, ours < sa_teardown]
        print(
            f"  bar: ours / Flask-SQLAlchemy's = {ratio:.2f}, at most {BAR}: {_word(ratio <= BAR)}"
        )
        print(
            f"  bar: ours {ours:+.2f} us below SQLAlchemy-plus-teardown's {sa_teardown:+.2f} us:"
            f" {_word(ours < sa_teardown)}"
        )
        handlers = costs[HANDLERS].cost
        print(
            f"  the handlers alone cost {handlers:+.2f} us, {handlers / fsa:.2f}x"
            " Flask-SQLAlchemy's, before any session is found, made or closed"
        )

    print("\na request that never touches the session, against a bare Flask app")
    print(f"{'wiring':{width}}{'us/request':>11}{'above bare Flask':>20}")
    bare = times["idle", BARE]
    print(f"{BARE:{width}}{statistics.median(bare):>11.2f}")
    for group, name in times:
        if group != "idle" or name == BARE:
            continue
        found = cost(times[group, name], bare)
        print(f"{name:{width}}{found.time:>11.2f}{found.cost:+9.2f} ±{found.error:5.2f} us")
        if name.startswith(OURS):
            quiet = found.cost <= NOISE * found.error
            verdicts.append(quiet)
            print(f"  bar: within {NOISE:g} standard errors of zero: {_word(quiet)}")
    return 0 if all(verdicts) else 1


def _word(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
