"""Checks of what users pass (and need), shared by the registries and the
integrations: each raises at the call that made the mistake, saying what to pass
or install instead."""

from __future__ import annotations

import importlib
import types
import typing as t

from ._scopes import Scope

__all__ = [
    "NotForwarded",
    "check_flag",
    "check_registry",
    "registries",
    "sqlalchemy_module",
]


def check_flag(value: object, name: str) -> bool:
    """``value`` if it is a bool, else a TypeError that names the argument."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} must be True or False, not an object of type {type(value).__name__}."
        )
    return value


def check_registry(
    name: str,
    session_factory: object,
    scopefunc: object,
    scope: object,
    strict: object,
    *,
    scope_names: tuple[str, ...],
    factory_hint: str,
    scope_help: str,
) -> None:
    """Check the arguments of the registry class ``name``, which takes the scopes
    ``scope_names`` (the first is the default) or a :class:`Scope` object; the
    messages suggest ``factory_hint`` (code) and say ``scope_help``."""
    if not callable(session_factory):
        raise TypeError(
            f"{name}() needs a session factory: a callable that returns a new"
            f" session, such as {factory_hint}; got an object of type"
            f" {type(session_factory).__name__}."
        )
    if scopefunc is not None and scope is not None:
        raise TypeError(
            f"Pass either scopefunc (a custom key) or scope={scope_names[0]!r}, not both."
        )
    if scopefunc is not None and not callable(scopefunc):
        raise TypeError(
            "scopefunc must be a callable that returns a hashable key for the"
            f" current scope; got an object of type {type(scopefunc).__name__}."
            f" For a built-in scope pass scope={scope_names[0]!r}."
        )
    if not (scope is None or isinstance(scope, Scope) or scope in scope_names):
        raise ValueError(f"Unknown scope {scope!r}: {scope_help}, or a scopefunc for a custom key.")
    check_flag(strict, "strict")


def registries(
    value: object, what: str, kind: type[t.Any], argument: str = "session"
) -> tuple[t.Any, ...]:
    """Validate the registries an integration was given: one registry or a non-empty
    sequence of them, each once, of ``kind``, none of them a FlaskScopedSession
    (whose sessions only Flask's application context ends). ``argument`` names the
    parameter (or attribute) the registries came in, for messages."""
    name = kind.__name__
    if isinstance(value, kind):
        found: tuple[t.Any, ...] = (value,)
    elif isinstance(value, t.Sequence) and not isinstance(value, str | bytes):
        found = tuple(value)
        if not found:
            raise ValueError(f"{what} needs at least one {name}; got an empty sequence.")
    else:
        raise TypeError(
            f"{what} takes a {name} or a list of them; got an object of type"
            f" {type(value).__name__}. Wrap the factory first:"
            f" Session = {name}(sessionmaker(engine))."
        )
    for item in found:
        if not isinstance(item, kind):
            raise TypeError(
                f"{what} takes {name} objects; the list holds an object of type"
                f" {type(item).__name__}. Wrap the factory first:"
                f" Session = {name}(sessionmaker(engine))."
            )
    for item in found:
        if item.scope_kind == "flask":
            raise TypeError(
                f"{what} got a FlaskScopedSession as {argument}, and cannot end its"
                " sessions: they live on Flask's application context, which only"
                f" Flask opens and ends. Pass a ScopedSession of its own as {argument}"
                " (ScopedSession(sessionmaker(engine))), or push 'app.app_context()'"
                " in the work and let the FlaskScopedSession end it there."
            )
    if len(set(map(id, found))) != len(found):
        raise ValueError(f"The same {kind.__name__} was passed to {what} twice; pass each once.")
    return found


def sqlalchemy_module(name: str, what: str) -> types.ModuleType:
    """Import ``name`` from SQLAlchemy for ``what`` (a feature only SQLAlchemy's
    sessions have), or say what to install."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "sqlalchemy":
            raise
        raise ModuleNotFoundError(
            f"SQLAlchemy is not installed, and {what} uses it. Install it with"
            " 'pip install scoped-session[sqlalchemy]'.",
            name="sqlalchemy",
        ) from exc


class NotForwarded:
    """A member of the session that the proxy does not forward, as SQLAlchemy's
    proxy (named by the class's ``sqlalchemy_proxy``) does not: reading it on the
    proxy raises an ``AttributeError`` that says to use the session (no session is
    made), so that ``hasattr()`` is false and the mistake fails at once. The
    generated proxies use it."""

    __slots__ = ("hint", "name")

    def __init__(self, hint: str) -> None:
        self.hint = hint
        self.name = ""

    def __set_name__(self, owner: type[object], name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type[object] | None = None) -> t.NoReturn:
        cls = owner or type(instance)
        proxy = cls.__name__
        what = f"type object {proxy!r}" if instance is None else f"{proxy!r} object"
        raise AttributeError(
            f"{what} has no attribute {self.name!r}: {proxy} does not forward the"
            f" session's {self.name}, like SQLAlchemy's"
            f" {getattr(cls, 'sqlalchemy_proxy', 'scoped_session')}. Use it on the"
            f" session: {self.hint}",
            name=self.name,
            obj=cls if instance is None else instance,
        )
