"""Soak: the mixed load of load/test_load.py, for as long as you like.

gunicorn (gthread) and werkzeug's threaded server serve load/load_app.py over
127.0.0.1 on one PostgreSQL schema, under many concurrent clients: reads, writes,
streams, clients that leave mid-stream, views that raise, commits that fail on a
constraint, injected ``commit()``/``close()`` failures, killed backends, slow
queries and background jobs. Every round ends with the servers quiet and a full
check (see load/load_run.py): nothing checked out, no backend idle in a
transaction, exactly the committed rows, no session used by two owners. The
figures are printed after each round; resident memory is compared with the end
of the first round (the warm-up).

    python benchmarks/soak.py --minutes 60 [--clients 48] [--round-seconds 60]

The database comes from ``--url`` or ``SCOPED_SESSION_TEST_POSTGRES_URL``, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``. Exits with status 1 when
any check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "load"))

import load_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run")
    parser.add_argument("--clients", type=int, default=48, help="concurrent clients")
    parser.add_argument("--round-seconds", type=float, default=60.0, help="load between two checks")
    parser.add_argument("--url", default=os.environ.get("SCOPED_SESSION_TEST_POSTGRES_URL"))
    parser.add_argument(
        "--keep-going", action="store_true", help="run on after a round found problems"
    )
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("pass --url or set SCOPED_SESSION_TEST_POSTGRES_URL")

    problems: list[str] = []
    with tempfile.TemporaryDirectory() as cwd, load_run.LoadRun(args.url, Path(cwd)) as run:
        deadline = time.monotonic() + args.minutes * 60
        while (left := deadline - time.monotonic()) > 0:
            found = run.round(
                clients=args.clients,
                seconds=min(args.round_seconds, left),
                max_requests=sys.maxsize,
            )
            print(f"-- round {run.round_number}", flush=True)
            print(run.figures(args.clients), flush=True)
            for problem in found:
                print(f"PROBLEM {problem}", flush=True)
            problems.extend(found)
            if found and not args.keep_going:
                break
        problems.extend(run.finish())
    print("-- done:", "FAILED" if problems else "all checks passed", flush=True)
    for problem in problems:
        print(f"PROBLEM {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
