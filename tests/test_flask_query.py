"""The Flask query helpers (get_or_404, first_or_404, one_or_404, paginate) on a
real Flask app with a FlaskScopedSession over a SQLite file, and on a plain Session."""

from __future__ import annotations

import typing as t

import pytest

pytest.importorskip("sqlalchemy", reason="the query helpers run SQLAlchemy statements")
pytest.importorskip("flask", reason="the query helpers are part of the Flask integration")

import sqlalchemy as sa
from flask import Flask, request
from helpers import Note
from sqlalchemy import orm
from sqlalchemy.exc import MultipleResultsFound
from werkzeug.exceptions import NotFound

from scoped_session._flask_query import (
    Pagination,
    SessionLike,
    first_or_404,
    get_or_404,
    one_or_404,
    paginate,
)
from scoped_session.flask import FlaskScopedSession

ROWS = 45


def seed(engine: sa.Engine, rows: int = ROWS) -> None:
    with orm.Session(engine) as session, session.begin():
        session.add_all(Note(text=f"note {i:02d}") for i in range(1, rows + 1))


def page_json(page: Pagination[Note]) -> dict[str, t.Any]:
    return {
        "items": [note.text for note in page],
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "has_prev": page.has_prev,
        "has_next": page.has_next,
        "prev_num": page.prev_num,
        "next_num": page.next_num,
        "first": page.first,
        "last": page.last,
        "iter_pages": list(page.iter_pages()),
    }


def make_app(engine: sa.Engine) -> Flask:
    Session = FlaskScopedSession(orm.sessionmaker(engine))
    app = Flask(__name__)
    app.testing = True  # exceptions other than HTTP errors reach the test
    Session.init_app(app)
    ordered = sa.select(Note).order_by(Note.id)

    @app.get("/notes/<int:ident>")
    def get_note(ident: int) -> str:
        return get_or_404(Session, Note, ident, description="No such note.").text

    @app.get("/first/<prefix>")
    def first_note(prefix: str) -> str:
        statement = ordered.where(Note.text.startswith(prefix))
        return first_or_404(Session, statement, description="Nothing starts so.").text

    @app.get("/one/<prefix>")
    def one_note(prefix: str) -> str:
        return one_or_404(Session, ordered.where(Note.text.startswith(prefix))).text

    @app.get("/page")
    def page() -> dict[str, t.Any]:
        return page_json(paginate(Session, ordered, max_per_page=15))

    @app.get("/lenient")
    def lenient() -> dict[str, t.Any]:
        return page_json(paginate(Session, ordered, error_out=False))

    @app.get("/uncounted")
    def uncounted() -> dict[str, t.Any]:
        return page_json(paginate(Session, ordered, per_page=10, count=False))

    @app.get("/explicit")
    def explicit() -> dict[str, t.Any]:
        # Arguments given to the call win over the query string.
        page = int(request.args.get("p", "1"))
        return page_json(paginate(Session, ordered, page=page, per_page=7, error_out=False))

    return app


@pytest.fixture
def app(sqlite_engine: sa.Engine) -> Flask:
    seed(sqlite_engine)
    return make_app(sqlite_engine)


def get_json(app: Flask, url: str) -> dict[str, t.Any]:
    response = app.test_client().get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    data = response.get_json()
    assert isinstance(data, dict)
    return data


def test_get_or_404(app: Flask) -> None:
    client = app.test_client()
    found = client.get("/notes/7")
    assert (found.status_code, found.get_data(as_text=True)) == (200, "note 07")
    missing = client.get(f"/notes/{ROWS + 1}")
    assert missing.status_code == 404
    assert "No such note." in missing.get_data(as_text=True)


def test_first_or_404(app: Flask) -> None:
    client = app.test_client()
    found = client.get("/first/note 1")  # note 10 .. note 19: the first by id
    assert (found.status_code, found.get_data(as_text=True)) == (200, "note 10")
    missing = client.get("/first/nothing")
    assert missing.status_code == 404
    assert "Nothing starts so." in missing.get_data(as_text=True)


def test_one_or_404(app: Flask) -> None:
    client = app.test_client()
    found = client.get("/one/note 45")
    assert (found.status_code, found.get_data(as_text=True)) == (200, "note 45")
    assert client.get("/one/nothing").status_code == 404
    with pytest.raises(MultipleResultsFound):
        client.get("/one/note 4")  # note 04 and note 40 .. note 45


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_paginate_each_page(app: Flask, number: int) -> None:
    data = get_json(app, f"/page?page={number}&per_page=10")
    start = (number - 1) * 10 + 1
    stop = min(start + 10, ROWS + 1)
    assert data["items"] == [f"note {i:02d}" for i in range(start, stop)]
    assert (data["page"], data["per_page"], data["total"], data["pages"]) == (number, 10, 45, 5)
    assert (data["first"], data["last"]) == (start, stop - 1)
    assert data["has_prev"] is (number > 1)
    assert data["has_next"] is (number < 5)
    assert data["prev_num"] == (number - 1 if number > 1 else None)
    assert data["next_num"] == (number + 1 if number < 5 else None)


def test_paginate_ends_and_middle(app: Flask) -> None:
    first = get_json(app, "/page?per_page=10")  # no page argument: page 1
    middle = get_json(app, "/page?page=3&per_page=10")
    last = get_json(app, "/page?page=5&per_page=10")
    ends = [(p["has_prev"], p["prev_num"], p["has_next"], p["next_num"]) for p in (first, last)]
    assert ends == [(False, None, True, 2), (True, 4, False, None)]
    assert (middle["has_prev"], middle["prev_num"]) == (True, 2)
    assert (middle["has_next"], middle["next_num"]) == (True, 4)
    assert first["iter_pages"] == [1, 2, 3, 4, 5]
    assert len(last["items"]) == 5


def test_paginate_defaults_and_cap(app: Flask) -> None:
    default = get_json(app, "/lenient")
    assert (default["page"], default["per_page"], default["pages"]) == (1, 20, 3)
    assert len(default["items"]) == 20
    capped = get_json(app, "/page?per_page=1000")
    assert capped["per_page"] == 15
    assert len(capped["items"]) == 15
    explicit = get_json(app, "/explicit?p=2&page=5&per_page=1")
    assert (explicit["page"], explicit["per_page"]) == (2, 7)
    assert explicit["items"][0] == "note 08"


@pytest.mark.parametrize(
    "query", ["page=9&per_page=10", "page=x", "page=0", "page=-1", "per_page=x", "per_page=0"]
)
def test_paginate_bad_page_is_404(app: Flask, query: str) -> None:
    assert app.test_client().get(f"/page?{query}").status_code == 404


@pytest.mark.parametrize(
    ("query", "page", "per_page", "count"),
    [
        ("page=x", 1, 20, 20),
        ("page=0", 1, 20, 20),
        ("page=9", 9, 20, 0),  # past the end: an empty page, not a 404
        ("per_page=x", 1, 20, 20),
        ("per_page=0", 1, 20, 20),
        ("page=2&per_page=-3", 2, 20, 20),
    ],
)
def test_paginate_without_error_out_falls_back(
    app: Flask, query: str, page: int, per_page: int, count: int
) -> None:
    data = get_json(app, f"/lenient?{query}")
    assert (data["page"], data["per_page"], len(data["items"])) == (page, per_page, count)
    assert data["total"] == ROWS


def test_explicit_page_zero_without_error_out_is_page_one(app: Flask) -> None:
    data = get_json(app, "/explicit?p=0")
    assert data["page"] == 1
    assert data["items"][0] == "note 01"


def test_paginate_without_count(app: Flask) -> None:
    data = get_json(app, "/uncounted?page=2")
    assert (data["total"], data["pages"]) == (None, 0)
    assert (data["has_next"], data["next_num"]) == (False, None)
    assert (data["has_prev"], data["prev_num"]) == (True, 1)
    assert data["items"][0] == "note 11"
    assert data["iter_pages"] == []


def test_empty_first_page(sqlite_engine: sa.Engine) -> None:
    app = make_app(sqlite_engine)  # no rows
    data = get_json(app, "/page")
    assert (data["items"], data["total"], data["pages"]) == ([], 0, 0)
    assert (data["first"], data["last"], data["has_next"], data["has_prev"]) == (0, 0, False, False)


def test_plain_session(sqlite_engine: sa.Engine) -> None:
    seed(sqlite_engine)
    ordered = sa.select(Note).order_by(Note.id)
    with orm.Session(sqlite_engine) as session:
        assert get_or_404(session, Note, 3).text == "note 03"
        assert first_or_404(session, ordered.where(Note.id > 40)).text == "note 41"
        assert one_or_404(session, ordered.where(Note.id == 45)).text == "note 45"
        with pytest.raises(NotFound):
            get_or_404(session, Note, 999)
        with pytest.raises(NotFound):
            first_or_404(session, ordered.where(Note.id > 999))
        with pytest.raises(NotFound):
            one_or_404(session, ordered.where(Note.id > 999))
        with pytest.raises(MultipleResultsFound):
            one_or_404(session, ordered)

        # Outside a request: page 1, 20 a page, unless the call says otherwise.
        page = paginate(session, ordered)
        assert (page.page, page.per_page, page.total, page.pages) == (1, 20, 45, 3)
        assert [note.id for note in page] == list(range(1, 21))
        page = paginate(session, ordered, page=3, per_page=20)
        assert [note.id for note in page.items] == list(range(41, 46))
        assert (page.first, page.last, page.has_next, page.next_num) == (41, 45, False, None)
        with pytest.raises(NotFound):
            paginate(session, ordered, page=4)
        assert paginate(session, ordered, page=4, error_out=False).items == []
        with pytest.raises(NotFound):
            paginate(session, ordered, page=0)
        assert paginate(session, ordered, page=0, error_out=False).page == 1
        assert paginate(session, ordered, per_page=50, max_per_page=5).per_page == 5


def test_session_like_accepts_both_kinds(sqlite_engine: sa.Engine) -> None:
    # Type-checked by mypy: both are SessionLike; at run time both answer get().
    scoped: SessionLike = FlaskScopedSession(orm.sessionmaker(sqlite_engine))
    assert callable(scoped.get)
    with orm.Session(sqlite_engine) as session:
        plain: SessionLike = session
        assert plain.get(Note, 1) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"per_page": "10"}, TypeError, "per_page must be an int"),
        ({"per_page": 2.5}, TypeError, "per_page must be an int"),
        ({"page": "2"}, TypeError, "page must be an int"),
        ({"page": True}, TypeError, "page must be an int"),
        ({"max_per_page": "5"}, TypeError, "max_per_page must be an int"),
        ({"max_per_page": 0}, ValueError, "max_per_page must be at least 1"),
        ({"error_out": 0}, TypeError, "error_out must be True or False"),
        ({"count": None}, TypeError, "count must be True or False"),
    ],
)
def test_paginate_bad_arguments(
    sqlite_engine: sa.Engine, kwargs: dict[str, t.Any], error: type[Exception], words: str
) -> None:
    with orm.Session(sqlite_engine) as session, pytest.raises(error, match=words):
        paginate(session, sa.select(Note), **kwargs)


ITER_PAGES_OPTIONS: list[dict[str, int]] = [
    {},
    {"left_edge": 1, "left_current": 1, "right_current": 1, "right_edge": 1},
    {"left_edge": 0, "left_current": 0, "right_current": 0, "right_edge": 0},
    {"left_edge": 3, "left_current": 5, "right_current": 2, "right_edge": 0},
    {"left_edge": 4, "left_current": 0, "right_current": 0, "right_edge": 4},
]


@pytest.mark.parametrize("pages", [0, 1, 2, 3, 5, 7, 10, 20, 50])
def test_iter_pages_as_flask_sqlalchemy(pages: int) -> None:
    pytest.importorskip("flask_sqlalchemy", reason="compared with Flask-SQLAlchemy's")
    from flask_sqlalchemy.pagination import Pagination as FSAPagination

    class Fixed(FSAPagination):
        """Flask-SQLAlchemy's pagination over a made-up result: one item a page."""

        def _query_items(self) -> list[t.Any]:
            return [object()]

        def _query_count(self) -> int:
            return int(self._query_args["total"])

    compared = 0
    for page in range(1, pages + 3):  # two pages past the end too
        theirs = Fixed(page=page, per_page=1, error_out=False, total=pages)
        ours = Pagination([object()], page, 1, pages)
        assert (ours.pages, ours.has_next, ours.next_num, ours.prev_num) == (
            theirs.pages,
            theirs.has_next,
            theirs.next_num,
            theirs.prev_num,
        )
        for options in ITER_PAGES_OPTIONS:
            expected = list(theirs.iter_pages(**options))
            assert list(ours.iter_pages(**options)) == expected, (page, pages, options)
            compared += 1
    assert compared == (pages + 2) * len(ITER_PAGES_OPTIONS)


def test_iter_pages_documented_example() -> None:
    page = Pagination([1], 7, 1, 20)
    assert list(page.iter_pages()) == [1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20]
