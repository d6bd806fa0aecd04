"""The JSON API, under ``/api``. Writes are committed once the response is ready
(``SCOPED_SESSION_COMMIT``); a 4xx response commits nothing."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Blueprint, abort, request, url_for
from werkzeug.exceptions import HTTPException

from scoped_session.flask import get_or_404, one_or_404, paginate

from .database import Session
from .models import BlogPost, User
from .pages import MAX_PER_PAGE, newest_posts

bp = Blueprint("api", __name__)


@bp.errorhandler(HTTPException)
def json_error(error: HTTPException) -> tuple[dict[str, t.Any], int]:
    """Errors of the API's views as JSON, not as HTML pages."""
    return {"error": error.description}, error.code or 500


def json_body() -> dict[str, t.Any]:
    """The request's JSON object, else a 400 that says so."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "send a JSON object (Content-Type: application/json)")
    return data


def json_text(data: dict[str, t.Any], key: str, limit: int) -> str:
    """``data[key]`` if it is a non-empty string of at most ``limit`` characters,
    else a 400 that says so."""
    value = data.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        abort(
            400, f"send a JSON object with a non-empty string '{key}' of at most {limit} characters"
        )
    return value


@bp.post("/users")
def add_user() -> tuple[dict[str, t.Any], int, dict[str, str]]:
    name = json_text(json_body(), "name", 80)
    if Session.scalar(sa.select(User.id).where(User.name == name)) is not None:
        abort(409, f"the name {name!r} is taken")
    user = User(name=name)
    Session.add(user)
    Session.flush()  # assigns the id
    return user.to_json(), 201, {"Location": url_for("api.get_user", name=name)}


@bp.get("/users/<name>")
def get_user(name: str) -> dict[str, t.Any]:
    user = one_or_404(Session, sa.select(User).where(User.name == name), description="no such user")
    count = Session.scalar(sa.select(sa.func.count()).where(BlogPost.author_id == user.id))
    return {**user.to_json(), "posts": count}


@bp.post("/users/<name>/posts")
def add_post(name: str) -> tuple[dict[str, t.Any], int, dict[str, str]]:
    user = one_or_404(Session, sa.select(User).where(User.name == name), description="no such user")
    data = json_body()
    title, body = json_text(data, "title", 200), data.get("body", "")
    if not isinstance(body, str):
        abort(400, "'body' must be a string")
    post = BlogPost(author=user, title=title, body=body)
    Session.add(post)
    Session.flush()
    return post.to_json(), 201, {"Location": url_for("api.get_post", post_id=post.id)}


@bp.get("/posts")
def list_posts() -> dict[str, t.Any]:
    page = paginate(Session, newest_posts(), max_per_page=MAX_PER_PAGE)
    return {
        "posts": [post.to_json() for post in page],
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
        "next": page_url(page.next_num),
        "prev": page_url(page.prev_num),
    }


def page_url(number: int | None) -> str | None:
    """The URL of another page of posts, with the request's ``per_page``."""
    if number is None:
        return None
    return url_for("api.list_posts", page=number, per_page=request.args.get("per_page"))


@bp.get("/posts/<int:post_id>")
def get_post(post_id: int) -> dict[str, t.Any]:
    return get_or_404(Session, BlogPost, post_id, description="no such post").to_json()
