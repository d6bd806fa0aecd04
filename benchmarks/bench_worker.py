"""Per-job cost of ScopedThreadPoolExecutor(per="job") against a hand-written
try/finally ``Session.remove()`` in each job on a plain ThreadPoolExecutor.

Both run in this process, in rotating rounds, with the same trivial job that touches
its session (a do-nothing session class: the pool's own overhead is what is
measured). A round's time is the CPU time of the whole process (every thread) per
job. The workers are held while all jobs are submitted, then let go: the time is
submitting plus draining the queue, a backlog of jobs, with 1 and with 8 worker
threads. Bar: ours at most ``BAR`` of the hand-written version's time (that is, at
least 0.95x its jobs per second).

``--free-running`` adds the same with jobs submitted while the workers take them.
Their time is set by how often the GIL changes hands between the submitting thread
and the workers: a round with a few dozen voluntary context switches runs about
twice as fast as one with thousands, for either side, and which one a round gets is
luck; so they are not in the default run.

The process is pinned to one CPU (``--no-pin`` to leave it free): only one thread
runs Python at a time anyway, and with 8 workers spread over cores their fight for
the GIL makes single rounds vary by 2x or more for either side.

    python benchmarks/bench_worker.py [--quick] [--no-pin] [--free-running]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor, wait

from _share import Case, Result, Row, header, print_rows, sample

from scoped_session import ScopedSession
from scoped_session.worker import ScopedThreadPoolExecutor

#: Ours must take at most this share of the hand-written version's time per job.
BAR = 1 / 0.95


class TrivialSession:
    def close(self) -> None:
        pass

    def commit(self) -> None:
        pass


Ours = ScopedSession(TrivialSession)
Anchor = ScopedSession(TrivialSession)


def ours_job() -> None:
    Ours()


def anchor_job() -> None:
    try:
        Anchor()
    finally:
        Anchor.remove()


def _round(
    pool: ThreadPoolExecutor, job: t.Callable[[], None], jobs: int, workers: int, queued: bool
) -> float:
    """CPU seconds of the process per job, for ``jobs`` jobs."""
    pool.submit(job).result()  # start a thread outside the timing
    gate = threading.Event()
    if queued:
        # Hold every worker (starting them all), queue the jobs, let go.
        held = threading.Barrier(workers + 1)

        def hold() -> None:
            held.wait()
            gate.wait()

        for _ in range(workers):
            pool.submit(hold)
        held.wait()
    start = time.process_time()
    futures = [pool.submit(job) for _ in range(jobs)]
    gate.set()
    done, _ = wait(futures)
    elapsed = time.process_time() - start
    assert all(f.exception() is None for f in done)
    return elapsed / jobs


def case(ours: bool, workers: int, queued: bool) -> Case:
    def run(jobs: int) -> float:
        if ours:
            with ScopedThreadPoolExecutor(Ours, max_workers=workers) as pool:
                return _round(pool, ours_job, jobs, workers, queued)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return _round(pool, anchor_job, jobs, workers, queued)

    return run


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument(
        "--free-running", action="store_true", help="also jobs submitted while workers run"
    )
    args = parser.parse_args(argv)
    rounds, jobs = (11, 5_000) if args.quick else (31, 5_000)
    pinned = not args.no_pin and hasattr(os, "sched_setaffinity")
    if pinned:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    kinds = [(True, 1), (True, 8)]
    if args.free_running:
        kinds += [(False, 1), (False, 8)]
    cases = {
        (queued, workers, ours): case(ours, workers, queued)
        for queued, workers in kinds
        for ours in (True, False)
    }
    times = sample(cases, rounds, jobs)
    timed = "CPU time of the process (every thread), " + (
        "pinned to one CPU" if pinned else "not pinned"
    )
    print(header("ScopedThreadPoolExecutor(per='job')", rounds, f"{jobs:,} jobs", timed))
    rows = [
        Row(
            f"{'queued' if queued else 'free-running'}, {workers} thread{'s' * (workers > 1)}",
            Result.of(times[queued, workers, True], times[queued, workers, False]),
            BAR,
        )
        for queued, workers in kinds
    ]
    passed = print_rows(
        "Per job (us); anchor: a plain ThreadPoolExecutor whose jobs call Session.remove()"
        " in finally",
        rows,
        unit="us",
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
