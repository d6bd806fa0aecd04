"""Run SQLAlchemy's own scoped-session tests with ours swapped in.

::

    python tools/run_sqlalchemy_scoping_tests.py [--workdir DIR] [--baseline] [PYTEST_ARGS...]
    tox -e satests-sa20,satests-sa21      # the same per SQLAlchemy version

It downloads the sdist of the installed SQLAlchemy (from the package index) and extracts the
test files listed in ``sqlalchemy_swap_plugin.SUITE``, what they import from
SQLAlchemy's ``test`` package, and SQLAlchemy's pytest set-up (``test/conftest.py``,
the plugin it bootstraps from ``lib/``, the ``[tool.pytest.ini_options]`` and
``[sqla_testing]`` config). It runs them with pytest on SQLite, one run per database
URL of the suite, with ``sqlalchemy_swap_plugin`` putting our ``ScopedSession`` and
``AsyncScopedSession`` where the tests import SQLAlchemy's classes from; the tests'
text is not changed. It prints the outcomes per file and exits 1 unless every test
passed or was skipped by SQLAlchemy's own requirements. ``--baseline`` runs the same
tests on SQLAlchemy's own classes, to tell our failures from the set-up's.
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

from sqlalchemy_swap_plugin import SUITE, selection_for

TOOLS = pathlib.Path(__file__).resolve().parent
#: SQLAlchemy's pytest set-up. Only the plugin is taken from lib/: the conftest puts
#: lib/ first on sys.path, but with no lib/sqlalchemy/__init__.py the installed
#: SQLAlchemy (a regular package) is still the one imported.
SETUP_FILES = (
    "setup.cfg",
    "pyproject.toml",
    "test/conftest.py",
    "test/requirements.py",
    "lib/sqlalchemy/testing/plugin/bootstrap.py",
    "lib/sqlalchemy/testing/plugin/plugin_base.py",
    "lib/sqlalchemy/testing/plugin/pytestplugin.py",
)
Outcomes = dict[str, dict[str, str]]


#: Where the sdist is found: a package index's JSON simple API (PEP 691).
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def download(version: str, workdir: pathlib.Path) -> pathlib.Path:
    """The sdist of SQLAlchemy ``version`` in ``workdir``, downloaded unless it is
    there: the file the index lists, checked against its sha256. Not ``pip
    download``, which would also set up a build environment (Cython) to read the
    sdist's metadata, minutes on a fresh machine."""
    name = f"sqlalchemy-{version}.tar.gz"  # SQLAlchemy-2.0.22.tar.gz for older ones
    for path in workdir.glob("*.tar.gz"):
        if path.name.lower() == name:
            return path
    request = urllib.request.Request(
        f"{INDEX}/sqlalchemy/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    found = next((f for f in files if f["filename"].lower() == name), None)
    if found is None:
        sys.exit(f"{INDEX} lists no {name}")
    with urllib.request.urlopen(found["url"], timeout=300) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != found["hashes"]["sha256"]:
        sys.exit(f"{found['url']} does not match the sha256 {INDEX} gives for it")
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / str(found["filename"])
    target.write_bytes(data)
    return target


def imported_test_files(source: str, path: str) -> list[str]:
    """The files of SQLAlchemy's ``test`` package that the file at ``path`` imports
    (each candidate module as ``.py`` and as a package)."""
    package = path.split("/")[:-1]
    modules: list[list[str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = [*base, *node.module.split(".")] if node.module else base
            modules += [module, *([*module, alias.name] for alias in node.names)]
    return [
        "/".join(module) + suffix
        for module in modules
        if module[:1] == ["test"]
        for suffix in (".py", "/__init__.py")
    ]


def extract(sdist: pathlib.Path, into: pathlib.Path) -> list[str]:
    """Extract the suite's test files, what they import and SQLAlchemy's pytest
    set-up into ``into``; returns the suite's test files, relative to it."""
    with tarfile.open(sdist) as tar:
        # Member names start with the sdist's folder: sqlalchemy-2.1.9/test/...
        members = {m.name.partition("/")[2]: m for m in tar.getmembers() if m.isfile()}
        tests = sorted(name for name in members if selection_for(name))
        todo = [*tests, *SETUP_FILES]
        done: set[str] = set()
        while todo:
            name = todo.pop()
            if name in done or name not in members:
                continue
            done.add(name)
            source = tar.extractfile(members[name])
            assert source is not None
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            if name.startswith("test/") and name.endswith(".py"):
                todo += imported_test_files(target.read_text(encoding="utf-8"), name)
                parts = name.split("/")[:-1]  # every package on the way
                todo += ["/".join([*parts[:i], "__init__.py"]) for i in range(1, len(parts) + 1)]
    return tests


def run_pytest(root: pathlib.Path, url: str, files: list[str], extra: list[str]) -> Outcomes:
    """Run pytest over ``files`` on ``url`` with ours swapped in; each test's outcome."""
    results = root / "results.json"
    results.unlink(missing_ok=True)
    path = os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")]))
    command = [
        *(sys.executable, "-m", "pytest", "-p", "sqlalchemy_swap_plugin"),
        # SQLAlchemy's suite drives its own event loop and needs none of our plugin.
        *("-p", "no:asyncio", "-p", "no:scoped_session", "-p", "no:cacheprovider"),
        *("--rootdir", str(root), "--dburi", url, "--swap-results", str(results)),
        *files,
        *extra,
    ]
    print("\n$", " ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": path}
    code = subprocess.run(command, cwd=root, env=env, check=False).returncode
    # 1: tests failed, 5: none selected; others (an import error at collection, a
    # usage error) leave tests out without an outcome.
    if code not in (0, 1, 5) or not results.exists():
        sys.exit(f"pytest exited with {code}: see its output above")
    outcomes: Outcomes = json.loads(results.read_text())
    return outcomes


def summarize(version: str, classes: str, tests: list[str], outcomes: Outcomes) -> bool:
    """Print the outcomes per file; True when none failed and each whole file ran."""
    print(f"\nSQLAlchemy {version}'s scoped-session tests, on {classes}:")
    ok = True
    total: collections.Counter[str] = collections.Counter()
    for path in tests:
        mine = {k: v for k, v in sorted(outcomes.items()) if k.partition("::")[0] == path}
        if not mine:
            # Older versions lack some of the tests picked from other files.
            whole = not getattr(selection_for(path), "keep", ())
            ok = ok and not whole
            print(f"  {path}: {'no tests ran' if whole else f'none in {version}'}")
            continue
        count = collections.Counter(entry["outcome"] for entry in mine.values())
        total += count
        ok = ok and not count["failed"] and not count["error"]
        extra = "".join(f", {count[o]} {o}" for o in ("error", "skipped", "xfailed") if count[o])
        print(f"  {path}: {count['passed']} passed, {count['failed']} failed{extra}")
        for nodeid, entry in mine.items():
            if entry["outcome"] != "passed":
                test = nodeid.partition("::")[2]
                print(f"    {entry['outcome'].upper()} {test}: {entry['reason']}")
    print(f"  total: {total['passed']} passed, {total['failed'] + total['error']} failed")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run SQLAlchemy's scoped-session tests on ours.", allow_abbrev=False
    )
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the sdist here (default: none)")
    parser.add_argument(
        "--baseline", action="store_true", help="run them on SQLAlchemy's own classes"
    )
    # Every other argument is passed on to pytest.
    args, pytest_args = parser.parse_known_args(argv)
    version = importlib.metadata.version("sqlalchemy")
    with tempfile.TemporaryDirectory() as tmp:
        workdir: pathlib.Path = args.workdir or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        root = workdir / f"sqlalchemy-{version}-tests"
        shutil.rmtree(root, ignore_errors=True)
        tests = extract(download(version, workdir), root)
        outcomes: Outcomes = {}
        extra = ["--swap-baseline", *pytest_args] if args.baseline else pytest_args
        for url in dict.fromkeys(selection.url for selection in SUITE):
            files = [path for path in tests if getattr(selection_for(path), "url", None) == url]
            if files:
                outcomes.update(run_pytest(root, url, files, extra))
        classes = "SQLAlchemy's classes" if args.baseline else "scoped_session's classes"
        return 0 if summarize(version, classes, tests, outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
