"""The example blog (``examples/flask_blog``) as its users see it: pages a page at a
time, the JSON API, 404s, and writes that land in the app's own database, on SQLite
and PostgreSQL. Its migrations are driven in ``test_flask_migrate.py``."""

from __future__ import annotations

import re
import sys
import typing as t
import uuid
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="Flask is not installed (extra 'flask')")
pytest.importorskip("flask_migrate", reason="Flask-Migrate is not installed (group 'flask')")
pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed: the blog uses it")

import psycopg
import sqlalchemy as sa
from flask import Flask
from helpers import backends, checkedout, drop_schema, libpq_url, postgres_url
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Mapped, mapped_column

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The blog is a package, imported as its users import it (flask --app adds the
# folder that holds it to sys.path the same way).
if str(EXAMPLES) not in sys.path:
    sys.path.append(str(EXAMPLES))

import flask_blog  # noqa: E402
from flask_blog import BlogPost, Session, User, create_app  # noqa: E402
from flask_blog.database import Base, snake_case  # noqa: E402


class Blog(t.NamedTuple):
    """A blog app on an empty database of its own, and how to look at that database
    without the app."""

    app: Flask
    url: str
    app_name: str  # postgres: the application_name of the app's connections

    def rows(self, statement: sa.Executable) -> list[tuple[t.Any, ...]]:
        """What the database holds, read with an engine of its own."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(statement)]
        finally:
            engine.dispose()

    def posts(self) -> list[tuple[str, str, str]]:
        """(author, title, body) of every post, oldest first."""
        return self.rows(
            sa.select(User.name, BlogPost.title, BlogPost.body)
            .join(BlogPost.author)
            .order_by(BlogPost.id)
        )

    def users(self) -> list[str]:
        return [name for (name,) in self.rows(sa.select(User.name).order_by(User.id))]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def blog(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[Blog]:
    """The blog from its factory, on a SQLite file or in a PostgreSQL schema of its
    own, with its tables made from the models."""
    schema = ""
    app_name = ""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'blog.db'}"
    else:
        pg = postgres_url()
        if pg is None:
            pytest.skip("SCOPED_SESSION_TEST_POSTGRES_URL is not set")
        tag = uuid.uuid4().hex[:12]
        schema, app_name = f"blog_{tag}", f"ss-blog-{tag}"
        with psycopg.connect(libpq_url(pg), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        query = {"options": f"-csearch_path={schema}", "application_name": app_name}
        url = sa.make_url(pg).update_query_dict(query).render_as_string(hide_password=False)
    try:
        app = create_app({"SCOPED_SESSION_DATABASE_URI": url, "TESTING": True})
        engine = Session.get_engine(app)
        Base.metadata.create_all(engine)
        yield Blog(app, url, app_name)
        # Every request's session was closed with its request.
        assert checkedout(engine) == 0
        if app_name:
            pg = postgres_url()
            assert pg is not None
            states = [state for _, state in backends(pg, app_name)]
            assert not [state for state in states if state.startswith("idle in transaction")]
        engine.dispose()
    finally:
        if schema:
            pg = postgres_url()
            assert pg is not None
            drop_schema(pg, schema)


def add_posts(blog: Blog, author: str, count: int) -> None:
    """``count`` posts by a new user, through the API; titles "author 1", "author 2"..."""
    client = blog.app.test_client()
    response = client.post("/api/users", json={"name": author})
    assert response.status_code == 201, response.text
    for n in range(1, count + 1):
        response = client.post(f"/api/users/{author}/posts", json={"title": f"{author} {n}"})
        assert response.status_code == 201, response.text


def titles(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


#: An entry of the pagination widget: a link, the current page, or a gap.
PAGE_ENTRY = re.compile(r'href="([^"]+)"|<strong[^>]*>(\d+)</strong>|&hellip;')


def page_links(html: str) -> list[str]:
    """The pagination widget's entries in order: link targets, the current page as
    "[n]", and gaps as "..."."""
    nav = html[html.index('<nav class="pagination">') :]
    return [
        href or (f"[{current}]" if current else "...") for href, current in PAGE_ENTRY.findall(nav)
    ]


# -- table names ----------------------------------------------------------------------


def test_tables_are_named_as_flask_sqlalchemy_names_them() -> None:
    assert set(Base.metadata.tables) == {"user", "blog_post"}
    assert User.__table__ is Base.metadata.tables["user"]
    assert BlogPost.__table__ is Base.metadata.tables["blog_post"]


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("User", "user"),
        ("BlogPost", "blog_post"),
        ("HTTPRequestLog", "http_request_log"),
        ("UserID", "user_id"),
        ("Post2Tag", "post2_tag"),
        ("OAuth2Token", "o_auth2_token"),
        ("ABC", "abc"),
        ("lower", "lower"),
        ("_Private", "private"),
    ],
)
def test_snake_case(name: str, table: str) -> None:
    assert snake_case(name) == table


@given(st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True))
def test_snake_case_is_flask_sqlalchemys_rule(name: str) -> None:
    """The same name as Flask-SQLAlchemy 3 gives, for any class name: a database
    made with Flask-SQLAlchemy keeps its tables."""
    model = pytest.importorskip("flask_sqlalchemy.model")
    assert snake_case(name) == model.camel_to_snake_case(name)


def test_explicit_and_inherited_table_names() -> None:
    """A model that names its table keeps that name; a joined-table subclass gets
    one of its own; a single-table subclass (``__tablename__ = None``) shares its
    parent's table."""

    class Scratch(Base):
        __abstract__ = True
        metadata = sa.MetaData()  # not the blog's: its migrations stay as they are

    class Named(Scratch):
        __tablename__ = "named_by_hand"
        id: Mapped[int] = mapped_column(primary_key=True)

    class AuditEntry(Scratch):
        id: Mapped[int] = mapped_column(primary_key=True)

    class LoginAuditEntry(AuditEntry):
        id: Mapped[int] = mapped_column(sa.ForeignKey(AuditEntry.id), primary_key=True)

    class LogoutAuditEntry(AuditEntry):
        __tablename__ = None

    assert set(Scratch.metadata.tables) == {"named_by_hand", "audit_entry", "login_audit_entry"}
    assert Named.__table__ is Scratch.metadata.tables["named_by_hand"]
    assert LoginAuditEntry.__table__ is Scratch.metadata.tables["login_audit_entry"]
    assert LogoutAuditEntry.__table__ is AuditEntry.__table__
    assert set(Base.metadata.tables) == {"user", "blog_post"}


# -- pages ------------------------------------------------------------------------------


def test_index_pages_through_the_newest_posts(blog: Blog) -> None:
    add_posts(blog, "ada", 7)
    add_posts(blog, "bob", 5)
    client = blog.app.test_client()

    first = client.get("/?per_page=5")
    assert first.status_code == 200
    assert titles(first.text) == ["bob 5", "bob 4", "bob 3", "bob 2", "bob 1"]
    assert "Posts 1 to 5 of 12" in first.text
    # has_prev is false on page 1, has_next true; iter_pages lists 1 to 3.
    assert page_links(first.text) == ["[1]", "/?page=2", "/?page=3", "/?page=2"]

    last = client.get("/?page=3&per_page=5")
    assert titles(last.text) == ["ada 2", "ada 1"]
    assert "Posts 11 to 12 of 12" in last.text
    assert page_links(last.text) == ["/?page=2", "/?page=1", "/?page=2", "[3]"]

    # Past the last page, and a page that is not a number: 404, as Flask-SQLAlchemy.
    assert client.get("/?page=4&per_page=5").status_code == 404
    assert client.get("/?page=x").status_code == 404
    # max_per_page caps what the query string asks for.
    assert len(titles(client.get("/?per_page=1000").text)) == 12


def test_iter_pages_leaves_gaps_on_many_pages(blog: Blog) -> None:
    add_posts(blog, "ada", 20)
    response = blog.app.test_client().get("/?page=10&per_page=1")
    assert titles(response.text) == ["ada 11"]
    # Flask-SQLAlchemy's default window: 2 at each edge, 2 before and 4 after.
    numbers = [
        link.removeprefix("/?page=") if link.startswith("/") else link
        for link in page_links(response.text)[1:-1]  # without "Newer" and "Older"
    ]
    assert numbers == ["1", "2", "...", "8", "9", "[10]", "11", "12", "13", "14", "...", "19", "20"]


def test_user_page_shows_only_that_users_posts(blog: Blog) -> None:
    add_posts(blog, "ada", 3)
    add_posts(blog, "bob", 2)
    client = blog.app.test_client()
    response = client.get("/users/ada")
    assert response.status_code == 200
    assert "<h1>Posts by ada</h1>" in response.text
    assert titles(response.text) == ["ada 3", "ada 2", "ada 1"]
    page = client.get("/users/ada?per_page=2&page=2")
    assert titles(page.text) == ["ada 1"]
    assert page_links(page.text) == ["/users/ada?page=1", "/users/ada?page=1", "[2]"]
    assert client.get("/users/nobody").status_code == 404
    assert client.get("/").text.count('href="/users/bob"') == 2


def test_index_without_posts(blog: Blog) -> None:
    response = blog.app.test_client().get("/")
    assert response.status_code == 200
    assert "No posts yet." in response.text
    assert titles(response.text) == []


# -- the API ------------------------------------------------------------------------------


def test_api_writes_land_in_the_database(blog: Blog) -> None:
    client = blog.app.test_client()
    response = client.post("/api/users", json={"name": "ada"})
    assert response.status_code == 201
    assert response.json == {"id": 1, "name": "ada"}
    assert response.headers["Location"] == "/api/users/ada"

    response = client.post("/api/users/ada/posts", json={"title": "Hello", "body": "First"})
    assert response.status_code == 201
    post = response.json
    assert post == {"id": 1, "author": "ada", "title": "Hello", "body": "First"}
    assert response.headers["Location"] == "/api/posts/1"

    # Committed before the responses were sent: another connection sees them.
    assert blog.users() == ["ada"]
    assert blog.posts() == [("ada", "Hello", "First")]
    assert client.get("/api/posts/1").json == post
    assert client.get("/api/users/ada").json == {"id": 1, "name": "ada", "posts": 1}


def test_api_errors_commit_nothing(blog: Blog) -> None:
    client = blog.app.test_client()
    assert client.post("/api/users", json={"name": "ada"}).status_code == 201

    taken = client.post("/api/users", json={"name": "ada"})
    assert (taken.status_code, taken.json) == (409, {"error": "the name 'ada' is taken"})
    for bad in [{}, {"name": ""}, {"name": 7}, {"name": "x" * 81}]:
        response = client.post("/api/users", json=bad)
        assert response.status_code == 400, bad
        assert "non-empty string 'name'" in response.text
    response = client.post("/api/users/ada/posts", json={"title": "T", "body": 5})
    assert (response.status_code, response.json) == (400, {"error": "'body' must be a string"})
    for body in ["not json", "[1]", "null"]:
        response = client.post(
            "/api/users/ada/posts", data=body, headers={"Content-Type": "application/json"}
        )
        assert (response.status_code, response.json) == (
            400,
            {"error": "send a JSON object (Content-Type: application/json)"},
        ), body

    assert blog.users() == ["ada"]
    assert blog.posts() == []


def test_api_404s(blog: Blog) -> None:
    add_posts(blog, "ada", 1)
    client = blog.app.test_client()
    # get_or_404 by primary key, one_or_404 by name, each with its description.
    assert client.get("/api/posts/1").status_code == 200
    missing = client.get("/api/posts/2")
    assert (missing.status_code, missing.json) == (404, {"error": "no such post"})
    nobody = client.get("/api/users/nobody")
    assert (nobody.status_code, nobody.json) == (404, {"error": "no such user"})
    orphan = client.post("/api/users/nobody/posts", json={"title": "T"})
    assert (orphan.status_code, orphan.json) == (404, {"error": "no such user"})
    assert blog.posts() == [("ada", "ada 1", "")]


def test_api_pages_through_posts(blog: Blog) -> None:
    add_posts(blog, "ada", 5)
    client = blog.app.test_client()
    first = client.get("/api/posts?per_page=2").json
    assert first is not None
    assert [post["title"] for post in first["posts"]] == ["ada 5", "ada 4"]
    assert (first["page"], first["pages"], first["total"]) == (1, 3, 5)
    assert (first["prev"], first["next"]) == (None, "/api/posts?page=2&per_page=2")
    middle = client.get(first["next"]).json
    assert middle is not None
    assert [post["title"] for post in middle["posts"]] == ["ada 3", "ada 2"]
    last = client.get(middle["next"]).json
    assert last is not None
    assert [post["title"] for post in last["posts"]] == ["ada 1"]
    assert (last["prev"], last["next"]) == ("/api/posts?page=2&per_page=2", None)
    assert client.get("/api/posts?page=4&per_page=2").status_code == 404


# -- the app factory and the CLI -------------------------------------------------------


def test_seed_command_commits(blog: Blog) -> None:
    result = blog.app.test_cli_runner().invoke(args=["seed", "--users", "2", "--posts", "3"])
    assert result.exit_code == 0, result.output
    assert "Added 2 users and 6 posts." in result.output
    assert blog.users() == ["user1", "user2"]
    assert len(blog.posts()) == 6


def test_each_app_writes_to_its_own_database(blog: Blog, tmp_path: Path) -> None:
    """Two apps from the factory, one Session: each request goes to its app's engine."""
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other = create_app({"SCOPED_SESSION_DATABASE_URI": other_url})
    other_engine = Session.get_engine(other)
    Base.metadata.create_all(other_engine)
    assert other_engine is not Session.get_engine(blog.app)

    assert other.test_client().post("/api/users", json={"name": "in-other"}).status_code == 201
    add_posts(blog, "in-blog", 1)
    assert blog.users() == ["in-blog"]
    assert Blog(other, other_url, "").users() == ["in-other"]
    assert checkedout(other_engine) == 0
    other_engine.dispose()


def test_default_database_is_a_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASK_SCOPED_SESSION_DATABASE_URI", raising=False)
    app = create_app()
    assert app.config["SCOPED_SESSION_DATABASE_URI"] == "sqlite:///flask_blog.db"
    assert Session.get_engine(app).dialect.name == "sqlite"
    # The environment picks another database, as the module's docstring says.
    monkeypatch.setenv("FLASK_SCOPED_SESSION_DATABASE_URI", "sqlite:///elsewhere.db")
    assert Session.get_engine(create_app()).url.database == "elsewhere.db"
    assert flask_blog.migrate.directory == str(EXAMPLES / "flask_blog" / "migrations")
