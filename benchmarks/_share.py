"""What the benchmarks share: the table of the proxy's share of a real query."""

from __future__ import annotations

import math
import statistics


def print_share(
    title: str, ours: list[float], theirs: list[float], direct: list[float], width: int = 32
) -> None:
    """The query table: each variant's time per call (median round), and each proxy's
    overhead: the median over rounds of its time minus the direct call's in the same
    round (a proxy costs well under the rounds' spread, which a difference of two
    bests or medians does not cancel), with the standard error of that median."""
    print(f"\n{title}, medians (informational, no bar)\n")
    print(f"{'':{width}} {'us/call':>8} {'proxy overhead':>15} {'of the query':>13}")
    median_direct = statistics.median(direct)
    print(f"{'session, no proxy':{width}} {median_direct / 1e3:8.2f}")
    for name, times in (("through ours", ours), ("through SQLAlchemy's", theirs)):
        diffs = [a - b for a, b in zip(times, direct, strict=True)]
        q1, _, q3 = statistics.quantiles(diffs, n=4)
        error = 0.93 * (q3 - q1) / math.sqrt(len(diffs))
        overhead = statistics.median(diffs)
        print(
            f"{name:{width}} {statistics.median(times) / 1e3:8.2f} {overhead:6.0f} ±{error:5.0f}ns"
            f" {overhead / median_direct:13.1%}"
        )
