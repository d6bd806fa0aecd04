"""Jobs per second: ScopedThreadPoolExecutor(per="job") against a hand-written
try/finally ``Session.remove()`` in each job on a plain ThreadPoolExecutor.

Both run in this process, interleaved round by round, with the same trivial job
that touches its session (a do-nothing session class: the pool's own overhead
is what is measured). Bar: ours >= 0.95x the hand-written version.

    python benchmarks/bench_worker.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
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


def run_ours(jobs: int, workers: int) -> float:
    with ScopedThreadPoolExecutor(Ours, max_workers=workers) as pool:
        pool.submit(ours_job).result()  # start the threads outside the timing
        start = time.perf_counter()
        done, _ = wait([pool.submit(ours_job) for _ in range(jobs)])
        elapsed = time.perf_counter() - start
    assert all(f.exception() is None for f in done)
    return jobs / elapsed


def run_anchor(jobs: int, workers: int) -> float:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pool.submit(anchor_job).result()
        start = time.perf_counter()
        done, _ = wait([pool.submit(anchor_job) for _ in range(jobs)])
        elapsed = time.perf_counter() - start
    assert all(f.exception() is None for f in done)
    return jobs / elapsed


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    rounds, jobs = (5, 5_000) if args.quick else (15, 20_000)
    rows = []
    for workers in (1, 8):
        ours: list[float] = []
        anchor: list[float] = []
        for n in range(rounds):
            # Alternate who goes first so drift hits both alike.
            pair = (run_ours, run_anchor) if n % 2 == 0 else (run_anchor, run_ours)
            for run in pair:
                (ours if run is run_ours else anchor).append(run(jobs, workers))
        o, a = statistics.median(ours), statistics.median(anchor)
        rows.append((f"per='job', {workers} thread(s)", o, a, o / a))
    print(f"{'case':<28} {'ours jobs/s':>12} {'try/finally':>12} {'ratio':>7}  bar")
    failed = False
    for name, o, a, ratio in rows:
        ok = ratio >= BAR
        failed |= not ok
        verdict = f">= {BAR}x {'ok' if ok else 'FAIL'}"
        print(f"{name:<28} {o:>12,.0f} {a:>12,.0f} {ratio:>6.3f}x  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
