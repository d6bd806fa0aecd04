"""The HTML pages: every post, newest first, and one user's posts, a page at a time
(``?page=2``)."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, render_template
from sqlalchemy.orm import selectinload

from scoped_session.flask import one_or_404, paginate

from .database import Session
from .models import BlogPost, User

bp = Blueprint("pages", __name__)

#: The most posts a page shows, whatever ``?per_page=`` asks for.
MAX_PER_PAGE = 50


def newest_posts() -> sa.Select[BlogPost]:
    # Each page's authors in one more query, not one query per post.
    return sa.select(BlogPost).options(selectinload(BlogPost.author)).order_by(BlogPost.id.desc())


@bp.get("/")
def index() -> str:
    page = paginate(Session, newest_posts(), max_per_page=MAX_PER_PAGE)
    return render_template("posts.html", title="All posts", page=page)


@bp.get("/users/<name>")
def user_posts(name: str) -> str:
    user = one_or_404(Session, sa.select(User).where(User.name == name))
    posts = newest_posts().where(BlogPost.author_id == user.id)
    page = paginate(Session, posts, max_per_page=MAX_PER_PAGE)
    return render_template("posts.html", title=f"Posts by {user.name}", page=page, user=user)
