"""Every python block of the README runs as written, as a new user would run it.

The README and the docs (``tests/test_docs_snippets.py``) share these conventions. A
marker is an HTML comment on the line right before a fence: GitHub and Sphinx show
nothing of it, the source shows it plainly. It holds ``key: value`` pairs separated
by ``;``.

- A ```` ```python ```` block with no marker is a complete program: it runs in a
  fresh ``python`` subprocess, in an empty temporary folder (SQLite files land there).
- ``<!-- name: quickstart -->`` names a block; ``<!-- continues: quickstart -->``
  marks a later block (on the same page) as the continuation of the named one. The
  named block and its continuations, in page order, are joined into one program and
  run as one.
- ``<!-- file: conftest.py -->`` (combined with ``name`` or ``continues``) makes the
  block a file of its program's folder instead of code to run: a module the code
  imports, or a ``conftest.py`` and ``test_*.py`` that pytest runs there (when the
  program has test files, ``python -m pytest`` runs in the folder after the code and
  must pass).
- ``<!-- output -->`` before a ```` ```text ```` block: what the program of the python
  block above it prints; the program's whole output must be its output blocks, joined.
- ``<!-- not-run: reason -->``: a block that needs a server or a running app, shown
  but not run. The docs have a few, each with its reason; the README has none.

A program whose imports are not installed (Flask in the no-flask env, aiosqlite ...)
is skipped, unless ``SCOPED_SESSION_SNIPPETS_STRICT`` is set, as ``tox -e docs`` does:
there every block must run. A block in any other fence language than the ones
listed in ``FENCES`` fails the test: nothing slips through uncovered.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import typing as t
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Fence languages that are shown, not run (commands, config, output).
SHOWN = frozenset(
    {"sh", "bash", "shell", "console", "text", "toml", "ini", "cfg", "json", "yaml", "diff"}
)
#: Every fence language a page may use: python runs; ``{...}`` are Sphinx directives.
FENCES = SHOWN | {"python"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_MARKER = re.compile(r"^\s*<!--(?P<body>.*?)-->\s*$")
_KEYS = frozenset({"name", "continues", "file", "output", "not-run"})


@dataclasses.dataclass
class Block:
    """One fenced block of a page, with its marker."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclasses.dataclass
class Program:
    """A named block and its continuations (or one unnamed block): what runs at once."""

    blocks: list[Block]
    outputs: list[str] = dataclasses.field(default_factory=list)

    @property
    def where(self) -> str:
        return self.blocks[0].where

    @property
    def files(self) -> dict[str, str]:
        return {b.marker["file"]: b.code for b in self.blocks if "file" in b.marker}

    @property
    def script(self) -> str:
        return "".join(b.code for b in self.blocks if "file" not in b.marker)


def parse_marker(text: str, where: str) -> dict[str, str]:
    marker = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition(":")
        key = key.strip()
        assert sep or key == "output", f"{where}: marker part {part!r} is not 'key: value'"
        assert key in _KEYS, f"{where}: unknown marker key {key!r} (one of {sorted(_KEYS)})"
        marker[key] = value.strip()
    return marker


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a markdown page, in order."""
    lines = path.read_text().splitlines(keepends=True)
    blocks = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i].rstrip("\n"))
        if opening is None:
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        where = f"{path.name}:{i + 1}"
        marker: dict[str, str] = {}
        before = i - 1
        if before >= 0 and (comment := _MARKER.match(lines[before])):
            marker = parse_marker(comment["body"], where)
        end = i + 1
        while end < len(lines) and not re.match(
            rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]
        ):
            end += 1
        assert end < len(lines), f"{where}: the fence is never closed"
        code = "".join(line[len(opening["indent"]) :] for line in lines[i + 1 : end])
        blocks.append(Block(path, i + 1, info.split()[0] if info else "", code, marker))
        i = end + 1
    return blocks


def programs_of(blocks: list[Block]) -> tuple[list[Program], list[Block]]:
    """The programs the python blocks make, and the blocks marked not-run.

    Fails on a block that no program covers: an unknown fence language, a
    continuation of an unknown name, an output block after no python block.
    """
    programs: list[Program] = []
    named: dict[str, Program] = {}
    not_run: list[Block] = []
    last: Program | None = None
    for block in blocks:
        lang, marker = block.lang, block.marker
        assert lang in FENCES or lang.startswith("{"), (
            f"{block.where}: a ```{lang} block: mark it as one of {sorted(FENCES)}"
            " (python runs, the others are shown)"
        )
        if "output" in marker:
            assert lang == "text", f"{block.where}: an output block is a ```text block"
            assert last is not None, f"{block.where}: an output block after no python block"
            last.outputs.append(block.code)
            continue
        if lang != "python":
            assert not marker.keys() - {"not-run"}, f"{block.where}: a marker on a {lang} block"
            continue
        if "not-run" in marker:
            assert marker["not-run"], f"{block.where}: say why the block is not run"
            assert len(marker) == 1, f"{block.where}: a not-run block is not part of a program"
            not_run.append(block)
            last = None
            continue
        if "continues" in marker:
            name = marker["continues"]
            assert name in named, f"{block.where}: continues {name!r}, named by no block above"
            assert "name" not in marker, f"{block.where}: continue the first block's name"
            last = named[name]
            last.blocks.append(block)
        else:
            last = Program([block])
            programs.append(last)
            if "name" in marker:
                assert marker["name"] not in named, f"{block.where}: {marker['name']!r} again"
                named[marker["name"]] = last
    for program in programs:
        assert program.script.strip() or any(
            Path(name).name.startswith("test_") for name in program.files
        ), f"{program.where}: a program of files only, with nothing to run and no tests"
    return programs, not_run


def imported_modules(program: Program) -> set[str]:
    """Top-level names the program imports that are neither stdlib nor its own files."""
    own = {Path(name).stem for name in program.files}
    names: set[str] = set()
    for code in [program.script, *program.files.values()]:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        if "+aiosqlite" in code:
            names.update({"aiosqlite", "greenlet"})
        if "sqlalchemy.ext.asyncio" in code:
            names.add("greenlet")
    return {n for n in names - own if n not in sys.stdlib_module_names}


def missing_modules(program: Program) -> list[str]:
    return sorted(n for n in imported_modules(program) if importlib.util.find_spec(n) is None)


def skip_unless_installed(program: Program) -> None:
    if missing := missing_modules(program):
        message = f"{program.where} needs {', '.join(missing)}, not installed"
        if os.environ.get("SCOPED_SESSION_SNIPPETS_STRICT"):
            pytest.fail(message + " (SCOPED_SESSION_SNIPPETS_STRICT is set)")
        pytest.skip(message)


def run_program(program: Program, folder: Path) -> None:
    """Run a program as a user would, in ``folder``, and check what it printed."""
    skip_unless_installed(program)
    for name, code in program.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env["PYTHONPATH"] = str(folder)  # the program's own modules, as if run from its folder
    out = ""
    if program.script.strip():
        script = folder / "snippet.py"
        script.write_text(program.script)
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, f"{program.where} failed:\n{result.stderr}"
        assert "Warning" not in result.stderr, f"{program.where} warned:\n{result.stderr}"
        out = result.stdout
    if program.outputs:
        assert out == "".join(program.outputs), f"{program.where} printed:\n{out}"
    if any(Path(name).name.startswith("test_") for name in program.files):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        if "pytest_asyncio" not in "".join(program.files.values()):
            # A program that does not use pytest-asyncio runs as where it is not
            # installed: loaded, it warns at start-up unless its ini key is set.
            command += ["-p", "no:asyncio"]
        result = subprocess.run(
            command,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert result.returncode == 0, f"{program.where}: pytest failed:\n{result.stdout}"


def run_in_one_folder(programs: list[Program], folder: Path) -> None:
    """Run the programs one after another in one folder, as a reader who copies them
    into one would: in page order, then again in reverse order. So every program runs
    twice, after every other, and must print the same each time.

    A program with files of its own is a small project: it gets a subfolder, the same
    both times. One whose imports are missing is left out (its own test says why).
    """
    programs = [p for p in programs if not missing_modules(p)]
    if not programs:
        pytest.skip("no program here has its imports installed")
    for run, order in enumerate([programs, programs[::-1]], 1):
        for program in order:
            where = folder
            if program.files:
                where = folder / re.sub(r"\W", "_", program.where)
                where.mkdir(exist_ok=True)
            try:
                run_program(program, where)
            except AssertionError as error:
                error.add_note(f"on run {run} of {len(order)} programs in one folder")
                raise


def params(programs: list[Program]) -> list[t.Any]:
    return [pytest.param(p, id=p.where) for p in programs]


# -- the README ----------------------------------------------------------------------

README_PROGRAMS, README_NOT_RUN = programs_of(blocks_of(README))
README_TEXT = README.read_text()


@pytest.mark.parametrize("program", params(README_PROGRAMS))
def test_readme_block_runs(program: Program, tmp_path: Path) -> None:
    run_program(program, tmp_path)


def test_readme_blocks_run_twice_in_one_folder(tmp_path: Path) -> None:
    # Each block starts from a database of its own: none counts another's rows,
    # nor its own from a first run.
    run_in_one_folder(README_PROGRAMS, tmp_path)


def test_every_readme_block_runs() -> None:
    python = [b for b in blocks_of(README) if b.lang == "python"]
    covered = [b for p in README_PROGRAMS for b in p.blocks]
    assert covered
    assert sorted(b.line for b in covered) == [b.line for b in python]
    assert README_NOT_RUN == [], "the README's blocks all run"
    # The quickstart and the asyncio example check what they print.
    assert all(p.outputs for p in README_PROGRAMS if "print(" in p.script)


def test_readme_is_short() -> None:
    assert len(README_TEXT.encode()) <= 12 * 1024


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_starts_with_install_contents_quickstart() -> None:
    headings = re.findall(r"^## (.+)$", README_TEXT, re.M)
    assert headings[:3] == ["Install", "Contents", "Quickstart"]
    # The table of contents lists every other section, in order, by its anchor.
    contents = README_TEXT.split("## Contents", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    assert links == [github_anchor(h) for h in headings[2:]]


def test_readme_install_names_the_extras() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    install = README_TEXT.split("## Install", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"scoped_session\[(\w+)\]", install))
    assert 'pip install "scoped_session[sqlalchemy]"' in install
    assert named == extras


def tox_envs() -> set[str]:
    tox = (ROOT / "tox.ini").read_text()
    return set(re.findall(r"^\[testenv:([\w-]+)\]", tox, re.M)) | {"py311", "py312", "py313"}


def test_readme_commands_name_real_tox_envs() -> None:
    commands = [b.code for b in blocks_of(README) if b.lang == "sh"]
    assert "python -m pip install tox && tox\n" in commands
    assert "python -m pip install tox && tox -e demo\n" in commands
    envs = re.findall(r"tox -e ([\w-]+)", "".join(commands))
    assert {"demo", "py312", "py311"} <= set(envs) <= tox_envs()
    assert "tox -e py311 -- -n 2" in "".join(commands)


def test_readme_links_exist() -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README_TEXT):
        assert (ROOT / target).exists(), f"the README links to {target}, which is missing"


# -- the demo ------------------------------------------------------------------------


def demo_table(stdout: str) -> dict[str, tuple[str, str]]:
    """The demo's table: each row's label mapped to (FlaskScopedSession, usual)."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


@pytest.mark.slow
def test_demo_runs(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy", reason="the demo uses SQLAlchemy (extra 'sqlalchemy')")
    pytest.importorskip("flask", reason="the demo runs a Flask app (extra 'flask')")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--requests", "100", "--clients", "8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Nothing the servers log reaches the terminal; progress goes to stderr,
    # a line per quarter when it is not a terminal.
    assert "Traceback" not in result.stdout + result.stderr
    assert "127.0.0.1 - -" not in result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 8, result.stderr

    table = demo_table(result.stdout)
    ours = {label: cells[0] for label, cells in table.items()}
    # The mix is fixed: of every 10 requests, 2 add a note and 1 is a feed
    # that its client hangs up on.
    assert ours["requests answered as expected"] == "100 of 100"
    assert ours["sessions opened"] == ours["sessions closed"] == "100"
    assert ours["connections left checked out"] == "0"
    assert ours["rows written / 201 responses"] == "20 / 20"
    assert ours["streams cut short by a hang-up"] == "10 of 10"
    # The usual wiring's numbers are measured and printed beside ours.
    usual = {label: cells[1] for label, cells in table.items()}
    assert re.fullmatch(r"\d+ of 100", usual["requests answered as expected"])
    assert re.fullmatch(r"\d+", usual["connections left checked out"])
    # A reading of the table in words comes after it.
    assert result.stdout.rstrip().endswith("it is not a benchmark.")
