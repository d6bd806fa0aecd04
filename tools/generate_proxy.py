"""Generate the proxy's forwarding members from the installed SQLAlchemy.

::

    python tools/generate_proxy.py           # rewrite both modules
    python tools/generate_proxy.py --check   # exit 1 with a diff when one is stale

It writes ``scoped_session/_session_api.py`` (for :class:`sqlalchemy.orm.Session`) and
``scoped_session/_async_session_api.py`` (for :class:`sqlalchemy.ext.asyncio.AsyncSession`).
Each holds the members that SQLAlchemy's own proxy (``scoped_session`` /
``async_scoped_session``) forwards, read from the names between that proxy's ``# START
PROXY METHODS`` and ``# END PROXY METHODS`` markers, twice: a typed class with the
session's signatures, and the plain forwarders used at runtime.

The output is written already formatted as ``ruff format`` and ruff's isort want it, so
that neither this script nor the freshness test needs ruff. What it cannot lay out
(a signature line that would still be too long after splitting) stops it with an error.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import dataclasses
import difflib
import importlib
import inspect
import pathlib
import re
import sys
import textwrap
import typing as t

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINE_LENGTH = 100
INDENT = "    "


@dataclasses.dataclass(frozen=True)
class Kind:
    """One generated module: which session class and which SQLAlchemy proxy it follows."""

    #: SQLAlchemy's proxy class, whose proxied names are the ones generated.
    proxy_module: str
    proxy_class: str
    #: The session class whose signatures the members carry.
    session_module: str
    session_class: str
    #: Where users import the session class from (for the docstrings).
    public_path: str
    #: The module written, relative to the repository root.
    target: str

    @property
    def signatures_class(self) -> str:
        return f"{self.session_class}Signatures"

    @property
    def forwarders_class(self) -> str:
        return f"{self.session_class}Proxy"


KINDS: dict[str, Kind] = {
    "sync": Kind(
        proxy_module="sqlalchemy.orm.scoping",
        proxy_class="scoped_session",
        session_module="sqlalchemy.orm.session",
        session_class="Session",
        public_path="sqlalchemy.orm.Session",
        target="scoped_session/_session_api.py",
    ),
    "async": Kind(
        proxy_module="sqlalchemy.ext.asyncio.scoping",
        proxy_class="async_scoped_session",
        session_module="sqlalchemy.ext.asyncio.session",
        session_class="AsyncSession",
        public_path="sqlalchemy.ext.asyncio.AsyncSession",
        target="scoped_session/_async_session_api.py",
    ),
}


class GeneratorError(Exception):
    """SQLAlchemy changed in a way this script does not know how to write out."""


# --------------------------------------------------------------------------- members


@dataclasses.dataclass
class Member:
    name: str
    kind: t.Literal["method", "classmethod", "property"]
    #: methods and classmethods: the session's function (unwrapped), overloads first.
    functions: list[t.Callable[..., t.Any]] = dataclasses.field(default_factory=list)
    #: properties: the annotations of SQLAlchemy's proxy property (getter, setter).
    getter_type: str = ""
    setter_type: str | None = None
    #: the module whose namespace the annotations are written in
    module: str = ""


def proxied_names(kind: Kind) -> list[str]:
    """The names SQLAlchemy's proxy forwards: its members between the proxy markers."""
    path = inspect.getsourcefile(importlib.import_module(kind.proxy_module))
    if path is None:
        raise GeneratorError(f"No source for {kind.proxy_module}.")
    source = pathlib.Path(path).read_text(encoding="utf-8")
    lines = source.splitlines()
    markers = {}
    for edge in ("START", "END"):
        marker = f"# {edge} PROXY METHODS {kind.proxy_class}"
        found = [number for number, line in enumerate(lines, 1) if line.strip() == marker]
        if len(found) != 1:
            raise GeneratorError(f"{path}: expected one {marker!r} line, found {len(found)}.")
        markers[edge] = found[0]
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == kind.proxy_class:
            names = [
                member.name
                for member in node.body
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
                and markers["START"] < member.lineno < markers["END"]
            ]
            return list(dict.fromkeys(names))
    raise GeneratorError(f"{path}: no class {kind.proxy_class}.")


def collect_members(kind: Kind) -> list[Member]:
    proxy = getattr(importlib.import_module(kind.proxy_module), kind.proxy_class)
    session = getattr(importlib.import_module(kind.session_module), kind.session_class)
    members = []
    for name in proxied_names(kind):
        proxied = inspect.getattr_static(proxy, name)
        if isinstance(proxied, property):
            assert proxied.fget is not None
            setter_type = None
            if proxied.fset is not None:
                setter_type = _annotation_of(list(_signature(proxied.fset).parameters.values())[1])
            members.append(
                Member(
                    name,
                    "property",
                    getter_type=_annotation_text(_signature(proxied.fget).return_annotation),
                    setter_type=setter_type,
                    module=proxy.__module__,
                )
            )
            continue
        member_kind: t.Literal["method", "classmethod"]
        original = inspect.getattr_static(session, name)
        if isinstance(proxied, classmethod) and isinstance(original, classmethod):
            member_kind, function = "classmethod", original.__func__
        elif inspect.isfunction(proxied) and inspect.isfunction(original):
            member_kind, function = "method", original
        else:
            raise GeneratorError(
                f"{kind.proxy_class}.{name} is {type(proxied).__name__} and "
                f"{kind.session_class}.{name} is {type(original).__name__}: not a pair this "
                "script knows (a method, a classmethod, or a property on the proxy)."
            )
        functions = [*t.get_overloads(function), function]
        members.append(
            Member(
                name,
                member_kind,
                functions=functions,
                module=inspect.unwrap(function).__module__,
            )
        )
    return members


def _signature(function: t.Callable[..., t.Any]) -> inspect.Signature:
    # The annotations stay the strings SQLAlchemy wrote (it uses postponed evaluation).
    return inspect.signature(function, eval_str=False)


def _annotation_text(annotation: object) -> str:
    if not isinstance(annotation, str):
        raise GeneratorError(f"Expected an annotation string, got {annotation!r}.")
    return annotation


def _annotation_of(parameter: inspect.Parameter) -> str:
    return _annotation_text(parameter.annotation)


# --------------------------------------------------------------------------- names


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a name in an annotation comes from: ``from module import name``."""

    module: str
    name: str


_SOURCES: dict[str, dict[str, list[tuple[str, str] | None]] | None] = {}


def _bindings(module: str) -> dict[str, list[tuple[str, str] | None]] | None:
    """The module's top-level names: None when defined there, else (module, name) imported.

    Statements under ``if`` (``TYPE_CHECKING`` and version checks) and ``try`` count
    too; None when the module has no Python source to read.
    """
    if module in _SOURCES:
        return _SOURCES[module]
    path = _source_path(module)
    if path is None:
        _SOURCES[module] = None
        return None
    is_package = path.name == "__init__.py"
    found: dict[str, list[tuple[str, str] | None]] = {}

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node.module, node.level)
                for alias in node.names:
                    if alias.name != "*":
                        found.setdefault(alias.asname or alias.name, []).append(
                            (source, alias.name)
                        )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    # A module, not a name that can be imported from one.
                    local = alias.asname or alias.name.partition(".")[0]
                    found.setdefault(local, []).append((alias.name, ""))
            elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                found.setdefault(node.name, []).append(None)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            found.setdefault(leaf.id, []).append(None)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    _SOURCES[module] = found
    return found


def _source_path(module: str) -> pathlib.Path | None:
    # Only SQLAlchemy's own modules are followed; its compiled ones ship their .py too.
    if module != "sqlalchemy" and not module.startswith("sqlalchemy."):
        return None
    package = importlib.import_module("sqlalchemy")
    base = pathlib.Path(package.__path__[0]).joinpath(*module.split(".")[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _absolute(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        assert name is not None
        return name
    parts = module.split(".")
    if not is_package:
        parts.pop()
    if level > 1:
        parts = parts[: -(level - 1)]
    return ".".join([*parts, name] if name else parts)


def resolve(module: str, name: str) -> Origin | None:
    """Follow ``name`` as seen in ``module`` to the module that defines it.

    None for a builtin. A name bound more than one way (``if``/``else`` imports) stops
    at the module that binds it, as that is the name type checkers resolve.
    """
    bindings = _bindings(module)
    if bindings is None:
        return Origin(module, name)
    ways = bindings.get(name)
    if ways is None:
        if hasattr(builtins, name):
            return None
        raise GeneratorError(f"{name!r} is not bound in {module}; cannot import it.")
    if None in ways or len(set(ways)) > 1:
        return Origin(module, name)
    source, original = t.cast("tuple[str, str]", ways[0])
    if not original:
        raise GeneratorError(f"{name!r} is the module {source} in {module}; not supported.")
    followed = _bindings(source)
    if followed is None or original not in followed:
        # Outside SQLAlchemy (typing, typing_extensions), or set up at runtime there.
        return Origin(source, original)
    return resolve(source, original)


def names_in(annotation: str) -> set[str]:
    """The names an annotation string refers to."""
    names = set()
    for node in ast.walk(ast.parse(annotation, mode="eval")):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A quoted name inside the annotation string, or a Literal's value: neither
            # is in SQLAlchemy's signatures today, and each would need its own handling.
            raise GeneratorError(f"A string inside the annotation {annotation!r}.")
    return names


# What ruff (pyupgrade, for Python 3.11) reports in SQLAlchemy's annotations, which are
# kept verbatim: the generated module silences exactly these (ruff flags a needless one).
# UP035 is for the import of a name, by module; UP006 for a use of a name.
_TYPING = {"typing", "typing_extensions"}
_UP006 = {
    "typing": {"Dict", "List", "Set", "FrozenSet", "Tuple", "Type", "DefaultDict", "Deque"},
    "typing_extensions": {"Type", "DefaultDict", "Deque"},
}
_UP035_OR_NOT = {
    "typing": (
        {"Callable", "Iterable", "Iterator", "Mapping", "Sequence", "AbstractSet", "Collection"}
        | {"AsyncIterator", "Awaitable", "Coroutine", "Generator", "ContextManager"}
        | _UP006["typing"],
        {"Any", "Concatenate", "Literal", "Never", "NoReturn", "Optional", "Union", "Protocol"}
        | {"ParamSpec", "TypeVar", "Unpack", "Self"},
    ),
    "typing_extensions": (
        {"Any", "Callable", "Concatenate", "Iterable", "Iterator", "Literal", "Mapping", "Never"}
        | {"NoReturn", "Optional", "Sequence", "Union", "AsyncIterator", "Awaitable", "Self"}
        | {"Coroutine", "AbstractSet", "Collection", "Dict", "List", "Set", "FrozenSet"}
        | {"Tuple", "Type", "DefaultDict", "Deque"},
        {"ParamSpec", "TypeVar", "Unpack", "Generator", "ContextManager", "Protocol"},
    ),
}


class Imports:
    """The names the annotations use, each with where it is imported from."""

    def __init__(self) -> None:
        self.origins: dict[str, Origin] = {}
        #: the ruff rules the annotations break (see _UP006)
        self.ruff_codes: set[str] = set()

    def add(self, annotation: str, module: str, *, star_args: bool = False) -> str:
        for name in names_in(annotation):
            origin = resolve(module, name)
            if origin is None:
                continue
            known = self.origins.setdefault(name, origin)
            if known != origin:
                raise GeneratorError(
                    f"{name!r} means {known} in one annotation and {origin} in another."
                )
        self._note_ruff_codes(annotation, star_args)
        return annotation

    def _note_ruff_codes(self, annotation: str, star_args: bool) -> None:
        root = ast.parse(annotation, mode="eval").body
        nested = {
            id(leaf)
            for node in ast.walk(root)
            if isinstance(node, ast.Subscript)
            for leaf in ast.walk(node.slice)
        }
        for node in ast.walk(root):
            if not isinstance(node, ast.Name) or node.id not in self.origins:
                continue
            origin = self.origins[node.id]
            if origin.module not in _TYPING:
                continue
            if origin.name in _UP006[origin.module]:
                self.ruff_codes.add("UP006")
            self.ruff_codes |= {"Union": {"UP007"}, "Optional": {"UP045"}}.get(origin.name, set())
            if origin.name == "Unpack" and (star_args or id(node) in nested):
                self.ruff_codes.add("UP044")  # Unpack[X] in a subscript or for *args: *X

    def render(self) -> list[str]:
        """The ``from ... import ...`` lines, grouped and ordered as ruff's isort does."""
        # ruff keeps each ``name as alias`` in a statement of its own.
        statements: list[tuple[str, list[tuple[str, str]]]] = []
        plain: dict[str, list[tuple[str, str]]] = {}
        for local, origin in self.origins.items():
            if origin.name == local:
                plain.setdefault(origin.module, []).append((origin.name, local))
            else:
                statements.append((origin.module, [(origin.name, local)]))
        statements += plain.items()
        for origin in self.origins.values():
            if origin.module in _TYPING:
                deprecated, fine = _UP035_OR_NOT[origin.module]
                if origin.name in deprecated:
                    self.ruff_codes.add("UP035")
                elif origin.name not in fine:
                    raise GeneratorError(
                        f"Does ruff want {origin.module}.{origin.name} imported elsewhere "
                        "(UP035)? Add it to _UP035_OR_NOT accordingly."
                    )
        sections: list[list[str]] = [[], []]
        for module, members in sorted(
            statements, key=lambda s: (_natural(s[0]), _member_key(min(s[1], key=_member_key)))
        ):
            stdlib = module.partition(".")[0] in sys.stdlib_module_names
            sections[0 if stdlib else 1] += _import_lines(module, sorted(members, key=_member_key))
        return [*sections[0], *([""] if all(sections) else []), *sections[1]]


def _natural(text: str) -> list[tuple[int, int | str]]:
    # ruff's isort compares case-insensitively, with digit runs compared as numbers.
    return [
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", text.lower())
        if part
    ]


def _member_key(member: tuple[str, str]) -> tuple[int, list[tuple[int, int | str]], str]:
    name, local = member
    # ruff's order-by-type: CONSTANTS, then Classes, then everything else.
    if len(name) > 1 and name.upper() == name and name.lower() != name:
        rank = 0
    elif name[0].isupper():
        rank = 1
    else:
        rank = 2
    return rank, _natural(name), local


def _import_lines(module: str, members: list[tuple[str, str]]) -> list[str]:
    names = [name if name == local else f"{name} as {local}" for name, local in members]
    line = f"{INDENT}from {module} import {', '.join(names)}"
    if len(line) <= LINE_LENGTH:
        return [line]
    return [
        f"{INDENT}from {module} import (",
        *(f"{INDENT * 2}{name}," for name in names),
        f"{INDENT})",
    ]


# --------------------------------------------------------------------------- rendering


def _default(value: object, where: str) -> str:
    from sqlalchemy import util

    if value is None or type(value) in (bool, int, float):
        return repr(value)
    if type(value) is str and '"' not in value and "\\" not in value:
        return '"' + repr(value)[1:-1] + '"'
    if value is util.EMPTY_DICT:
        return "_EMPTY_DICT"
    raise GeneratorError(
        f"{where} has the default {value!r}; teach _default() how to write it (a module "
        "constant that compares equal to it, as _EMPTY_DICT does for util.EMPTY_DICT)."
    )


def _parameters(
    function: t.Callable[..., t.Any], imports: Imports, module: str, *, is_classmethod: bool
) -> list[str]:
    where = f"{function.__qualname__}()"
    texts: list[str] = []
    parameters = list(_signature(function).parameters.values())
    kinds = [parameter.kind for parameter in parameters]
    for index, parameter in enumerate(parameters):
        if index == 0:
            # self / cls: typed implicitly, as SQLAlchemy's are.
            if parameter.annotation is not inspect.Parameter.empty:
                raise GeneratorError(f"{where}: its first parameter is annotated.")
            # A classmethod's is in no signature that can be seen, and SQLAlchemy 2.0 calls
            # AsyncSession.close_all's "self", which pyright's strict mode rejects.
            texts.append("cls" if is_classmethod else parameter.name)
            continue
        if (
            parameter.kind is inspect.Parameter.KEYWORD_ONLY
            and inspect.Parameter.VAR_POSITIONAL not in kinds
            and kinds[index - 1] is not inspect.Parameter.KEYWORD_ONLY
        ):
            texts.append("*")
        if parameter.annotation is inspect.Parameter.empty:
            raise GeneratorError(f"{where}: parameter {parameter.name!r} has no annotation.")
        text = f"{parameter.name}: "
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            text = "*" + text
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
        text += imports.add(
            _annotation_of(parameter),
            module,
            star_args=parameter.kind is inspect.Parameter.VAR_POSITIONAL,
        )
        if parameter.default is not inspect.Parameter.empty:
            text += " = " + _default(parameter.default, f"{where} parameter {parameter.name!r}")
        texts.append(text)
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and (
            index + 1 == len(parameters)
            or parameters[index + 1].kind is not inspect.Parameter.POSITIONAL_ONLY
        ):
            texts.append("/")
    return texts


def _def(
    head: str, parameters: list[str], returns: str, indent: str, *, stub: bool = False
) -> list[str]:
    """A ``def`` line laid out as ruff format does: flat, hugged, or one per line."""
    tail = f"){returns}:" + (" ..." if stub else "")
    flat = f"{indent}{head}({', '.join(parameters)}{tail}"
    if len(flat) <= LINE_LENGTH:
        return [flat]
    hugged = f"{indent}{INDENT}{', '.join(parameters)}"
    if len(hugged) <= LINE_LENGTH:
        lines = [f"{indent}{head}(", hugged, f"{indent}{tail}"]
    else:
        lines = [
            f"{indent}{head}(",
            *(f"{indent}{INDENT}{parameter}," for parameter in parameters),
            f"{indent}{tail}",
        ]
    too_long = [line for line in lines if len(line) > LINE_LENGTH]
    if too_long:
        raise GeneratorError(f"Cannot lay out within {LINE_LENGTH} columns: {too_long[0]!r}")
    return lines


def _docstring(summary: str, indent: str, *paragraphs: str) -> list[str]:
    """A docstring as ruff format leaves it: a one-liner when it fits, else wrapped."""
    one_line = f'{indent}"""{summary}"""'
    if not paragraphs and len(one_line) <= LINE_LENGTH:
        return [one_line]
    # The width leaves room for the closing quotes: ruff format would join a lone
    # line with them, past the line length.
    width = min(LINE_LENGTH - len(indent) - 3, 88)
    lines = textwrap.wrap(summary, width, initial_indent='"""', **_WRAP)
    for paragraph in paragraphs:
        lines += ["", *textwrap.wrap(paragraph, width, **_WRAP)]
    return [f"{indent}{line}" if line else "" for line in [*lines, '"""']]


_WRAP: dict[str, t.Any] = {"break_long_words": False, "break_on_hyphens": False}


def _member_doc(kind: Kind, member: Member) -> str:
    target = f"{kind.public_path}.{member.name}"
    if member.kind == "property":
        text = f"The caller's session's :attr:`~{target}`"
        return text + ("; settable." if member.setter_type else ".")
    if member.kind == "classmethod":
        return f"Call :meth:`{target}`; makes no session."
    return f"Call :meth:`{target}` on the caller's session."


def _signatures_class(kind: Kind, members: list[Member], imports: Imports) -> list[str]:
    indent, body = INDENT, INDENT * 2
    lines = [
        f"class {kind.signatures_class}:",
        *_docstring(
            "The typed signatures of the forwarded members; never called.",
            indent,
            f"They are those of :class:`{kind.public_path}`; see the module docstring.",
        ),
    ]
    for member in members:
        lines.append("")
        doc = _docstring(_member_doc(kind, member), body)
        if member.kind == "property":
            getter = imports.add(member.getter_type, member.module)
            lines += [f"{indent}@property", f"{indent}def {member.name}(self) -> {getter}:"]
            lines += [*doc, f"{body}raise NotImplementedError"]
            if member.setter_type is not None:
                setter = imports.add(member.setter_type, member.module)
                lines += ["", f"{indent}@{member.name}.setter"]
                lines += _def(
                    f"def {member.name}", ["self", f"value: {setter}"], " -> None", indent
                )
                lines.append(f"{body}raise NotImplementedError")
            continue
        *overloads, implementation = member.functions
        for function in [*overloads, implementation]:
            is_overload = function is not implementation
            if is_overload:
                lines.append(f"{indent}@t.overload")
            if member.kind == "classmethod":
                lines.append(f"{indent}@classmethod")
            head = ("async def " if inspect.iscoroutinefunction(function) else "def ") + member.name
            returns = _signature(function).return_annotation
            arrow = ""
            if returns is not inspect.Signature.empty:
                arrow = " -> " + imports.add(_annotation_text(returns), member.module)
            parameters = _parameters(
                function, imports, member.module, is_classmethod=member.kind == "classmethod"
            )
            lines += _def(head, parameters, arrow, indent, stub=is_overload)
        lines += [*doc, f"{body}raise NotImplementedError"]
    return lines


def _forwarders_class(kind: Kind, members: list[Member]) -> list[str]:
    indent, body = INDENT * 2, INDENT * 3
    lines = [
        f"{INDENT}class {kind.forwarders_class}:",
        *_docstring(
            "The forwarders that run, each a scope read and one call.",
            indent,
            "A subclass provides ``_slot``, whose ``cell.session`` is the caller's session or "
            "``None``, ``_create({})``, which makes it, and the classmethod "
            f"``_session_class()``, which returns :class:`{kind.public_path}` (imported on "
            "first use). Each member reads the session as ``Registry._current()`` does, "
            "inline: the call would be most of a forwarder's cost.",
        ),
        "",
        f"{indent}__slots__ = ()",
    ]
    # Registry._current(), inline: the call would be most of a forwarder's cost.
    read = f"{body}session = self._slot.cell.session or self._create({{}})"
    for member in members:
        name = member.name
        lines.append("")
        if member.kind == "property":
            lines += [f"{indent}@property", f"{indent}def {name}(self):", read]
            lines.append(f"{body}return session.{name}")
            if member.setter_type is not None:
                lines += ["", f"{indent}@{name}.setter", f"{indent}def {name}(self, value):"]
                lines += [read, f"{body}session.{name} = value"]
        elif member.kind == "classmethod":
            lines += [f"{indent}@classmethod", f"{indent}def {name}(cls, /, *args, **kwargs):"]
            lines.append(f"{body}return cls._session_class().{name}(*args, **kwargs)")
        elif name == "__contains__":
            lines += [f"{indent}def __contains__(self, instance):", read]
            lines.append(f"{body}return instance in session")
        elif name == "__iter__":
            lines += [f"{indent}def __iter__(self):", read, f"{body}return iter(session)"]
        elif name.startswith("__"):
            raise GeneratorError(f"No forwarder written for the special method {name}.")
        elif len(_signature(member.functions[-1]).parameters) == 1:
            # Nothing to pass on but self: a plain call is the arguments as given,
            # and much cheaper than a star call (no tuple, no dict, no slow path).
            lines += [f"{indent}def {name}(self):", read, f"{body}return session.{name}()"]
        else:
            lines += [f"{indent}def {name}(self, /, *args, **kwargs):", read]
            lines.append(f"{body}return session.{name}(*args, **kwargs)")
    return lines


_ADOPT_TWINS = """\
    # Each forwarder shows its typed twin's signature (inspect.signature follows
    # __wrapped__) and docstring, for help() and editors.
    for _name, _forwarder in vars({proxy}).items():
        _twin = vars({signatures}).get(_name)
        if isinstance(_forwarder, property):
            _forwarder.__doc__ = _twin.__doc__
        elif isinstance(_forwarder, classmethod):
            _forwarder.__func__.__wrapped__ = _twin.__func__
            _forwarder.__func__.__doc__ = _twin.__doc__
        elif isinstance(_forwarder, types.FunctionType):
            _forwarder.__wrapped__ = _twin
            _forwarder.__doc__ = _twin.__doc__
    del _name, _forwarder, _twin
"""


def _header(kind: Kind, version: str, ruff_codes: set[str]) -> list[str]:
    signatures, forwarders = kind.signatures_class, kind.forwarders_class
    paragraphs = [
        f"Generated by ``tools/generate_proxy.py`` from SQLAlchemy {version}; do not edit. "
        "Regenerate it with ``python tools/generate_proxy.py`` after upgrading SQLAlchemy. "
        "The annotations are SQLAlchemy's own, verbatim: hence its private names, and "
        "``Optional`` and ``Union``, which the comments above let through.",
        f"Why two classes: a typed signature binds the arguments and fills in the defaults, so "
        f"it cannot also pass them on exactly as given. :class:`{signatures}` has each "
        "member's signature and overloads, for type checkers, and at runtime for "
        f"``inspect.signature`` and ``help()``. :class:`{forwarders}` is what runs: each method "
        "reads the caller's session and calls it with ``*args, **kwargs`` (or with nothing, "
        "where the session's method takes nothing), so the session, or a subclass's "
        "override, receives the arguments as the caller wrote them. Type "
        f"checkers see :class:`{forwarders}` as :class:`{signatures}`.",
    ]
    return [
        "# pyright: reportPrivateUsage=false",
        *([f"# ruff: noqa: {', '.join(sorted(ruff_codes))}"] if ruff_codes else []),
        *_docstring(
            f"The proxy's members that forward to :class:`{kind.public_path}`.", "", *paragraphs
        ),
    ]


def generate(kind_name: str) -> str:
    """The module for ``kind_name`` (``"sync"`` or ``"async"``), from the installed SQLAlchemy."""
    import sqlalchemy

    kind = KINDS[kind_name]
    version = ".".join(sqlalchemy.__version__.split(".")[:2])
    members = collect_members(kind)
    imports = Imports()
    signatures = _signatures_class(kind, members, imports)
    forwarders = _forwarders_class(kind, members)
    imported = imports.render()  # before the header: it notes ruff codes too
    lines = [*_header(kind, version, imports.ruff_codes), "", "from __future__ import annotations"]
    lines += ["", "import types", "import typing as t", ""]
    if imported:
        lines += ["if t.TYPE_CHECKING:", *imported, ""]
    if any("= _EMPTY_DICT" in line for line in signatures):
        lines += [
            "# SQLAlchemy's util.EMPTY_DICT, without importing SQLAlchemy: compares equal to it.",
            "_EMPTY_DICT: t.Final[t.Mapping[str, t.Any]] = types.MappingProxyType({})",
            "",
        ]
    lines += ["", *signatures, "", "", "if t.TYPE_CHECKING:"]
    lines += [f"{INDENT}{kind.forwarders_class} = {kind.signatures_class}", "else:", ""]
    lines += [*forwarders, ""]
    text = "\n".join(lines) + "\n"
    text += _ADOPT_TWINS.format(proxy=kind.forwarders_class, signatures=kind.signatures_class)
    return text


def main(argv: list[str] | None = None) -> int:
    """Write both modules, or with ``--check`` compare them; 1 when stale, 2 on an error."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff when a checked-in module differs",
    )
    arguments = parser.parse_args(argv)
    stale = False
    for kind_name, kind in KINDS.items():
        path = ROOT / kind.target
        try:
            expected = generate(kind_name)
        except GeneratorError as error:
            print(f"{kind.target}: {error}", file=sys.stderr)
            return 2
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if arguments.check:
            if current != expected:
                stale = True
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        expected.splitlines(keepends=True),
                        f"{kind.target} (checked in)",
                        f"{kind.target} (generated)",
                    )
                )
        elif current != expected:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {kind.target}")
        else:
            print(f"unchanged {kind.target}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
