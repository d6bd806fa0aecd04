"""Run every side-by-side benchmark, one process each, and sum up the bars.

    python benchmarks/run_all.py            # full runs (a few minutes)
    python benchmarks/run_all.py --quick    # short runs

Each script prints one table per part, whose every row compares ours with an anchor
(SQLAlchemy's scoped_session or async_scoped_session with the teardown a user writes,
Flask-SQLAlchemy, a hand-written try/finally): each one's time, above a floor where
the row has one, the ratio ours / anchor, its noise, its bar, PASS or FAIL; the
request paths also print Python calls and allocations per request (see _share.py).
A script exits 1 when a row FAILs. Timings are CPU time, in rotating rounds, but a
quiet machine still gives the steadiest numbers. Exits 1 when any row failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Script, and the modules it needs (skipped with a note when one is missing).
BENCHMARKS: list[tuple[str, tuple[str, ...]]] = [
    ("bench_core.py", ("sqlalchemy",)),
    ("bench_async.py", ("sqlalchemy", "aiosqlite")),
    ("bench_wsgi.py", ("sqlalchemy", "werkzeug")),
    ("bench_asgi.py", ("sqlalchemy",)),
    ("bench_flask.py", ("flask", "flask_sqlalchemy", "sqlalchemy")),
    ("bench_worker.py", ()),
    ("bench_celery.py", ("celery", "sqlalchemy")),
]


def run(script: str, quick: bool) -> tuple[int, int, int]:
    """Run one script, its output passed on; returns its exit code and how many of
    its rows passed and failed."""
    command = [sys.executable, str(HERE / script), *(["--quick"] if quick else [])]
    passed = failed = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            words = line.split()
            passed += words[-1:] == ["PASS"]
            failed += words[-1:] == ["FAIL"]
    return child.returncode, passed, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    args = parser.parse_args(argv)
    if sys.flags.dev_mode:
        # Development mode adds checks to every call (asyncio's debug mode among
        # them) and would measure those, not the registries.
        print(
            "Python's development mode is on (PYTHONDEVMODE is set, or -X dev):"
            " unset it to run the benchmarks.",
            file=sys.stderr,
        )
        return 2
    print(f"Python {platform.python_version()} ({sys.executable})", flush=True)
    results: list[tuple[str, str, bool]] = []
    for script, needs in BENCHMARKS:
        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        if missing:
            results.append((script, f"skipped (missing: {', '.join(missing)})", True))
            continue
        print(f"\n=== {script} ===", flush=True)
        started = time.perf_counter()
        code, passed, failed = run(script, args.quick)
        took = time.perf_counter() - started
        rows = f"{passed} PASS, {failed} FAIL"
        if code not in (0, 1):
            rows += f", exit {code}"
        results.append((script, f"{rows} ({took:.0f} s)", code == 0))
    print(f"\n=== summary (Python {platform.python_version()}) ===")
    for script, verdict, _ in results:
        print(f"{script:18} {verdict}")
    return 0 if all(ok for _, _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
