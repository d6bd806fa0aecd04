"""A small JSON notes API on Flask with FlaskScopedSession.

SQLite by default (a file next to the current directory), ``DATABASE_URL`` for
another database, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``::

    flask --app examples/flask_app.py run      # then:
    curl -X POST localhost:5000/notes -H 'Content-Type: application/json' -d '{"text": "hi"}'
    curl localhost:5000/notes
    curl localhost:5000/notes/export           # streamed, one note per line

    python examples/flask_app.py               # the same, without the flask command

Every request gets its own session (``Session``), committed after a successful
response (``commit=True``) and closed when the request is over; a duplicate
note is a 409 and nothing is committed.
"""

from __future__ import annotations

import os
import typing as t

import sqlalchemy as sa
from flask import Flask, Response, abort, request, stream_with_context
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from scoped_session.flask import FlaskScopedSession


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200), unique=True)

    def to_json(self) -> dict[str, t.Any]:
        return {"id": self.id, "text": self.text}


DATABASE_URL = os.environ.get("DATABASE_URL") or "sqlite:///flask_notes.db"
engine = sa.create_engine(DATABASE_URL)
Base.metadata.create_all(engine)

Session = FlaskScopedSession(sessionmaker(engine), commit=True)
app = Flask(__name__)
Session.init_app(app)


@app.get("/notes")
def list_notes() -> dict[str, t.Any]:
    notes = Session.scalars(sa.select(Note).order_by(Note.id))
    return {"notes": [note.to_json() for note in notes]}


@app.post("/notes")
def add_note() -> tuple[dict[str, t.Any], int]:
    data = request.get_json(silent=True) or {}
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        abort(400, "send a JSON object with a non-empty 'text'")
    if Session.scalar(sa.select(Note.id).where(Note.text == text)) is not None:
        abort(409, "a note with this text exists")
    note = Note(text=text)
    Session.add(note)
    Session.flush()  # assigns the id; the commit comes once the response is ready
    return note.to_json(), 201


@app.get("/notes/<int:note_id>")
def get_note(note_id: int) -> dict[str, t.Any]:
    note: Note | None = Session.get(Note, note_id)
    if note is None:
        abort(404)
    return note.to_json()


@app.delete("/notes/<int:note_id>")
def delete_note(note_id: int) -> tuple[str, int]:
    note = Session.get(Note, note_id)
    if note is None:
        abort(404)
    Session.delete(note)
    return "", 204


@app.get("/notes/export")
def export_notes() -> Response:
    def lines() -> t.Iterator[str]:
        # The request's session, still open while the body streams.
        for note in Session.scalars(sa.select(Note).order_by(Note.id)):
            yield f"{note.id}\t{note.text}\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")


if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "5000")))
