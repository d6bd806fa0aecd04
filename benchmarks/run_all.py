"""Run every side-by-side benchmark, one process each, and sum up the bars.

    python benchmarks/run_all.py            # full runs (a few minutes)
    python benchmarks/run_all.py --quick    # short runs

Each script prints its own table of ratios against the anchor (SQLAlchemy's
scoped_session, werkzeug's LocalManager, Flask-SQLAlchemy, a hand-written
try/finally or raw ASGI middleware) and exits 1 when one of its bars is missed. Timings need a quiet
machine: run nothing else meanwhile. Exits 1 when any script missed a bar.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Script, and the modules it needs (skipped with a note when one is missing).
BENCHMARKS: list[tuple[str, tuple[str, ...]]] = [
    ("bench_core.py", ("sqlalchemy",)),
    ("bench_wsgi.py", ()),
    ("bench_asgi.py", ()),
    ("bench_worker.py", ()),
    ("bench_flask.py", ("flask", "flask_sqlalchemy", "sqlalchemy")),
    ("bench_async.py", ("sqlalchemy", "aiosqlite")),
    ("bench_celery.py", ("celery", "sqlalchemy")),
]


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
    results: list[tuple[str, str]] = []
    for script, needs in BENCHMARKS:
        path = HERE / script
        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        if not path.exists() or missing:
            results.append((script, f"skipped (missing: {', '.join(missing) or script})"))
            continue
        print(f"\n=== {script} ===", flush=True)
        started = time.perf_counter()
        command = [sys.executable, str(path), *(["--quick"] if args.quick else [])]
        code = subprocess.call(command)
        took = time.perf_counter() - started
        verdict = "all bars met" if code == 0 else "a bar MISSED" if code == 1 else f"exit {code}"
        results.append((script, f"{verdict} ({took:.0f} s)"))
    print("\n=== summary ===")
    for script, verdict in results:
        print(f"{script:18} {verdict}")
    return 0 if all(v.startswith(("all", "skipped")) for _, v in results) else 1


if __name__ == "__main__":
    sys.exit(main())
