"""What the benchmarks share: the rotating rounds, a row's ratio and noise, the count
of calls and allocations per request, and the table every script prints.

A *case* runs ``n`` units of work (statements, requests, tasks) and returns the CPU
time of this thread per unit, in seconds: on a shared machine the time the scheduler
gives other processes is not the code's. :func:`sample` runs every case of a script
in rounds, the order rotated each round, so that drift in the machine's speed hits
every case alike. A :class:`Row` compares ours with an anchor, both above a floor
when the row has one (the same work done by hand, with no registry at all): per
round, each one's time minus the floor's time of the same round, then the median
over rounds. The ratio is ours over the anchor's (lower is better); its noise is the
standard error of the median of the rounds' own ratios. A row PASSes when the ratio
is at most its bar.

:func:`count` and :func:`count_async` run one request at a time under
``sys.setprofile`` and ``tracemalloc``:

- *Python calls* are the profiler's ``call`` events (a function or a generator
  started or resumed), *C calls* its ``c_call`` events (a builtin called from
  Python code), counted separately;
- *blocks* and *bytes* are what the request allocated: at each profiler event the
  growth since the previous event of the blocks ``sys.getallocatedblocks()``
  reports and of the bytes ``tracemalloc.get_traced_memory()`` reports, summed
  over the steps that grew. A block that is made and freed between two events (a
  temporary inside one builtin call) is not seen, so both are lower bounds, the
  same for ours and the anchors. What the profiler itself makes is not counted
  (the frame objects it needs; on 3.12 and later the int it passes for an event's
  offset), and the frames of a request are kept until it ends, so that their
  freeing does not hide an allocation.

Each is the median over requests, less the same count of an empty request.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import statistics
import sys
import time
import timeit
import tracemalloc
import typing as t
from array import array
from types import CodeType, FrameType

#: Runs ``n`` units; returns CPU seconds of this thread per unit.
Case = t.Callable[[int], float]

clock = time.thread_time


def statement(stmt: str, env: dict[str, t.Any]) -> Case:
    """A case that runs ``stmt`` in a loop (``timeit``'s, with the garbage
    collector off), with the names of ``env``."""
    timer = timeit.Timer(stmt, globals=env, timer=clock)

    def run(n: int) -> float:
        return timer.timeit(n) / n

    return run


def calls(one: t.Callable[[], object]) -> Case:
    """A case that calls ``one()`` once per unit (a request)."""

    def run(n: int) -> float:
        start = clock()
        for _ in range(n):
            one()
        return (clock() - start) / n

    return run


def awaits(runner: asyncio.Runner, one: t.Callable[[], t.Awaitable[object]]) -> Case:
    """A case that awaits ``one()`` once per unit, on ``runner``'s event loop."""

    async def loop(n: int) -> float:
        start = clock()
        for _ in range(n):
            await one()
        return (clock() - start) / n

    def run(n: int) -> float:
        return runner.run(loop(n))

    return run


K = t.TypeVar("K", bound=t.Hashable)


def sample(
    cases: t.Mapping[K, Case], rounds: int, n: int | t.Mapping[K, int]
) -> dict[K, list[float]]:
    """Every round's time per unit of each case, the order rotated every round.

    :param n: units per case and round, or a number per case.
    """
    counts = {name: n if isinstance(n, int) else n[name] for name in cases}
    for name, case in cases.items():  # warm up: caches, specialization
        case(max(counts[name] // 5, 1))
    # What exists now is never garbage: collections in the rounds scan only what
    # the cases make.
    gc.collect()
    gc.freeze()
    names = list(cases)
    samples: dict[K, list[float]] = {name: [] for name in names}
    try:
        for i in range(rounds):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()
                samples[name].append(cases[name](counts[name]))
    finally:
        gc.unfreeze()
    return samples


def median_error(values: t.Sequence[float]) -> float:
    """The standard error of the median of ``values``, from their interquartile
    range (as for normal errors)."""
    if len(values) < 2:
        return math.nan
    q1, _, q3 = statistics.quantiles(values, n=4)
    return 0.93 * (q3 - q1) / math.sqrt(len(values))


class Result(t.NamedTuple):
    """Ours against an anchor: each one's time per unit above the floor (medians
    over rounds, seconds), their ratio and its standard error."""

    ours: float
    anchor: float
    ratio: float
    noise: float
    floor: float | None  # the floor's own time per unit (median), if any

    @classmethod
    def of(
        cls,
        ours: t.Sequence[float],
        anchor: t.Sequence[float],
        floor: t.Sequence[float] | None = None,
    ) -> Result:
        base = floor if floor is not None else [0.0] * len(ours)
        above_ours = [o - f for o, f in zip(ours, base, strict=True)]
        above_anchor = [a - f for a, f in zip(anchor, base, strict=True)]
        o, a = statistics.median(above_ours), statistics.median(above_anchor)
        ratio = o / a if a > 0 else math.inf
        ratios = [x / y for x, y in zip(above_ours, above_anchor, strict=True) if y > 0]
        return cls(
            o,
            a,
            ratio,
            median_error(ratios),
            statistics.median(floor) if floor is not None else None,
        )


class Counts(t.NamedTuple):
    """Per request (medians): profiler ``call`` and ``c_call`` events, blocks and
    bytes allocated."""

    calls: float
    c_calls: float
    blocks: float
    bytes: float


_GENERATOR_LIKE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _int_bytes() -> int:
    """What tracemalloc counts for an int above 256 (tracemalloc running)."""
    held: list[int | None] = [None] * 1000
    before = tracemalloc.get_traced_memory()[0]
    for k in range(1000):
        held[k] = k + 1_000
    # The thousand ints, ``before`` and the last ``k``.
    return round((tracemalloc.get_traced_memory()[0] - before) / 1002)


class _Counter:
    """Counts what runs while its hook is the profiler (see the module)."""

    #: Frames kept without growing a list (a growth is an allocation of the hook's).
    SLOTS = 4096

    def __init__(self) -> None:
        # last blocks, last bytes, blocks, bytes, calls, c_calls, new frames, their
        # bytes, frames kept
        state = self.state = array("q", [0] * 9)
        frames: list[FrameType | None] = [None] * self.SLOTS
        self.frames = frames
        starts: dict[CodeType, int] = {}
        # sys.getallocatedblocks() walks every arena (microseconds); the hook reads
        # it once per event, and a second time only after it kept something itself.
        blocks = sys.getallocatedblocks
        traced = tracemalloc.get_traced_memory
        sizeof = sys.getsizeof
        slots = self.SLOTS
        offsets = sys.version_info >= (3, 12)
        int_bytes = _int_bytes()

        def first_offset(code: CodeType) -> int:
            """Where a generator's frame stands when it is first started."""
            import dis

            return next(i.offset for i in dis.get_instructions(code) if i.opname == "RESUME")

        def hook(frame: FrameType, event: str, arg: object) -> None:
            # Each reading is taken while nothing of the hook's own is alive, but
            # ``now_bytes`` when the blocks are read (one block, taken off).
            # Python 3.12's profiler passes the event's offset as an int, made
            # for the call (when above 256) and freed after it: not the code's.
            offset_int = offsets and frame.f_lasti > 256
            now_bytes = traced()[0] - offset_int * int_bytes
            now_blocks = blocks() - 1 - offset_int
            if now_blocks > state[0]:
                state[2] += now_blocks - state[0]
            if now_bytes > state[1]:
                state[3] += now_bytes - state[1]
            kept = False  # whether the hook made something that outlives it
            if event == "call":
                state[4] += 1
                code = frame.f_code
                if code.co_flags & _GENERATOR_LIKE:
                    start = starts.get(code)
                    if start is None:
                        start = starts[code] = first_offset(code)
                        kept = True
                    fresh = frame.f_lasti == start
                else:
                    fresh = True
                if fresh:  # the profiler has just made this frame's object
                    i = state[8]
                    if i < slots:
                        frames[i] = frame
                    else:
                        frames.append(frame)
                        kept = True
                    state[8] = i + 1
                    del i
                    state[6] += 1
                    state[7] += sizeof(frame)
            elif event == "c_call":
                state[5] += 1
            del now_bytes
            if kept:
                del now_blocks
                state[0] = blocks() - offset_int
            else:
                state[0] = now_blocks
                del now_blocks
            state[1] = traced()[0] - offset_int * int_bytes

        self.hook = hook

    def reset(self) -> None:
        """Zero the counts; the caller calls ``sys.setprofile(self.hook)`` next,
        itself, so that no frame of this class ends in what is counted."""
        state = self.state
        for i in range(2, 9):
            state[i] = 0
        state[1] = tracemalloc.get_traced_memory()[0]
        state[0] = sys.getallocatedblocks()

    def result(self) -> tuple[int, int, int, int]:
        """The counts since :meth:`reset`; the caller has called
        ``sys.setprofile(None)``. Lets the request's frames go."""
        state = self.state
        del self.frames[self.SLOTS :]
        self.frames[: self.SLOTS] = [None] * self.SLOTS
        return (state[4], state[5], state[2] - state[6], state[3] - state[7])


class _Counting:
    """A counter's runs: an empty one, then a request, ``n`` times over. The
    drivers below call the profiler themselves, so that the empty run and the
    request see the same frames around them."""

    def __init__(self) -> None:
        self.empty: list[tuple[int, int, int, int]] = []
        self.runs: list[tuple[int, int, int, int]] = []

    def __enter__(self) -> _Counting:
        gc.collect()
        gc.disable()  # a collection would free, and so hide, what a request made
        tracemalloc.start()
        self.counter = _Counter()
        self.hook = self.counter.hook
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.setprofile(None)
        tracemalloc.stop()
        gc.enable()

    def counts(self) -> Counts:
        """Per request: the median of the runs, less the median of the empty ones."""
        base = [statistics.median(column) for column in zip(*self.empty, strict=True)]
        found = [statistics.median(column) for column in zip(*self.runs, strict=True)]
        return Counts(*(f - b for f, b in zip(found, base, strict=True)))


def count(one: t.Callable[[], object], n: int) -> Counts:
    """Counts per call of ``one()`` (a request), the medians of ``n``."""
    with _Counting() as counting:
        counter, hook = counting.counter, counting.hook
        for _ in range(n):
            counter.reset()
            sys.setprofile(hook)
            sys.setprofile(None)
            counting.empty.append(counter.result())
            counter.reset()
            sys.setprofile(hook)
            one()
            sys.setprofile(None)
            counting.runs.append(counter.result())
    return counting.counts()


async def count_async(one: t.Callable[[], t.Awaitable[object]], n: int) -> Counts:
    """Counts per ``await one()`` (a request), the medians of ``n``; the event
    loop's own work while it runs is counted too, as it is for the anchors."""
    with _Counting() as counting:
        counter, hook = counting.counter, counting.hook
        for _ in range(n):
            counter.reset()
            sys.setprofile(hook)
            sys.setprofile(None)
            counting.empty.append(counter.result())
            counter.reset()
            sys.setprofile(hook)
            await one()
            sys.setprofile(None)
            counting.runs.append(counter.result())
    return counting.counts()


class Row(t.NamedTuple):
    """One line of a table: ours against an anchor, the ratio and its bar."""

    name: str
    result: Result
    bar: float
    #: ours, the anchor's and the floor's counts per request, for a request path.
    counts: tuple[Counts, Counts, Counts | None] | None = None
    #: what the counts are per.
    per: str = "request"
    #: False for a row printed for information, whose noise can exceed what it
    #: compares: its verdict is "info", and it never fails.
    judged: bool = True

    @property
    def passed(self) -> bool:
        return not self.judged or self.result.ratio <= self.bar


def _time(seconds: float, unit: str, sign: bool) -> str:
    value = seconds * (1e9 if unit == "ns" else 1e6)
    return f"{value:{'+' if sign else ''}.{1 if unit == 'ns' else 2}f}{unit}"


def _noise(noise: float) -> str:
    # Three decimals where two would print a noise of zero.
    return f"±{noise:.{3 if noise < 0.01 else 2}f}" if math.isfinite(noise) else "n/a"


def _joined(counts: list[Counts], field: int) -> str:
    return " / ".join(f"{c[field]:,.0f}" for c in counts)


def print_rows(title: str, rows: t.Sequence[Row], unit: str = "ns", width: int = 44) -> bool:
    """Print a table: each row's ours and anchor (above the floor when it has
    one), ratio, noise, bar and verdict, then its counts; returns whether every
    row passed."""
    print(f"\n{title}\n")
    print(
        f"{'row':{width}} {'ours':>10} {'anchor':>10} {'ratio':>7} {'noise':>7} {'bar':>6}  verdict"
    )
    for row in rows:
        r = row.result
        sign = r.floor is not None
        ratio = f"{r.ratio:6.2f}x" if math.isfinite(r.ratio) else "    n/a"
        print(
            f"{row.name:{width}} {_time(r.ours, unit, sign):>10} {_time(r.anchor, unit, sign):>10}"
            f" {ratio} {_noise(r.noise):>7} {row.bar:5.2f}x"
            f"  {('PASS' if row.passed else 'FAIL') if row.judged else 'info'}"
        )
        if not math.isfinite(r.ratio):
            print(f"{'':4}the anchor cost nothing above the floor here: noise swamps this row")
        if r.floor is not None:
            print(f"{'':4}the floor itself: {_time(r.floor, unit, False)}")
        if row.counts is not None:
            ours, anchor, floor = row.counts
            found = [ours, anchor] if floor is None else [ours, anchor, floor]
            who = "ours / anchor" + (" / floor" if floor is not None else "")
            print(
                f"{'':4}per {row.per}, {who}: {_joined(found, 0)} Python calls,"
                f" {_joined(found, 1)} C calls, {_joined(found, 2)} blocks"
                f" ({_joined(found, 3)} bytes)"
            )
    return all(row.passed for row in rows)


def header(what: str, rounds: int, units: str, timed: str = "CPU time of this thread") -> str:
    """The line that opens a script's output."""
    python = sys.version.split()[0]
    return f"{what}: Python {python}; {timed}, median of {rounds} rotating rounds of {units}"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"
