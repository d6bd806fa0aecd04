"""Generate the proxy's forwarding members from the installed SQLAlchemy.

::

    python tools/generate_proxy.py           # write the installed SQLAlchemy line's modules
    python tools/generate_proxy.py --check   # exit 1 with a diff when one is stale

SQLAlchemy's ``Session`` differs between its minor lines (2.1 added members and
parameters, and changed some defaults), and a forwarder must never pass a keyword the
installed session does not take. So there is a module per line and session kind:
``scoped_session/_session_api_20.py`` and ``_session_api_21.py`` (for
:class:`sqlalchemy.orm.Session`), ``scoped_session/_async_session_api_20.py`` and
``_async_session_api_21.py`` (for :class:`sqlalchemy.ext.asyncio.AsyncSession`). Run the
script once with the latest release of each line installed. The handwritten
``_session_api.py`` and ``_async_session_api.py`` pick the module at import time.

Each module holds one class. It forwards the members that SQLAlchemy's own proxy
(``scoped_session`` / ``async_scoped_session``) forwards, read from the names between
that proxy's ``# START PROXY METHODS`` and ``# END PROXY METHODS`` markers, and writes
each one as SQLAlchemy's generated proxy writes it: the same signature, and a call that
passes every parameter on explicitly, defaults included. It also gets a descriptor for
each public member of the session that the proxy does not forward, which raises an
``AttributeError`` saying to use the session for it.

Within a line the releases differ only in annotations (2.0.22's ``bulk_insert_mappings``
annotates ``mapper`` as ``Mapper[Any]``, 2.0.59 as ``_EntityBindKey[Any]``), never in
names, parameters or defaults. A module generated from a newer release of its line is
kept when the script runs with an older one, and ``--check`` does not compare it.

The output is already formatted as ``ruff format`` wants it, so that neither this script
nor the freshness test needs ruff. What it cannot lay out (a signature line that would
still be too long after splitting) stops it with an error.
"""

from __future__ import annotations

import argparse
import ast
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
#: What every forwarder calls: the caller's session, read as ``Registry._current()``
#: reads it, inline (a call would be most of a forwarder's cost), after ``SHOWN``.
SHOWN = "shown = self._slot.cell"
SESSION = "(shown.session or self._create({}, shown))"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One session kind: which session class and which SQLAlchemy proxy it follows."""

    #: SQLAlchemy's proxy class, whose proxied names are the ones generated.
    proxy_module: str
    proxy_class: str
    #: The session class (for the members the proxy does not forward).
    session_module: str
    session_class: str
    #: Where users import the session class from (for the docstrings).
    public_path: str
    #: The generated class.
    class_name: str
    #: The modules written, relative to the repository root, without ``_20.py``.
    stem: str

    def target(self, line: str) -> str:
        return f"{self.stem}_{line}.py"

    @property
    def chooser(self) -> str:
        """The handwritten module that picks a line's module: ``_session_api.py``."""
        return self.stem.rpartition("/")[2] + ".py"


KINDS: dict[str, Kind] = {
    "sync": Kind(
        proxy_module="sqlalchemy.orm.scoping",
        proxy_class="scoped_session",
        session_module="sqlalchemy.orm.session",
        session_class="Session",
        public_path="sqlalchemy.orm.Session",
        class_name="SessionProxy",
        stem="scoped_session/_session_api",
    ),
    "async": Kind(
        proxy_module="sqlalchemy.ext.asyncio.scoping",
        proxy_class="async_scoped_session",
        session_module="sqlalchemy.ext.asyncio.session",
        session_class="AsyncSession",
        public_path="sqlalchemy.ext.asyncio.AsyncSession",
        class_name="AsyncSessionProxy",
        stem="scoped_session/_async_session_api",
    ),
}


class GeneratorError(Exception):
    """SQLAlchemy changed in a way this script does not know how to write out."""


def installed_version() -> str:
    import sqlalchemy

    return str(sqlalchemy.__version__)


def line_of(version: str) -> str:
    """``"21"`` for SQLAlchemy 2.1.x: the suffix of the line's modules."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise GeneratorError(f"Cannot read the SQLAlchemy version {version!r}.")
    return found[1] + found[2]


def release(version: str) -> tuple[int, ...]:
    """``(2, 0, 59)`` for ``"2.0.59"``: for comparing releases of one line."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def recorded_version(text: str) -> str | None:
    """The SQLAlchemy release a generated module names in its docstring."""
    found = re.search(r"from SQLAlchemy (\d+\.\d+\.\d+\S*?);", text)
    return found[1] if found else None


# --------------------------------------------------------------------------- members


@dataclasses.dataclass
class Member:
    name: str
    kind: t.Literal["method", "classmethod", "property"]
    #: methods and classmethods: SQLAlchemy's proxy function (unwrapped)
    function: t.Callable[..., t.Any] | None = None
    #: properties: the annotations of SQLAlchemy's proxy property (getter, setter)
    getter_type: str = ""
    setter: inspect.Parameter | None = None


@dataclasses.dataclass
class Unforwarded:
    """A public member of the session that SQLAlchemy's proxy does not forward."""

    name: str
    #: how to reach it on the session, for the error message
    hint: str


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
    members = []
    for name in proxied_names(kind):
        proxied = inspect.getattr_static(proxy, name)
        if isinstance(proxied, property):
            assert proxied.fget is not None
            setter = None
            if proxied.fset is not None:
                setter = list(_signature(proxied.fset).parameters.values())[1]
                _annotation_text(setter.annotation)
            getter_type = _annotation_text(_signature(proxied.fget).return_annotation)
            members.append(Member(name, "property", getter_type=getter_type, setter=setter))
        elif isinstance(proxied, classmethod):
            members.append(Member(name, "classmethod", inspect.unwrap(proxied.__func__)))
        elif inspect.isfunction(proxied):
            members.append(Member(name, "method", inspect.unwrap(proxied)))
        else:
            raise GeneratorError(
                f"{kind.proxy_class}.{name} is a {type(proxied).__name__}: not a member this "
                "script knows (a method, a classmethod or a property)."
            )
    return members


def collect_unforwarded(kind: Kind, members: list[Member]) -> list[Unforwarded]:
    """The session's public members that the proxy does not forward: its class's,
    those its instances set in ``__init__``, and those its class only annotates."""
    session_class = getattr(importlib.import_module(kind.session_module), kind.session_class)
    proxy = getattr(importlib.import_module(kind.proxy_module), kind.proxy_class)
    names = set(dir(session_class))
    for cls in session_class.__mro__:
        names.update(inspect.get_annotations(cls))
    names.update(vars(session_class()))  # makes no connection
    forwarded = {member.name for member in members}
    found = []
    for name in sorted(names):
        if name.startswith("_") or name in forwarded or hasattr(proxy, name):
            continue
        member = inspect.getattr_static(session_class, name, None)
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if inspect.isfunction(member):
            takes = len(_signature(member).parameters) > 1
            awaited = "await " if inspect.iscoroutinefunction(member) else ""
            hint = f"{awaited}Session().{name}({'...' if takes else ''})"
        else:
            hint = f"Session().{name}"
        found.append(Unforwarded(name, hint))
    return found


def _signature(function: t.Callable[..., t.Any]) -> inspect.Signature:
    # The annotations stay the strings SQLAlchemy wrote (it uses postponed evaluation).
    return inspect.signature(function, eval_str=False)


def _annotation_text(annotation: object) -> str:
    if not isinstance(annotation, str):
        raise GeneratorError(f"Expected an annotation string, got {annotation!r}.")
    return annotation


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


def _parameters(member: Member) -> tuple[list[str], list[str]]:
    """The ``def`` line's parameters, and the call's arguments, as SQLAlchemy's
    generated proxy writes them (``format_argspec_plus``'s ``apply_kw_proxied``): a
    parameter without a default positionally, one with a default and every
    keyword-only one by keyword, then ``*args`` and ``**kw``."""
    assert member.function is not None
    function = member.function
    where = f"{function.__qualname__}()"
    parameters = list(_signature(function).parameters.values())
    kinds = [parameter.kind for parameter in parameters]
    has_star = inspect.Parameter.VAR_POSITIONAL in kinds
    texts: list[str] = []
    positional: list[str] = []
    keywords: list[str] = []
    for index, parameter in enumerate(parameters):
        name = parameter.name
        if index == 0:
            # self / cls: typed implicitly, as SQLAlchemy's are. SQLAlchemy 2.0.22 calls
            # AsyncSession.close_all's "self"; a classmethod's is in no signature.
            if parameter.annotation is not inspect.Parameter.empty:
                raise GeneratorError(f"{where}: its first parameter is annotated.")
            texts.append("cls" if member.kind == "classmethod" else name)
            continue
        if (
            parameter.kind is inspect.Parameter.KEYWORD_ONLY
            and not has_star
            and kinds[index - 1] is not inspect.Parameter.KEYWORD_ONLY
        ):
            texts.append("*")
        if parameter.annotation is inspect.Parameter.empty:
            raise GeneratorError(f"{where}: parameter {name!r} has no annotation.")
        text = f"{name}: {_annotation_text(parameter.annotation)}"
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            text = "*" + text
            positional.append(f"*{name}")
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
            keywords.append(f"**{name}")
        elif parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            keywords.append(f"{name}={name}")
        elif (
            parameter.default is inspect.Parameter.empty
            or parameter.kind is inspect.Parameter.POSITIONAL_ONLY
            # Before *args a keyword would clash with what *args fills in.
            or has_star
        ):
            positional.append(name)
        else:
            keywords.append(f"{name}={name}")
        if parameter.default is not inspect.Parameter.empty:
            text += " = " + _default(parameter.default, f"{where} parameter {name!r}")
        texts.append(text)
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and (
            index + 1 == len(parameters)
            or parameters[index + 1].kind is not inspect.Parameter.POSITIONAL_ONLY
        ):
            texts.append("/")
    # *args and **kw after the keywords, as a call reads best; the binding is the same.
    stars = [argument for argument in positional if argument.startswith("*")]
    plain = [argument for argument in positional if not argument.startswith("*")]
    doubles = [argument for argument in keywords if argument.startswith("**")]
    named = [argument for argument in keywords if not argument.startswith("**")]
    return texts, [*plain, *stars, *named, *doubles]


def _bracketed(head: str, items: list[str], tail: str, indent: str) -> list[str]:
    """``head(items)tail`` laid out as ruff format does: flat, hugged, or one per line."""
    flat = f"{indent}{head}({', '.join(items)}){tail}"
    if len(flat) <= LINE_LENGTH:
        return [flat]
    hugged = f"{indent}{INDENT}{', '.join(items)}"
    if len(hugged) <= LINE_LENGTH:
        lines = [f"{indent}{head}(", hugged, f"{indent}){tail}"]
    else:
        lines = [
            f"{indent}{head}(",
            *(f"{indent}{INDENT}{item}," for item in items),
            f"{indent}){tail}",
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
        return text + ("; settable." if member.setter else ".")
    if member.kind == "classmethod":
        return f"Call :meth:`{target}`; makes no session."
    return f"Call :meth:`{target}` on the caller's session."


def _member(kind: Kind, member: Member, indent: str) -> list[str]:
    body = indent + INDENT
    doc = _docstring(_member_doc(kind, member), body)
    name = member.name
    if member.kind == "property":
        lines = [f"{indent}@property", f"{indent}def {name}(self) -> {member.getter_type}:"]
        lines += [*doc, f"{body}{SHOWN}", f"{body}return {SESSION}.{name}"]
        if member.setter is not None:
            value = member.setter.name
            annotation = _annotation_text(member.setter.annotation)
            lines += ["", f"{indent}@{name}.setter"]
            lines += _bracketed(
                f"def {name}", ["self", f"{value}: {annotation}"], " -> None:", indent
            )
            lines += [f"{body}{SHOWN}", f"{body}{SESSION}.{name} = {value}"]
        return lines
    assert member.function is not None
    parameters, arguments = _parameters(member)
    returns = _signature(member.function).return_annotation
    arrow = "" if returns is inspect.Signature.empty else f" -> {_annotation_text(returns)}"
    lines = [f"{indent}@classmethod"] if member.kind == "classmethod" else []
    lines += _bracketed(f"def {name}", parameters, f"{arrow}:", indent)
    lines += doc
    if member.kind == "classmethod":
        return lines + _bracketed(f"return cls._session_class().{name}", arguments, "", body)
    lines.append(f"{body}{SHOWN}")
    return lines + _bracketed(f"return {SESSION}.{name}", arguments, "", body)


def _proxy_class(kind: Kind, members: list[Member], unforwarded: list[Unforwarded]) -> list[str]:
    indent = INDENT * 2
    lines = [
        f"{INDENT}class {kind.class_name}:",
        *_docstring(
            f"What SQLAlchemy's ``{kind.proxy_class}`` forwards, forwarded as it does.",
            indent,
            "A subclass provides ``_slot``, whose ``cell.session`` is the caller's session or "
            "``None``, ``_create({}, cell)``, which makes it from the cell the slot showed, "
            "and the classmethod "
            f"``_session_class()``, which returns :class:`{kind.public_path}` (imported on "
            "first use).",
        ),
        "",
        f"{indent}__slots__ = ()",
        "",
        f"{indent}#: Named by the error of a member it does not forward.",
        f'{indent}sqlalchemy_proxy = "{kind.proxy_class}"',
    ]
    for member in members:
        lines += ["", *_member(kind, member, indent)]
    if unforwarded:
        lines += [
            "",
            f"{indent}# The session's members that SQLAlchemy's proxy does not forward either.",
        ]
        for item in unforwarded:
            lines.append(f'{indent}{item.name} = NotForwarded("{item.hint}")')
    return lines


def _header(kind: Kind, version: str) -> list[str]:
    line = line_of(version)
    return [
        # The annotations are SQLAlchemy's own, verbatim, and name what it imports.
        "# ruff: noqa: F821",
        *_docstring(
            f"The proxy's members that forward to :class:`{kind.public_path}`, for "
            f"SQLAlchemy {line[0]}.{line[1:]}.",
            "",
            f"Generated by ``tools/generate_proxy.py`` from SQLAlchemy {version}; do not edit. "
            "Regenerate it with ``python tools/generate_proxy.py`` with the latest release "
            f"of SQLAlchemy {line[0]}.{line[1:]} installed.",
            f"Each member is written as SQLAlchemy's ``{kind.proxy_class}`` writes it: the "
            "signature is SQLAlchemy's, with its annotations verbatim, so that "
            "``inspect.signature`` and ``help()`` show SQLAlchemy's, and the call passes "
            "every parameter on explicitly, defaults included. The class is for run time "
            "only: type checkers see SQLAlchemy's own proxy class instead (see "
            f"``{kind.chooser}``), and so type every member as the "
            "installed SQLAlchemy does. Hence the annotations name what this module does "
            "not import, and the overloads are left out.",
        ),
    ]


def generate(kind_name: str) -> str:
    """The module for ``kind_name`` (``"sync"`` or ``"async"``), from the installed SQLAlchemy."""
    kind = KINDS[kind_name]
    version = installed_version()
    members = collect_members(kind)
    unforwarded = collect_unforwarded(kind, members)
    proxy_class = _proxy_class(kind, members, unforwarded)
    lines = [*_header(kind, version), "", "from __future__ import annotations"]
    lines += [
        "",
        "import types",
        "import typing as t",
        "",
        "from scoped_session._arguments import NotForwarded",
        "",
    ]
    if any("= _EMPTY_DICT" in line for line in proxy_class):
        lines += [
            "# SQLAlchemy's util.EMPTY_DICT, without importing SQLAlchemy: compares equal to it.",
            "_EMPTY_DICT: t.Final[t.Mapping[str, t.Any]] = types.MappingProxyType({})",
            "",
        ]
    lines += [
        "",
        f"# Type checkers see the class that {kind.chooser} names instead.",
        "if not t.TYPE_CHECKING:",
        "",
        *proxy_class,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the installed line's modules, or with ``--check`` compare them; 1 when
    stale, 2 on an error."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff when a checked-in module differs",
    )
    arguments = parser.parse_args(argv)
    version = installed_version()
    line = line_of(version)
    stale = False
    for kind_name, kind in KINDS.items():
        target = kind.target(line)
        path = ROOT / target
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        recorded = recorded_version(current)
        if recorded is not None and release(recorded) > release(version):
            print(f"kept {target}: generated from SQLAlchemy {recorded}, newer than {version}")
            continue
        try:
            expected = generate(kind_name)
        except GeneratorError as error:
            print(f"{target}: {error}", file=sys.stderr)
            return 2
        if arguments.check:
            if current != expected:
                stale = True
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        expected.splitlines(keepends=True),
                        f"{target} (checked in)",
                        f"{target} (generated)",
                    )
                )
        elif current != expected:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {target}")
            chooser = (ROOT / kind.stem).with_suffix(".py").read_text(encoding="utf-8")
            if path.stem not in chooser:
                print(f"  add it to the choice in {kind.chooser}", file=sys.stderr)
        else:
            print(f"unchanged {target}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
