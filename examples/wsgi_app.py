"""A plain WSGI notes app: a session per request, committed before the status goes out.

Run it and open http://127.0.0.1:8000/ ::

    python examples/wsgi_app.py                      # SQLite file wsgi_app.db here
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test python examples/wsgi_app.py

``GET /notes`` streams the notes from the view's own session, which stays open until
the server has sent the last line and closed the response.
"""

from __future__ import annotations

import argparse
import html
import os
import typing as t
from urllib.parse import parse_qs

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from werkzeug.serving import make_server

from scoped_session import ScopedSession
from scoped_session.wsgi import ScopedSessionMiddleware

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


def make_app(url: str) -> tuple[WSGIApplication, sa.Engine]:
    """The notes app on the database at ``url``, and its engine."""
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    db: ScopedSession[Session] = ScopedSession(sessionmaker(engine))

    def index(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        items = "".join(
            f"<li>{html.escape(text)}</li>" for text in db.scalars(sa.select(Note.text))
        )
        page = (
            "<!doctype html><title>Notes</title><h1>Notes</h1>"
            '<form method="post" action="/notes"><input name="text" autofocus>'
            f"<button>Add</button></form><ul>{items}</ul>"
            '<p><a href="/notes">as text, streamed</a></p>'
        ).encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [page]

    def add_note(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(size).decode())
        text = form.get("text", [""])[0].strip()
        db.add(Note(text=text))  # rolled back below when the text is empty
        if not text:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"A note needs some text.\n"]
        start_response("303 See Other", [("Location", "/")])
        return [b""]

    def stream_notes(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        # Runs while the server sends the body, still on this request's session.
        for text in db.scalars(sa.select(Note.text).order_by(Note.id)):
            yield f"{text}\n".encode()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Iterable[bytes]:
        route = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"))
        if route == ("GET", "/"):
            return index(environ, start_response)
        if route == ("POST", "/notes"):
            return add_note(environ, start_response)
        if route == ("GET", "/notes"):
            return stream_notes(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found.\n"]

    return ScopedSessionMiddleware(app, db, commit=True), engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("DATABASE_URL", "sqlite:///wsgi_app.db"),
        help="a SQLAlchemy URL (default: $DATABASE_URL, else the SQLite file wsgi_app.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    app, engine = make_app(args.db)
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"Serving on http://{args.host}:{server.port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.dispose()


if __name__ == "__main__":
    main()
