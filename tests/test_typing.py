"""Our registries type-check as SQLAlchemy's do, under mypy --strict and pyright strict.

The case files in ``tests/typing_cases/`` are type-checked, never imported:

- ``case_sync.py``, ``case_flask.py``, ``case_async.py``: pairs of ``reveal_type`` lines,
  an expression on SQLAlchemy's registry (``theirs``), then the same on ours (``ours``).
  Both checkers must reveal the same type for each pair. Only the registry class's own
  name is normalised (``scoped_session[Session]`` is ``ScopedSession[Session]``). Each
  top-level function of a case file (``results``, ``members``, ``attributes``) is a test
  of its own, which fails on its first pair that differs.
- ``case_errors.py``: mistakes that must be errors on ours exactly where, and with the
  error codes, they are on SQLAlchemy's.
- ``case_clean.py``: everyday use, which must have no error.
- ``case_custom.py``: a factory that is not SQLAlchemy's types ``Session()`` as its class.

A line about a member that only some SQLAlchemy releases have ends with a comment that
says which, ``# SQLAlchemy >= 2.1`` or ``# SQLAlchemy < 2.1``; with another release
installed the checkers see ``pass`` there instead. ``tox -e typing`` runs these tests on
SQLAlchemy 2.1, ``tox -e typing20`` on 2.0.

Each checker runs once per test run over all the case files, in a temporary folder, with
the running interpreter (its site-packages, the installed ``scoped_session``); pytest-xdist
workers share that run.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import typing as t
from pathlib import Path

import pytest

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: each xdist worker runs the checkers
    fcntl = None  # type: ignore[assignment]

pytestmark = pytest.mark.slow  # each checker takes seconds

sqlalchemy = pytest.importorskip(
    "sqlalchemy",
    reason="the typing cases compare with SQLAlchemy's registries; SQLAlchemy is not installed",
)

CASES = Path(__file__).resolve().parent / "typing_cases"
SIDE_BY_SIDE = ["case_sync.py", "case_flask.py", "case_async.py"]
CHECKERS = ["mypy", "pyright"]
#: Case files that need a package besides SQLAlchemy and this one.
NEEDS = {"case_flask.py": "flask"}

#: How each checker spells the registry classes; all become ``<registry>``. mypy
#: qualifies a name with its module (which may be a private one), pyright shows the bare
#: name.
REGISTRY_NAMES = {
    "mypy": re.compile(
        r"\b(?:sqlalchemy(?:\.\w+)*\.(?:async_)?scoped_session"
        r"|scoped_session(?:\.\w+)*\.(?:Flask|Async)?ScopedSession)(?![\w.])"
    ),
    "pyright": re.compile(
        r"(?<![\w.])(?:(?:async_)?scoped_session|(?:Flask|Async)?ScopedSession)(?![\w.])"
    ),
}

#: A ``# type: ignore[codes]`` comment: on a line of case_errors.py, the mark of a mistake.
IGNORE = re.compile(r"\s*#\s*type:\s*ignore\[([^\]]*)\]")
#: The names that tell the two sides of a pair apart: theirs, ours, Theirs (the class),
#: Ours, theirs_query, ours_tx ...
THEIRS = re.compile(r"\b[Tt]heirs")
OURS = re.compile(r"\b[Oo]urs")
Function: t.TypeAlias = ast.FunctionDef | ast.AsyncFunctionDef
MYPY_LINE = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+): (?P<severity>error|warning|note): (?P<message>.*?)"
    r"(?:  \[(?P<code>[a-z0-9-]+)\])?$"
)


# -- reading the case files --------------------------------------------------------

#: The mark of a line for some SQLAlchemy releases only (see the module docstring).
ONLY = re.compile(r"  # SQLAlchemy (>=|<) (\d+)\.(\d+)$")
#: The installed SQLAlchemy's (major, minor).
INSTALLED = tuple(int(part) for part in sqlalchemy.__version__.split(".")[:2])


@functools.cache
def case_source(case: str) -> str:
    """A case file as the checkers see it: a line marked for other SQLAlchemy releases
    is ``pass`` (at its indentation, so that every line keeps its number)."""
    lines = (CASES / case).read_text().splitlines()
    for number, line in enumerate(lines):
        found = ONLY.search(line)
        if found is None:
            continue
        at_least = (int(found[2]), int(found[3])) <= INSTALLED
        if at_least != (found[1] == ">="):
            lines[number] = line[: len(line) - len(line.lstrip())] + "pass"
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Reveal:
    """A ``reveal_type(expression)`` call of a case file."""

    line: int
    expression: str
    comment: str  # the line's comment, if any
    section: str  # the top-level function it is in


@functools.cache
def reveals(case: str) -> tuple[Reveal, ...]:
    """The ``reveal_type(...)`` calls of a case file, in order."""
    source = case_source(case)
    lines = source.splitlines()
    found: list[Reveal] = []
    for top in ast.parse(source).body:
        for node in ast.walk(top):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "reveal_type"
            ):
                continue
            assert node.lineno == node.end_lineno, (
                f"{case}:{node.lineno}: keep each reveal_type() on one line"
            )
            expression = ast.get_source_segment(source, node.args[0])
            assert expression is not None
            comment = lines[node.lineno - 1].partition("#")[2].strip()
            section = top.name if isinstance(top, Function) else ""
            found.append(Reveal(node.lineno, expression, comment, section))
    return tuple(sorted(found, key=lambda reveal: reveal.line))


def pairs(case: str, section: str) -> list[tuple[Reveal, Reveal]]:
    """The (theirs, ours) pairs of one section of a side-by-side case file."""
    found = [reveal for reveal in reveals(case) if reveal.section == section]
    assert found, f"{case} has no reveal_type() in {section}()"
    assert len(found) % 2 == 0, f"{case}: {section}() has an odd number of reveal_type()"
    result = list(zip(found[::2], found[1::2], strict=True))
    for theirs, ours in result:
        where = f"{case}:{theirs.line}: `{theirs.expression}`, then `{ours.expression}`"
        assert THEIRS.search(theirs.expression), f"{where}: the first is not on theirs"
        assert not OURS.search(theirs.expression), f"{where}: the first is on ours"
        assert OURS.search(ours.expression), f"{where}: the second is not on ours"
        assert not THEIRS.search(ours.expression), f"{where}: the second is on theirs"
        same = THEIRS.sub("X", theirs.expression) == OURS.sub("X", ours.expression)
        assert same, f"{where}: not the same expression on the two registries"
    return result


def sections(case: str) -> list[str]:
    return list(dict.fromkeys(reveal.section for reveal in reveals(case)))


#: How a checker prints a type, where that is all that differs: nothing a user
#: calls or assigns is typed differently.
DISPLAY_ONLY = [
    # mypy prints a classmethod reached through the unparameterised generic class
    # with the class's type variable: _S <: Session there, S <: Closeable here.
    (re.compile(r"^def \[_?A?S <: [\w.]+\] "), "def [<the registry's session type>] "),
]

#: Members typed differently on purpose, each listed in the README's migration
#: table: any factory is accepted, not only a sessionmaker, and the registry view
#: is the library's own class with SQLAlchemy's methods.
DOCUMENTED = frozenset({"session_factory", "registry"})


def normalise(checker: str, revealed: str) -> str:
    revealed = REGISTRY_NAMES[checker].sub("<registry>", revealed)
    for pattern, replacement in DISPLAY_ONLY:
        revealed = pattern.sub(replacement, revealed)
    return revealed


def documented(expression: str) -> bool:
    """Whether ``expression`` reads a member of DOCUMENTED, e.g. ``ours.registry``."""
    return expression.rpartition(".")[2] in DOCUMENTED


def first_difference(a: str, b: str) -> str:
    """Where two long types part, with some context."""
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    start = max(at - 60, 0)
    return (
        f"  first difference at character {at}:\n"
        f"  theirs: ...{a[start : at + 80]}...\n"
        f"  ours:   ...{b[start : at + 80]}..."
    )


# -- running the checkers ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """One line of a checker's report on a case file."""

    line: int  # 1-based
    severity: str  # error, warning, note (mypy), information (pyright)
    message: str
    code: str  # mypy's error code or pyright's rule; "" for none

    def __str__(self) -> str:
        return f"line {self.line}: {self.severity}: {self.message} [{self.code}]"


@dataclasses.dataclass
class Report:
    """A checker's diagnostics, per case file name."""

    checker: str
    by_file: dict[str, list[Diagnostic]]

    @functools.cached_property
    def by_line(self) -> dict[tuple[str, int], list[Diagnostic]]:
        index: dict[tuple[str, int], list[Diagnostic]] = {}
        for case, diagnostics in self.by_file.items():
            for d in diagnostics:
                index.setdefault((case, d.line), []).append(d)
        return index

    def problems(self, case: str) -> list[Diagnostic]:
        return [d for d in self.by_file.get(case, []) if d.severity in ("error", "warning")]

    def revealed(self, case: str, line: int, expression: str) -> str:
        """The type revealed by the ``reveal_type(expression)`` on ``line``."""
        on_line = self.by_line.get((case, line), [])
        found: list[str] = []
        for d in on_line:
            if self.checker == "mypy" and d.message.startswith('Revealed type is "'):
                found.append(d.message.removeprefix('Revealed type is "').removesuffix('"'))
            # pyright prints the expression in its own spelling ("(1, )" for "(1,)").
            if self.checker == "pyright" and d.message.startswith('Type of "'):
                found.append(d.message.partition('" is "')[2].removesuffix('"'))
        if len(found) != 1:
            listed = "\n".join(f"  {d}" for d in on_line) or "  (nothing)"
            pytest.fail(
                f"{self.checker} revealed {len(found)} types for `{expression}` on"
                f" {case}:{line}, not one. Its report on that line:\n{listed}"
            )
        return found[0]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        by_file = {
            name: [Diagnostic(**d) for d in diagnostics]
            for name, diagnostics in data["by_file"].items()
        }
        return cls(data["checker"], by_file)


@functools.cache
def unavailable(checker: str) -> str | None:
    """Why ``checker`` cannot run here, or None."""
    if importlib.util.find_spec(checker) is None:
        return f"{checker} is not installed"
    try:
        version = subprocess.run(
            [sys.executable, "-m", checker, "--version"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return f"'python -m {checker} --version' did not finish in 300 s"
    if version.returncode != 0:
        return f"{checker} does not run: {(version.stderr or version.stdout).strip()[-500:]}"
    return None


def package_paths() -> list[str]:
    """Where the installed ``scoped_session`` is, if the checkers cannot find it in
    site-packages: they do not see an editable install made by an import hook."""
    spec = importlib.util.find_spec("scoped_session")
    assert spec is not None
    assert spec.origin is not None
    root = Path(spec.origin).resolve().parent.parent
    paths = sysconfig.get_paths()
    site_dirs = {Path(p).resolve() for p in (*site.getsitepackages(), paths["purelib"])}
    return [] if root in site_dirs else [str(root)]


def copy_cases(folder: Path) -> list[str]:
    """Copy the case files whose imports are installed into ``folder``:
    ``case_errors.py`` without its ``# type: ignore`` comments (only comments go, so
    every line keeps its number)."""
    folder.mkdir()
    names: list[str] = []
    for path in sorted(CASES.glob("case_*.py")):
        module = NEEDS.get(path.name)
        if module is not None and importlib.util.find_spec(module) is None:
            continue
        text = case_source(path.name)
        if path.name == "case_errors.py":
            text = IGNORE.sub("", text)
        (folder / path.name).write_text(text)
        names.append(path.name)
    return names


def run_mypy(folder: Path) -> Report:
    files = copy_cases(folder)
    config = folder / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {','.join(package_paths())}\n")
    command = [
        *(sys.executable, "-m", "mypy", "--config-file", str(config), "--strict"),
        *("--no-incremental", "--show-error-codes", "--no-pretty", "--no-error-summary"),
        *("--python-executable", sys.executable, *files),
    ]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    if result.returncode not in (0, 1):
        pytest.fail(f"mypy failed (exit code {result.returncode}):\n{result.stderr}")
    by_file: dict[str, list[Diagnostic]] = {}
    for line in result.stdout.splitlines():
        match = MYPY_LINE.match(line)
        assert match is not None, f"Unexpected line in mypy's output: {line!r}"
        diagnostic = Diagnostic(
            int(match["line"]), match["severity"], match["message"], match["code"] or ""
        )
        by_file.setdefault(Path(match["file"]).name, []).append(diagnostic)
    return Report("mypy", by_file)


def run_pyright(folder: Path) -> Report:
    files = copy_cases(folder)
    config = {
        "include": files,
        "typeCheckingMode": "strict",
        "pythonVersion": f"{sys.version_info.major}.{sys.version_info.minor}",
        "extraPaths": package_paths(),
    }
    (folder / "pyrightconfig.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    if result.returncode not in (0, 1):
        pytest.fail(f"pyright failed (exit code {result.returncode}):\n{result.stderr}")
    by_file: dict[str, list[Diagnostic]] = {}
    for item in json.loads(result.stdout)["generalDiagnostics"]:
        diagnostic = Diagnostic(
            item["range"]["start"]["line"] + 1,
            item["severity"],
            item["message"],
            item.get("rule", ""),
        )
        by_file.setdefault(Path(item["file"]).name, []).append(diagnostic)
    return Report("pyright", by_file)


RUNNERS: dict[str, t.Callable[[Path], Report]] = {"mypy": run_mypy, "pyright": run_pyright}


@contextlib.contextmanager
def locked(path: Path) -> t.Generator[None, None, None]:
    with path.open("w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Report]]:
    """Where the checkers run and what they reported, filled on first use."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER") and fcntl is not None:
        root = root.parent  # the whole run's: the workers share one run of each checker
    return root, {}


@pytest.fixture(params=CHECKERS)
def report(request: pytest.FixtureRequest, reports: tuple[Path, dict[str, Report]]) -> Report:
    """A checker's report on all the case files."""
    checker: str = request.param
    reason = unavailable(checker)
    if reason is not None:
        pytest.skip(reason)
    root, made = reports
    if checker not in made:
        saved = root / f"typing_{checker}.json"
        with locked(root / f"typing_{checker}.lock"):
            if not saved.exists():
                saved.write_text(RUNNERS[checker](root / f"typing_{checker}").to_json())
        made[checker] = Report.from_json(saved.read_text())
    return made[checker]


def need(case: str) -> None:
    module = NEEDS.get(case)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{case} needs {module}, which is not installed")


def assert_no_problems(report: Report, case: str) -> None:
    problems = report.problems(case)
    listed = "\n".join(f"  {case}:{p}" for p in problems)
    assert not problems, f"{report.checker} reports problems in {case}:\n{listed}"


# -- the tests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "section"),
    [(case, section) for case in SIDE_BY_SIDE for section in sections(case)],
    ids=lambda value: value.removesuffix(".py"),
)
def test_same_types_as_sqlalchemy(report: Report, case: str, section: str) -> None:
    """Each expression is typed on ours exactly as on SQLAlchemy's registry."""
    need(case)
    for theirs, ours in pairs(case, section):
        if documented(ours.expression):
            continue
        theirs_type = report.revealed(case, theirs.line, theirs.expression)
        ours_type = report.revealed(case, ours.line, ours.expression)
        a, b = normalise(report.checker, theirs_type), normalise(report.checker, ours_type)
        if a != b:
            pytest.fail(
                f"{report.checker}: {case}:{ours.line}: `{ours.expression}` is typed"
                f" differently from `{theirs.expression}` (line {theirs.line}):\n"
                f"  theirs: {theirs_type}\n"
                f"  ours:   {ours_type}\n" + first_difference(a, b)
            )
    lines = {reveal.line for pair in pairs(case, section) for reveal in pair}
    problems = [p for p in report.problems(case) if p.line in lines]
    assert not problems, "\n".join(f"{report.checker}: {case}:{p}" for p in problems)


@pytest.mark.parametrize("case", SIDE_BY_SIDE, ids=lambda value: value.removesuffix(".py"))
def test_side_by_side_cases_have_no_errors(report: Report, case: str) -> None:
    """The side-by-side cases are everyday use: no error on either registry."""
    need(case)
    assert_no_problems(report, case)


def twins(source: str) -> list[tuple[Function, Function]]:
    """The (theirs_*, ours_*) function pairs of case_errors.py."""
    functions = {node.name: node for node in ast.parse(source).body if isinstance(node, Function)}
    found = [
        (theirs, functions["ours_" + name.removeprefix("theirs_")])
        for name, theirs in functions.items()
        if name.startswith("theirs_")
    ]
    assert found, "case_errors.py has no theirs_*/ours_* functions"
    return found


def test_same_errors_as_sqlalchemy(report: Report) -> None:
    """Each mistake is an error on ours, with the same codes, where it is one on
    SQLAlchemy's registry; nothing else is an error."""
    case = "case_errors.py"
    source = case_source(case)
    lines = source.splitlines()
    problems = report.problems(case)
    codes: dict[int, set[str]] = {}
    for problem in problems:
        codes.setdefault(problem.line, set()).add(problem.code)
    covered: set[int] = set()
    for theirs, ours in twins(source):
        first_theirs, first_ours = theirs.body[0].lineno, ours.body[0].lineno
        body = lines[first_theirs - 1 : theirs.end_lineno]
        assert body == lines[first_ours - 1 : ours.end_lineno], (
            f"{theirs.name}() and {ours.name}() must have the same body"
        )
        for offset, text in enumerate(body):
            theirs_line, ours_line = first_theirs + offset, first_ours + offset
            covered.update((theirs_line, ours_line))
            theirs_codes = codes.get(theirs_line, set())
            ours_codes = codes.get(ours_line, set())
            marked = IGNORE.search(text) is not None
            assert theirs_codes or not marked, (
                f"{report.checker}: {case}:{theirs_line} `{text.strip()}` is no error on"
                " SQLAlchemy's registry: the case no longer shows a mistake"
            )
            assert marked or not theirs_codes, (
                f"{report.checker}: {case}:{theirs_line} `{text.strip()}` is an error on"
                f" SQLAlchemy's registry ({sorted(theirs_codes)}) but not marked as one"
            )
            if theirs_codes != ours_codes:
                details = "\n".join(
                    f"  {p}" for p in problems if p.line in (theirs_line, ours_line)
                )
                pytest.fail(
                    f"{report.checker}: {case}:{ours_line} `{text.strip()}`: not the errors"
                    f" of SQLAlchemy's registry (line {theirs_line}):\n"
                    f"  theirs: {sorted(theirs_codes) or 'no error'}\n"
                    f"  ours:   {sorted(ours_codes) or 'no error'}\n{details}"
                )
    stray = [p for p in problems if p.line not in covered]
    assert not stray, "\n".join(f"{report.checker}: {case}:{p}" for p in stray)


def test_everyday_use_type_checks(report: Report) -> None:
    """Everyday use of the registries has no error."""
    assert_no_problems(report, "case_clean.py")


def test_own_session_class(report: Report) -> None:
    """With a factory that is not SQLAlchemy's, ``Session()`` is the factory's class."""
    case = "case_custom.py"
    found = reveals(case)
    assert len(found) >= 8, found
    for reveal in found:
        revealed = report.revealed(case, reveal.line, reveal.expression)
        if report.checker == "mypy":
            revealed = revealed.removeprefix("case_custom.")
        assert revealed == reveal.comment, (
            f"{report.checker}: {case}:{reveal.line}: `{reveal.expression}` is {revealed},"
            f" not {reveal.comment}"
        )
    assert_no_problems(report, case)


@pytest.mark.parametrize(
    ("case", "registry"),
    [
        ("case_sync.py", "sqlalchemy.orm.scoped_session"),
        ("case_flask.py", "sqlalchemy.orm.scoped_session"),
        ("case_async.py", "sqlalchemy.ext.asyncio.async_scoped_session"),
    ],
)
def test_cases_cover_every_member(case: str, registry: str) -> None:
    """The side-by-side cases use every public member of the installed SQLAlchemy's
    registry: a member SQLAlchemy adds is compared too."""
    module, _, name = registry.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    used = set(re.findall(r"\b[Tt]heirs\.(\w+)", case_source(case)))
    missing = sorted(n for n in dir(cls) if not n.startswith("_") and n not in used)
    assert not missing, f"{case} does not use these members of {registry}: {missing}"
