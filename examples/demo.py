"""The demo: a Flask notes app under a real server, wired two ways, side by side.

::

    python examples/demo.py                        # SQLite in a temporary directory
    python examples/demo.py --requests 6000 --clients 16
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python examples/demo.py

One function builds the notes app twice: once with ``FlaskScopedSession(commit=True)``,
once the usual way (SQLAlchemy's ``scoped_session``, a ``teardown_appcontext`` that
calls ``Session.remove()``, views that commit). Each one runs on werkzeug's threaded
server on 127.0.0.1 and gets the same requests from concurrent clients: reads, writes,
duplicates (409), a view that fails after a write (500), streamed exports, and a live
feed that the client hangs up on mid-stream. The sessions count their own creation and
closing; the pool says how many connections are still checked out; the table says
how many rows were written. Nothing is assumed: every number is measured.

On a database other than the default, the demo creates its own table
(``scoped_session_demo_notes``) and drops it at the end. It exits with 0 when the
FlaskScopedSession side is clean (every request answered as expected, every session
closed, no connection left checked out, exactly one row per successful write).
"""

from __future__ import annotations

import argparse
import gc
import http.client
import importlib.metadata
import json
import logging
import os
import re
import sys
import tempfile
import textwrap
import threading
import time
import typing as t
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import sqlalchemy as sa
from flask import Flask, Response, abort, request, stream_with_context
from sqlalchemy import orm
from werkzeug.serving import make_server

from scoped_session.flask import FlaskScopedSession

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

OURS = "FlaskScopedSession"
USUAL = "usual wiring"
SEEDS = 20  # notes in the table before the load: what reads and duplicates hit
FEED_POLL = 0.02  # seconds between two polls of the live feed
FEED_POLLS = 500  # a feed nobody hangs up on ends by itself after 10 s
TIMEOUT = 30.0


# -- the app -----------------------------------------------------------------------


class Base(orm.DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "scoped_session_demo_notes"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    text: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)

    def to_json(self) -> dict[str, t.Any]:
        return {"id": self.id, "text": self.text}


class Tally:
    """Sessions made and closed, and feeds cut short by their client, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened = 0
        self.closed = 0
        self.cut_short = 0


class CountingSession(orm.Session):
    """A SQLAlchemy session that reports its creation and its first ``close()``."""

    def __init__(self, *args: t.Any, tally: Tally, **kw: t.Any) -> None:
        super().__init__(*args, **kw)
        self._tally = tally
        self._was_closed = False
        with tally.lock:
            tally.opened += 1

    def close(self) -> None:
        try:
            super().close()
        finally:
            if not self._was_closed:
                self._was_closed = True
                with self._tally.lock:
                    self._tally.closed += 1


def build_app(engine: sa.Engine, wiring: str, tally: Tally) -> Flask:
    """The notes app, its sessions wired the FlaskScopedSession way or the usual way.

    Only the first few lines differ: the views are the same code for both.
    """
    factory = orm.sessionmaker(engine, class_=CountingSession, tally=tally)
    app = Flask(__name__)
    Session: FlaskScopedSession[CountingSession] | orm.scoped_session[CountingSession]
    if wiring == OURS:
        # A session per application context, committed once a successful
        # response is ready, closed when the request or its streamed body is over.
        Session = ours = FlaskScopedSession(factory, app, commit=True)

        def save() -> None:
            ours.flush()  # the id now; the commit comes with the response

    else:
        # The usual way: a session per thread, removed at teardown; views commit.
        Session = usual = orm.scoped_session(factory)

        @app.teardown_appcontext
        def shutdown(exc: BaseException | None) -> None:
            usual.remove()

        def save() -> None:
            usual.commit()

    @app.get("/notes/<int:note_id>")
    def get_note(note_id: int) -> dict[str, t.Any]:
        note = Session.get(Note, note_id)
        if note is None:
            abort(404)
        return note.to_json()

    @app.post("/notes")
    def add_note() -> tuple[dict[str, t.Any], int]:
        text = (request.get_json(silent=True) or {}).get("text")
        if not isinstance(text, str) or not text.strip():
            abort(400, "send a JSON object with a non-empty 'text'")
        if Session.scalar(sa.select(Note.id).where(Note.text == text)) is not None:
            abort(409, "a note with this text exists")
        note = Note(text=text)
        Session.add(note)
        save()
        return note.to_json(), 201

    @app.post("/notes/broken")
    def broken() -> dict[str, t.Any]:
        # A bug after a write: the response is a 500 and the note must not stay.
        Session.add(Note(text=(request.get_json(silent=True) or {}).get("text")))
        Session.flush()
        raise RuntimeError("a bug in the view, after a write")

    @app.get("/notes/export")
    def export() -> Response:
        # The body runs the query, as in examples/flask_app.py.
        def lines() -> t.Iterator[str]:
            count = 0
            for note in Session.scalars(sa.select(Note).order_by(Note.id)):
                count += 1
                yield f"{note.id}\t{note.text}\n"
            yield f"# {count} notes\n"

        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/notes/feed")
    def feed() -> Response:
        # Server-sent events: the notes after ``after``, then each new one as it
        # comes. The view checks the argument, so a bad one is a plain 404.
        after = request.args.get("after", type=int)
        if after is None or Session.get(Note, after) is None:
            abort(404)

        def events() -> t.Iterator[str]:
            last = after
            try:
                for _ in range(FEED_POLLS):
                    newer = sa.select(Note).where(Note.id > last).order_by(Note.id).limit(20)
                    for note in Session.scalars(newer):
                        last = note.id
                        yield f"data: {note.text}\n\n"
                    yield ": waiting\n\n"  # a write, so that a client gone away is noticed
                    time.sleep(FEED_POLL)
            except GeneratorExit:  # the server closed the body: counted for the table
                with tally.lock:
                    tally.cut_short += 1
                raise

        return Response(stream_with_context(events()), mimetype="text/event-stream")

    return app


# -- the load ----------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    label: str
    method: str
    path: str
    status: int
    streamed: bool = False  # the body ends with a "# N notes" line


KINDS = {
    "read": Kind("read a note (200)", "GET", "/notes/{seed_id}", 200),
    "add": Kind("add a note (201)", "POST", "/notes", 201),
    "duplicate": Kind("add a duplicate (409)", "POST", "/notes", 409),
    "broken": Kind("view fails after a write (500)", "POST", "/notes/broken", 500),
    "export": Kind("streamed export (200)", "GET", "/notes/export", 200, streamed=True),
    "feed": Kind("stream the client hangs up on", "GET", "/notes/feed?after={seed_id}", 200),
}
#: The requests of each run, in this order, over and over.
MIX = ("read", "add", "read", "export", "duplicate", "read", "add", "broken", "feed", "export")


def send(port: int, name: str, number: int, seed_ids: list[int]) -> bool:
    """Make one request on a connection of its own; True if answered as expected."""
    kind = KINDS[name]
    body = None
    if kind.method == "POST":
        text = f"seed {number % SEEDS}" if name == "duplicate" else f"{name} {number}"
        body = json.dumps({"text": text})
    path = kind.path.format(seed_id=seed_ids[number % len(seed_ids)])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(kind.method, path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if name == "feed":
            # Read the first bytes of the stream, then hang up (conn.close()).
            return response.status == kind.status and len(response.read(6)) == 6
        data = response.read()
        if response.status != kind.status:
            return False
        if kind.streamed:
            return data.endswith(b" notes\n") and data.startswith(b"1\tseed 0\n")
        if kind.status < 300:
            return "text" in json.loads(data)
        return True
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()


class CloseCounter:
    """WSGI middleware that counts the responses the server has closed, so that
    the demo measures once every request is really over."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.count = 0
        self.cond = threading.Condition()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> _Counted:
        return _Counted(self.app(environ, start_response), self)

    def closed(self) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_for(self, total: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= total, TIMEOUT)


class _Counted:
    def __init__(self, body: t.Iterable[bytes], counter: CloseCounter) -> None:
        self.body = body
        self.counter = counter

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.counter.closed()


class ErrorLog(logging.Handler):
    """Keeps the server's and the app's error logs off the terminal and counts
    them by exception, for the table."""

    # Level NOTSET: werkzeug and Flask add a handler of their own that prints
    # unless some handler takes their records at every level.
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        if record.exc_info and record.exc_info[0] is not None:
            name = record.exc_info[0].__name__
        else:
            # werkzeug logs a failed body as text, a warning is text too: the
            # last "SomeError: message" in it names what happened.
            found = re.findall(r"\b(\w+(?:Error|Exception|Warning)):", record.getMessage())
            name = found[-1] if found else record.getMessage().splitlines()[0][:40]
        if record.levelno < logging.ERROR:
            name = f"{name} (warning)"
        self.counts[name] += 1


class Progress:
    """A progress line: redrawn in place on a terminal, a line per quarter otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.tty = sys.stderr.isatty()
        self.quarter = 0

    def show(self, done: int, elapsed: float) -> None:
        if self.tty:
            # Shorter than 80 columns: a wrapped line cannot be redrawn in place.
            bar = "#" * (20 * done // self.total)
            sys.stderr.write(
                f"\r  {self.label:<18}  {done:>6,}/{self.total:,} requests"
                f"  [{bar:<20}]  {elapsed:5.1f} s"
            )
            if done == self.total:
                sys.stderr.write("\n")
        else:
            while self.quarter < 4 and done * 4 >= self.total * (self.quarter + 1):
                self.quarter += 1
                print(
                    f"  {self.label}: {done:,} / {self.total:,} requests, {elapsed:.1f} s",
                    file=sys.stderr,
                )
        sys.stderr.flush()


@dataclass
class Result:
    wiring: str
    answered: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    responses_closed: bool = False
    opened: int = 0
    closed: int = 0
    checked_out: int = 0
    checked_out_after_gc: int = 0
    idle_in_transaction: int | None = None  # PostgreSQL only
    cut_short: int = 0  # feeds the server ended early, the client gone
    rows: int = 0
    created: int = 0  # 201 responses
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(self.answered.values())

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def problems(self) -> list[str]:
        """What is not clean, in words; nothing when all is."""
        found = []
        if self.ok != self.total:
            found.append(f"{self.total - self.ok:,} requests not answered as expected")
        if not self.responses_closed:
            found.append(f"responses still open after {TIMEOUT:.0f} s")
        if self.opened != self.closed:
            found.append(f"{self.opened - self.closed:,} sessions not closed")
        if self.checked_out:
            found.append(f"{self.checked_out:,} connections checked out")
        if self.idle_in_transaction:
            found.append(f"{self.idle_in_transaction:,} backends idle in transaction")
        if self.rows != self.created:
            found.append(f"{self.rows:,} rows written for {self.created:,} 201 responses")
        return found


def run(url: str, wiring: str, requests: int, clients: int, errors: ErrorLog) -> Result:
    """Serve the app wired as ``wiring`` and send it ``requests`` requests."""
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with orm.Session(engine) as session:
            session.add_all(Note(text=f"seed {n}") for n in range(SEEDS))
            session.commit()
            seed_ids = list(session.scalars(sa.select(Note.id).order_by(Note.id)))
        return load(engine, wiring, seed_ids, requests, clients, errors)
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def load(
    engine: sa.Engine,
    wiring: str,
    seed_ids: list[int],
    requests: int,
    clients: int,
    errors: ErrorLog,
) -> Result:
    result = Result(wiring)
    tally = Tally()
    app = build_app(engine, wiring, tally)
    counter = CloseCounter(app.wsgi_app)
    app.wsgi_app = counter  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.socket.getsockname()[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    errors.counts.clear()
    progress = Progress(wiring, requests)
    pool = ThreadPoolExecutor(clients)
    start = time.perf_counter()
    try:
        futures: dict[Future[bool], str] = {}
        for number in range(requests):
            name = MIX[number % len(MIX)]
            futures[pool.submit(send, port, name, number, seed_ids)] = name
            result.sent[name] += 1
        pending: t.Collection[Future[bool]] = futures
        while pending:
            pending = wait(pending, timeout=0.1).not_done
            progress.show(requests - len(pending), time.perf_counter() - start)
        for future, name in futures.items():
            result.answered[name] += future.result()
        # A hung-up stream is over when the server notices, maybe after its client.
        result.responses_closed = counter.wait_for(requests)
        result.seconds = time.perf_counter() - start
        result.checked_out = checked_out(engine)
        result.idle_in_transaction = idle_in_transaction(engine)
        result.opened, result.closed = tally.opened, tally.closed
        result.cut_short = tally.cut_short
    finally:
        pool.shutdown(cancel_futures=True)  # at once on Ctrl-C: the queue is dropped
        server.shutdown()
        server.server_close()
        serving.join(TIMEOUT)
    result.errors = Counter(errors.counts)
    result.created = result.answered["add"]
    with engine.connect() as conn:
        notes = conn.scalar(sa.select(sa.func.count()).select_from(Note.__table__))
    result.rows = (notes or 0) - SEEDS
    gc.collect()  # what SQLAlchemy's pool gets back from sessions nobody closed
    result.checked_out_after_gc = checked_out(engine)
    return result


#: Names this process's PostgreSQL connections, to find them in pg_stat_activity.
APPLICATION_NAME = f"scoped-session-demo-{os.getpid()}"


def make_engine(url: str) -> sa.Engine:
    backend = sa.make_url(url).get_backend_name()
    if backend == "postgresql":
        return sa.create_engine(url, connect_args={"application_name": APPLICATION_NAME})
    if backend != "sqlite":
        return sa.create_engine(url)
    # Dozens of threads write to one SQLite file: let readers run beside the
    # writer (WAL) and wait for the write lock longer than the default 5 s.
    engine = sa.create_engine(url, connect_args={"timeout": TIMEOUT})
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return engine


def idle_in_transaction(engine: sa.Engine) -> int | None:
    """The server's count of this demo's connections left in an open transaction."""
    if engine.dialect.name != "postgresql":
        return None
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = :name AND state LIKE 'idle in transaction%'"
    )
    with engine.connect() as conn:
        return int(conn.scalar(query, {"name": APPLICATION_NAME}) or 0)


def checked_out(engine: sa.Engine) -> int:
    pool = engine.pool
    return pool.checkedout() if isinstance(pool, sa.QueuePool) else 0


# -- the report --------------------------------------------------------------------


def table(ours: Result, usual: Result) -> list[str]:
    def both(show: t.Callable[[Result], str], label: str) -> tuple[str, str, str]:
        return label, show(ours), show(usual)

    rows = [
        ("", OURS, USUAL),
        both(lambda r: f"{r.ok:,} of {r.total:,}", "requests answered as expected"),
    ]
    for name, kind in KINDS.items():
        served = [f"{r.answered[name]:,} of {r.sent[name]:,}" for r in (ours, usual)]
        rows.append((f"  {kind.label}", served[0], served[1]))
    rows += [
        both(lambda r: f"{r.opened:,}", "sessions opened"),
        both(lambda r: f"{r.closed:,}", "sessions closed"),
        both(lambda r: f"{r.checked_out:,}", "connections left checked out"),
    ]
    if ours.checked_out or usual.checked_out:
        rows.append(both(lambda r: f"{r.checked_out_after_gc:,}", "  ... after gc.collect()"))
    if ours.idle_in_transaction is not None:
        rows.append(both(lambda r: f"{r.idle_in_transaction:,}", "backends idle in transaction"))
    if not (ours.responses_closed and usual.responses_closed):
        rows.append(both(lambda r: "yes" if r.responses_closed else "NO", "all responses closed"))
    rows += [
        both(lambda r: f"{r.cut_short:,} of {r.sent['feed']:,}", "streams cut short by a hang-up"),
        both(lambda r: f"{r.rows:,} / {r.created:,}", "rows written / 201 responses"),
        both(lambda r: f"{sum(r.errors.values()):,}", "errors logged by the server"),
        both(lambda r: f"{r.seconds:.1f} s", "time"),
    ]
    lines = []
    for label, left, right in [rows[0], ("", "-" * 18, "-" * 18), *rows[1:]]:
        mark = "differs" if left != right and label not in ("", "time") else ""
        lines.append(f"{label:<32}{left:>18}{right:>18}  {mark}".rstrip())
    return lines


def reading(ours: Result, usual: Result) -> str:
    """A plain reading of the table, made from the numbers in it."""
    said = []
    if ours.ok == ours.total and usual.ok == usual.total:
        said.append(
            f"Both wirings answered all {ours.total:,} requests as expected,"
            f" including the {ours.sent['feed']:,} streams whose clients hung up"
            " mid-stream."
        )
    for result in (ours, usual):
        if result.ok < result.total:
            wrong = ", ".join(
                f"{result.sent[n] - result.answered[n]:,} of {result.sent[n]:,} '{KINDS[n].label}'"
                for n in KINDS
                if result.answered[n] < result.sent[n]
            )
            said.append(f"{result.wiring} answered these wrongly: {wrong}.")
    extra = usual.opened - ours.opened
    if extra > 0 and extra == usual.sent["feed"]:
        said.append(
            f"The usual wiring opened {extra:,} more sessions, one per feed: its"
            " teardown closes the session when Flask pops the application context"
            " after the view returns, before the streamed body runs, so a body that"
            " reads the database makes a second session;"
            " FlaskScopedSession keeps one session until the body is over."
        )
    elif extra:
        said.append(f"The usual wiring opened {extra:+,} sessions compared to ours.")
    for result in (ours, usual):
        if result.opened != result.closed:
            said.append(
                f"{result.wiring} left {result.opened - result.closed:,} sessions unclosed."
            )
        if result.checked_out:
            said.append(
                f"{result.wiring} left {result.checked_out:,} connections checked"
                f" out ({result.checked_out_after_gc:,} after a garbage collection)."
            )
        if result.rows != result.created:
            said.append(
                f"{result.wiring} wrote {result.rows:,} rows for {result.created:,}"
                " successful writes."
            )
    if ours.opened == ours.closed and usual.opened == usual.closed:
        closed = "Both closed every session they opened"
        if ours.checked_out == usual.checked_out == 0:
            closed += " and gave every connection back to the pool"
        said.append(closed + ".")
    if ours.rows == ours.created and usual.rows == usual.created:
        said.append(
            "Both wrote exactly one row per 201 response: the duplicates and the"
            " failing view left nothing behind."
        )
    said.append(
        "Time covers the whole load, feeds waiting for their clients included;"
        " it is not a benchmark."
    )
    return " ".join(said)


def describe(url: str, default: bool) -> str:
    if default:
        return "SQLite, a file in a temporary directory"
    parsed = sa.make_url(url)
    return f"{parsed.get_backend_name()} ({parsed.render_as_string(hide_password=True)})"


def versions() -> str:
    # What the table shows depends on them: Flask 3.1 changed when a streamed
    # body's context is pushed again.
    names = ("Flask", "Werkzeug", "SQLAlchemy")
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=positive, default=3000, help="per wiring (3000)")
    parser.add_argument("--clients", type=positive, default=32, help="concurrent (32)")
    args = parser.parse_args(argv)

    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    logging.captureWarnings(True)
    with tempfile.TemporaryDirectory(prefix="scoped-session-demo-") as tmp:
        url = os.environ.get("DATABASE_URL") or ""
        default = not url
        if default:
            url = f"sqlite:///{os.path.join(tmp, 'demo.db')}"
        load = f"{args.requests:,} requests from {args.clients} concurrent clients"
        print(
            "The same Flask notes app, wired two ways, each on werkzeug's threaded\n"
            f"server on 127.0.0.1, gets {load}.\n"
            f"  {OURS}: FlaskScopedSession(sessionmaker, app, commit=True)\n"
            f"  {USUAL}: sqlalchemy.orm.scoped_session, a teardown_appcontext\n"
            "      that calls Session.remove(), views that commit\n"
            f"{versions()}.\nDatabase: {describe(url, default)}.\n"
        )
        sys.stdout.flush()
        try:
            ours = run(url, OURS, args.requests, args.clients, errors)
            usual = run(url, USUAL, args.requests, args.clients, errors)
        except KeyboardInterrupt:
            print("\nInterrupted.", file=sys.stderr)
            return 130

    print()
    print("\n".join(table(ours, usual)))
    print()
    for result in (ours, usual):
        found = ", ".join(f"{n:,} {name}" for name, n in result.errors.most_common()) or "none"
        print(f"Errors logged with {result.wiring}: {found}.")
    print()
    print(textwrap.fill(reading(ours, usual), width=80))
    problems = ours.problems()
    if problems:
        print(f"\n{OURS}'s side is not clean: {'; '.join(problems)}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
