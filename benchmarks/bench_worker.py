"""Jobs per second: ScopedThreadPoolExecutor(per="job") against a hand-written
try/finally ``Session.remove()`` in each job on a plain ThreadPoolExecutor.

Both run in this process, interleaved round by round, with the same trivial job
that touches its session (a do-nothing session class: the pool's own overhead
is what is measured). Bar: ours >= 0.95x the hand-written version.

Two ways of feeding the pool, both with 1 and with 8 worker threads:

- queued: the workers are held while all jobs are submitted, then let go; the
  time is submitting plus draining the queue, a backlog of jobs. It carries the
  bar: the median of the rounds' ratios (each round runs both sides, one after
  the other, so drift in the machine's speed hits both alike).
- free-running: jobs are submitted while the workers take them. Its time is set
  by how often the GIL changes hands between the submitting thread and the
  workers: a round with a few dozen voluntary context switches runs about twice
  as fast as one with thousands, for either side, and which one a round gets is
  luck. Printed for reference (median ratio, best rounds' ratio, and the median
  number of context switches a round), without a bar.

The process is pinned to one CPU (``--no-pin`` to leave it free): only one
thread runs Python at a time anyway, and with 8 workers spread over cores their
fight for the GIL makes single rounds vary by 2x or more for either side.

    python benchmarks/bench_worker.py [--quick] [--no-pin]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor, wait

from scoped_session import ScopedSession
from scoped_session.worker import ScopedThreadPoolExecutor

BAR = 0.95


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


def _context_switches() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


class Round(t.NamedTuple):
    jobs_per_second: float
    context_switches: int


def _round(
    pool: ThreadPoolExecutor, job: t.Callable[[], None], jobs: int, workers: int, queued: bool
) -> Round:
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
    gc.collect()
    switches = _context_switches()
    start = time.perf_counter()
    futures = [pool.submit(job) for _ in range(jobs)]
    gate.set()
    done, _ = wait(futures)
    elapsed = time.perf_counter() - start
    switches = _context_switches() - switches
    assert all(f.exception() is None for f in done)
    return Round(jobs / elapsed, switches)


def run_ours(jobs: int, workers: int, queued: bool) -> Round:
    with ScopedThreadPoolExecutor(Ours, max_workers=workers) as pool:
        return _round(pool, ours_job, jobs, workers, queued)


def run_anchor(jobs: int, workers: int, queued: bool) -> Round:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _round(pool, anchor_job, jobs, workers, queued)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args(argv)
    rounds, jobs = (11, 5_000) if args.quick else (41, 5_000)
    pinned = not args.no_pin and hasattr(os, "sched_setaffinity")
    if pinned:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    where = "pinned to one CPU" if pinned else "not pinned"
    print(f"{rounds} rounds of {jobs:,} jobs a side, {where}")
    print(
        f"{'per=job, case':<26} {'ours jobs/s':>12} {'try/finally':>12} {'ratio':>7}"
        f"  {'best rounds':>11}  bar"
    )
    failed = False
    for queued in (True, False):
        for workers in (1, 8):
            ours: list[Round] = []
            anchor: list[Round] = []
            for n in range(rounds):
                # Alternate who goes first so drift hits both alike.
                pair = (run_ours, run_anchor) if n % 2 == 0 else (run_anchor, run_ours)
                for run in pair:
                    (ours if run is run_ours else anchor).append(run(jobs, workers, queued))
            o = statistics.median(r.jobs_per_second for r in ours)
            a = statistics.median(r.jobs_per_second for r in anchor)
            ratio = statistics.median(
                x.jobs_per_second / y.jobs_per_second for x, y in zip(ours, anchor, strict=True)
            )
            best = max(r.jobs_per_second for r in ours) / max(r.jobs_per_second for r in anchor)
            name = f"{'queued' if queued else 'free-running'}, {workers} thread(s)"
            line = f"{name:<26} {o:>12,.0f} {a:>12,.0f} {ratio:>6.3f}x  {best:>10.3f}x"
            if queued:
                ok = ratio >= BAR
                failed |= not ok
                print(f"{line}  >= {BAR}x {'ok' if ok else 'FAIL'}")
            else:
                cs_o = statistics.median(r.context_switches for r in ours)
                cs_a = statistics.median(r.context_switches for r in anchor)
                print(f"{line}  none (context switches a round: {cs_o:,.0f} vs {cs_a:,.0f})")
    print("jobs/s: median round; ratio: median of the rounds' ratios; best rounds: best vs best")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
