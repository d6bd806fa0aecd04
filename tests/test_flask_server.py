"""FlaskScopedSession under werkzeug's real threaded server, over 127.0.0.1."""

from __future__ import annotations

import http.client
import importlib.util
import sys
import threading
import typing as t
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy is not installed: the server runs on real databases"
)

import sqlalchemy as sa
from flask import Flask, Response, stream_with_context
from helpers import Database, Note, checkedout
from sqlalchemy import orm
from werkzeug.serving import BaseWSGIServer, make_server

from scoped_session.flask import FlaskScopedSession

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

pytestmark = pytest.mark.server

CLIENTS = 16
REQUESTS_PER_CLIENT = 64  # 1,024 requests in all
KINDS = ("add", "add", "add", "fail", "bad", "stream", "abort", "duplicate")
#: Rows each kind of request leaves committed (a stream cut short commits nothing).
COMMITTED = {"add": 1, "fail": 0, "bad": 0, "stream": 2, "abort": 0, "duplicate": 0}
#: Status each kind gets; an aborting client never reads one.
STATUS = {"add": 200, "fail": 500, "bad": 400, "stream": 200, "duplicate": 500}
TIMEOUT = 30.0


class Finished:
    """WSGI middleware that counts responses closed by the server, so that the
    test can wait for every request to be really over (no sleeps)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.count = 0
        self.cond = threading.Condition()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        body = self.app(environ, start_response)
        return _Closing(body, self)

    def done(self) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout)


class _Closing:
    def __init__(self, body: t.Iterable[bytes], finished: Finished) -> None:
        self.body = body
        self.finished = finished

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.finished.done()


class Server:
    """A threaded werkzeug server on 127.0.0.1, port 0, in a thread."""

    def __init__(self, app: WSGIApplication) -> None:
        self.httpd: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.httpd.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)


def make_app(engine: sa.Engine) -> tuple[Flask, FlaskScopedSession[orm.Session]]:
    app = Flask(__name__)
    Session = FlaskScopedSession(orm.sessionmaker(engine), app, commit=True)

    @app.get("/add/<name>")
    def add(name: str) -> str:
        Session.add(Note(text=name))
        return "added"

    @app.get("/fail/<name>")
    def fail(name: str) -> str:
        Session.add(Note(text=name))
        Session.flush()
        raise LookupError(name)

    @app.get("/bad/<name>")
    def bad(name: str) -> tuple[str, int]:
        Session.add(Note(text=name))
        Session.flush()
        return "rejected", 400

    @app.get("/duplicate/<name>")
    def duplicate(name: str) -> str:
        # "taken" is in the table from the start: the commit fails -> a 500.
        Session.add(Note(text="taken"))
        return "never sent"

    @app.get("/stream/<name>")
    def stream(name: str) -> Response:
        session = Session()
        Session.add(Note(text=name))

        def body() -> t.Iterator[str]:
            assert Session() is session
            yield "first;"
            Session.add(Note(text=name + "-body"))
            yield "second;"
            yield "last"

        return Response(stream_with_context(body()))

    @app.get("/abort/<name>")
    def abort(name: str) -> Response:
        Session.add(Note(text=name))

        def body() -> t.Iterator[bytes]:
            yield b"x" * 16
            Session.add(Note(text=name + "-body"))
            Session.flush()  # holds a transaction while the client goes away
            chunk = b"y" * 65536
            # The client reads 16 bytes and hangs up; the server notices on a
            # write long before this bound (128 MiB).
            for _ in range(2048):
                yield chunk

        return Response(stream_with_context(body()))

    return app, Session


def request_once(server: Server, kind: str, name: str) -> int | None:
    conn = server.connect()
    try:
        conn.request("GET", f"/{kind}/{name}")
        response = conn.getresponse()
        if kind == "abort":
            assert response.read(16) == b"x" * 16
            return None  # hang up mid-stream: conn.close() below
        data = response.read()
        if kind == "stream":
            assert data == b"first;second;last"
        return response.status
    finally:
        conn.close()


def hammer(server: Server, client: int, statuses: list[tuple[str, int | None]]) -> None:
    for i in range(REQUESTS_PER_CLIENT):
        kind = KINDS[(i + client) % len(KINDS)]
        statuses.append((kind, request_once(server, kind, f"{kind}-{client}-{i}")))


def test_many_clients_against_a_threaded_server(db: Database) -> None:
    app, Session = make_app(db.engine)
    with db.engine.begin() as conn:
        conn.execute(sa.insert(Note).values(text="taken"))
    finished = Finished(app.wsgi_app)
    app.wsgi_app = finished  # type: ignore[method-assign]
    statuses: list[tuple[str, int | None]] = []
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            hammer(server, number, statuses)
        except BaseException as exc:
            errors.append(exc)

    with Server(app) as server:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive()
        assert errors == []
        total = CLIENTS * REQUESTS_PER_CLIENT
        assert len(statuses) == total
        # An aborted response is closed by its server thread when a write
        # fails, which can be after the client thread is done.
        assert finished.wait_for(total, TIMEOUT), finished.count
        assert finished.count == total

    kinds = Counter(kind for kind, _ in statuses)
    for kind, status in statuses:
        if kind != "abort":
            assert status == STATUS[kind], (kind, status)
    assert db.checkedout() == 0
    assert db.idle_in_transaction() == 0
    assert Session._stats.created == Session._stats.removed == total
    assert Session._stats.reaped == 0

    with db.engine.connect() as conn:
        texts = conn.scalars(sa.select(Note.text)).all()
    expected = 1 + sum(COMMITTED[kind] * n for kind, n in kinds.items())
    assert len(texts) == expected
    by_kind = Counter(text.split("-")[0] for text in texts if text != "taken")
    assert by_kind == Counter(
        {kind: COMMITTED[kind] * n for kind, n in kinds.items() if COMMITTED[kind]}
    )
    # The body of an aborted stream was rolled back; a full stream's committed.
    assert not any(text.startswith("abort") and text.endswith("-body") for text in texts)
    assert sum(text.endswith("-body") for text in texts) == kinds["stream"]


def test_example_app_under_a_real_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    example_path = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'notes.db'}")
    spec = importlib.util.spec_from_file_location("flask_app_served", example_path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)
    spec.loader.exec_module(example)

    finished = Finished(example.app.wsgi_app)
    example.app.wsgi_app = finished
    statuses = []
    with Server(example.app) as server:
        for text in ("one", "two", "one"):
            conn = server.connect()
            headers = {"Content-Type": "application/json"}
            conn.request("POST", "/notes", body=f'{{"text": "{text}"}}', headers=headers)
            response = conn.getresponse()
            response.read()  # unread data would make the close a reset
            statuses.append(response.status)
            conn.close()
        conn = server.connect()
        conn.request("GET", "/notes/export")
        assert conn.getresponse().read() == b"1\tone\n2\ttwo\n"
        conn.close()
        assert finished.wait_for(4, TIMEOUT), finished.count
    assert statuses == [201, 201, 409]
    assert checkedout(example.engine) == 0
    stats = example.Session._stats
    assert stats.created == stats.removed
    example.engine.dispose()
