"""Flask-SQLAlchemy's query helpers over SQLAlchemy 2.0 ``select()``, for any session.

::

    from sqlalchemy import select
    from scoped_session.flask import FlaskScopedSession, get_or_404, paginate

    Session = FlaskScopedSession(sessionmaker(engine))

    @app.get("/users/<int:id>")
    def show_user(id):
        user = get_or_404(Session, User, id)  # was db.get_or_404(User, id)
        ...

    @app.get("/users")
    def list_users():
        page = paginate(Session, select(User).order_by(User.id))  # ?page=2&per_page=10
        return render_template("users.html", page=page)

The first argument is the session to query: the registry itself (it proxies the
caller's session) or any SQLAlchemy ``Session``. Missing objects end the request
with ``flask.abort(404)``, as Flask-SQLAlchemy's do.
"""

from __future__ import annotations

import typing as t
from math import ceil

from flask import abort, has_request_context, request

from ._arguments import check_flag, sqlalchemy_module

if t.TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.engine import ScalarResult

__all__ = [
    "Pagination",
    "SessionLike",
    "first_or_404",
    "get_or_404",
    "one_or_404",
    "paginate",
]

T = t.TypeVar("T")

#: The page size when neither the call nor the request's ``per_page`` gives one.
DEFAULT_PER_PAGE = 20


class SessionLike(t.Protocol):
    """What the helpers call on a session: a SQLAlchemy ``Session`` or a scoped
    session (such as :class:`FlaskScopedSession`) that proxies one."""

    def get(self, entity: type[T], ident: t.Any, /) -> T | None: ...

    def scalars(self, statement: Select[T], /) -> ScalarResult[T]: ...

    def scalar(self, statement: Select[T], /) -> T | None: ...


def get_or_404(
    session: SessionLike, entity: type[T], ident: t.Any, *, description: str | None = None
) -> T:
    """``session.get(entity, ident)``, or abort with ``404 Not Found`` when there is
    no such object.

    :param session: the session (or scoped session) to query.
    :param entity: the mapped class.
    :param ident: its primary key: a value, or a tuple or dict for a composite key.
    :param description: the 404 response's description.
    """
    value = session.get(entity, ident)
    if value is None:
        abort(404, description=description)
    return value


def first_or_404(
    session: SessionLike, statement: Select[T], *, description: str | None = None
) -> T:
    """The first result of ``session.scalars(statement)``, or abort with
    ``404 Not Found`` when there is none.

    :param description: the 404 response's description.
    """
    value = session.scalars(statement).first()
    if value is None:
        abort(404, description=description)
    return value


def one_or_404(session: SessionLike, statement: Select[T], *, description: str | None = None) -> T:
    """The only result of ``session.scalars(statement)``, or abort with
    ``404 Not Found`` when there is none. More than one result raises SQLAlchemy's
    ``MultipleResultsFound``: that is a bug in the query, not a missing page.

    :param description: the 404 response's description.
    """
    exc = sqlalchemy_module("sqlalchemy.exc", "one_or_404()")
    try:
        return session.scalars(statement).one()
    except exc.NoResultFound:
        abort(404, description=description)


class Pagination(t.Generic[T]):
    """One page of a statement's results, with what a template needs to link to the
    others. Made by :func:`paginate`; iterating over it iterates over its items."""

    __slots__ = ("items", "page", "per_page", "total")

    def __init__(self, items: list[T], page: int, per_page: int, total: int | None) -> None:
        #: The results on this page.
        self.items: t.Final[list[T]] = items
        #: This page's number, from 1.
        self.page: t.Final = page
        #: The largest number of results on a page.
        self.per_page: t.Final = per_page
        #: How many results all pages hold; ``None`` when ``paginate(count=False)``.
        self.total: t.Final = total

    def __repr__(self) -> str:
        return (
            f"<Pagination page={self.page} per_page={self.per_page} total={self.total}"
            f" items={len(self.items)}>"
        )

    def __iter__(self) -> t.Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def pages(self) -> int:
        """How many pages there are: 0 when there are no results or no total."""
        if not self.total:
            return 0
        return ceil(self.total / self.per_page)

    @property
    def first(self) -> int:
        """The number of this page's first result, from 1; 0 when the page is empty."""
        if not self.items:
            return 0
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The number of this page's last result, from 1; 0 when the page is empty."""
        if not self.items:
            return 0
        return self.first + len(self.items) - 1

    @property
    def has_prev(self) -> bool:
        """Whether there is a page before this one."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one (never without a total)."""
        return self.page < self.pages

    @property
    def prev_num(self) -> int | None:
        """The previous page's number, ``None`` on the first page."""
        return self.page - 1 if self.has_prev else None

    @property
    def next_num(self) -> int | None:
        """The next page's number, ``None`` on the last page."""
        return self.page + 1 if self.has_next else None

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> t.Iterator[int | None]:
        """The page numbers for a pagination widget, with ``None`` for each gap, as
        Flask-SQLAlchemy 3.1 yields them. With 20 pages, on page 7::

            1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20

        :param left_edge: how many pages to show from the first one.
        :param left_current: how many pages to show before the current one.
        :param right_current: how many pages to show after the current one.
        :param right_edge: how many pages to show up to the last one.
        """
        end = self.pages + 1  # one past the last page
        # Three runs (edge, around the current page, edge), each starting no
        # earlier than the one before it ended; a gap between two is a None.
        left_stop = min(1 + left_edge, end)
        middle_stop = min(self.page + right_current + 1, end)
        runs = (
            (1, left_stop),
            (max(left_stop, self.page - left_current), middle_stop),
            (max(middle_stop, end - right_edge), end),
        )
        previous_stop = 1
        for start, stop in runs:
            if previous_stop == end:
                return
            if start > previous_stop:
                yield None
            yield from range(start, stop)
            previous_stop = stop


def paginate(
    session: SessionLike,
    statement: Select[T],
    *,
    page: int | None = None,
    per_page: int | None = None,
    max_per_page: int | None = None,
    error_out: bool = True,
    count: bool = True,
) -> Pagination[T]:
    """One page of ``session.scalars(statement)``, as Flask-SQLAlchemy's
    ``db.paginate()`` gives it.

    Give the statement an ``order_by()``, or pages may overlap.

    :param session: the session (or scoped session) to query.
    :param statement: the ``select()`` to page through, such as ``select(User)``.
    :param page: the page's number, from 1. By default, the request's ``page``
        query argument, or 1 outside a request or without one.
    :param per_page: how many results a page holds. By default, the request's
        ``per_page`` query argument, or 20 outside a request or without one.
    :param max_per_page: the largest ``per_page`` to use, to cap a value from the
        query string; ``None`` for no cap.
    :param error_out: abort with ``404 Not Found`` when ``page`` or ``per_page`` is
        not a whole number of at least 1, or the page past the first is empty;
        ``False``: use page 1 and 20 results a page instead of a bad value, and
        return an empty page past the end.
    :param count: count all the results (one more query) for ``total`` and ``pages``;
        ``False`` leaves ``total`` as ``None``.
    """
    error_out = check_flag(error_out, "error_out")
    count = check_flag(count, "count")
    _check_number(page, "page")
    _check_number(per_page, "per_page")
    _check_number(max_per_page, "max_per_page")
    if max_per_page is not None and max_per_page < 1:
        raise ValueError(
            f"max_per_page must be at least 1 (or None for no cap), not {max_per_page}."
        )
    if page is None:
        page = _query_arg("page", 1, error_out)
    if per_page is None:
        per_page = _query_arg("per_page", DEFAULT_PER_PAGE, error_out)
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            abort(404)
        page = 1
    if per_page < 1:
        if error_out:
            abort(404)
        per_page = DEFAULT_PER_PAGE

    sa = sqlalchemy_module("sqlalchemy", "paginate()")
    items = list(session.scalars(statement.limit(per_page).offset((page - 1) * per_page)).all())
    if not items and page != 1 and error_out:
        abort(404)
    total: int | None = None
    if count:
        counted = sa.select(sa.func.count()).select_from(statement.order_by(None).subquery())
        total = int(session.scalar(counted) or 0)
    return Pagination(items, page, per_page, total)


def _check_number(value: object, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(
            f"{name} must be an int (or None for the default), not an object of type"
            f" {type(value).__name__}. Convert it first, for example {name}=int(value)."
        )


def _query_arg(name: str, default: int, error_out: bool) -> int:
    """The request's query argument ``name`` as an int, ``default`` outside a request
    or without it; a value that is not an int aborts with 404 (or gives ``default``)."""
    if not has_request_context() or name not in request.args:
        return default
    try:
        return int(request.args[name])
    except ValueError:
        if error_out:
            abort(404)
        return default
