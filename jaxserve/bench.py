"""The harness every benchmark shares: environment, interleaved rounds, quiet rounds, spread.

    rounds = Rounds(reps=7, quiet_cores=0.1, max_rounds=14, time_budget_s=240)
    while rounds.more():
        with rounds.round() as r:          # records the CPU other processes used meanwhile
            r["a_s"] = timed(run_a)[0]     # every candidate once per round, in turn, so that
            r["b_s"] = timed(run_b)[0]     # noise hits them alike and ratios hold
    used, which = rounds.selected()        # the quiet rounds if enough were quiet, else all
    spread([r["a_s"] / r["b_s"] for r in used])   # median, min, max over the rounds
    save_report(path, flags=..., results=...)     # + the environment, written atomically

On a shared machine every figure moves between runs and between machines of one kind; a
benchmark prints the spread over its rounds, and a result is quoted as a range.
No jax import at module level.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxserve.utils import environment, write_json


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call, after a garbage collection."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> dict[str, float]:
    """{"median", "min", "max", "n"} of a figure over rounds (or runs)."""
    xs = [float(x) for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_spread(s: dict[str, float], fmt: str = ".2f", unit: str = "") -> str:
    """'1.23x (1.10-1.31 over 7)'."""
    if not s["n"]:
        return "n/a"
    return f"{s['median']:{fmt}}{unit} ({s['min']:{fmt}}-{s['max']:{fmt}} over {s['n']})"


class ForeignLoad:
    """CPU cores busy with *other* processes over an interval (Linux /proc/stat), else None.

    busy jiffies of the whole machine minus this process's CPU time, divided by wall time: a
    shared 2-core machine makes torch's OpenMP threads (and less so XLA's) several times slower
    whenever something else runs, so every round records how loaded the machine was.
    """

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        return busy / self.hz, time.process_time(), time.perf_counter()

    def cores(self) -> float | None:
        """Foreign cores since construction or the previous call."""
        now = self._sample()
        start, self._start = self._start, now
        if now is None or start is None or now[2] <= start[2]:
            return None
        foreign = (now[0] - start[0]) - (now[1] - start[1])
        return max(0.0, foreign / (now[2] - start[2]))


class Rounds:
    """Repeated rounds, each a dict of measurements plus "other_cores" (foreign CPU use).

    Rounds with less than `quiet_cores` of foreign CPU are quiet. `more()` asks for at least
    min(3, reps) rounds, then up to `reps` while within `time_budget_s` of `start`, then more
    (up to `max_rounds`, within the budget) while fewer than `reps` were quiet. `selected()`
    gives the quiet rounds when at least min(3, reps) were quiet, else all of them.
    """

    def __init__(
        self,
        reps: int,
        quiet_cores: float = 0.1,
        max_rounds: int | None = None,
        time_budget_s: float = math.inf,
        start: float | None = None,
    ):
        self.reps, self.quiet_cores = reps, quiet_cores
        self.max_rounds = max(reps, max_rounds if max_rounds is not None else reps)
        self.time_budget_s = time_budget_s
        self.start = time.perf_counter() if start is None else start
        self.rounds: list[dict[str, Any]] = []

    def is_quiet(self, r: dict) -> bool:
        return r["other_cores"] is not None and r["other_cores"] < self.quiet_cores

    @property
    def num_quiet(self) -> int:
        return sum(map(self.is_quiet, self.rounds))

    def more(self) -> bool:
        n = len(self.rounds)
        if n < min(3, self.reps):
            return True
        in_time = time.perf_counter() - self.start < self.time_budget_s
        if n < self.reps:  # past the budget, a busy machine gets min(3, reps) rounds only
            return in_time
        return in_time and self.num_quiet < self.reps and n < self.max_rounds

    @contextlib.contextmanager
    def round(self) -> Iterator[dict[str, Any]]:
        load = ForeignLoad()
        r: dict[str, Any] = {}
        yield r
        r["other_cores"] = load.cores()
        self.rounds.append(r)

    def selected(self) -> tuple[list[dict[str, Any]], str]:
        """(rounds the headline figures use, "quiet" or "all")."""
        quiet = [r for r in self.rounds if self.is_quiet(r)]
        if len(quiet) >= min(3, self.reps):
            return quiet, "quiet"
        return list(self.rounds), "all"

    def loads(self) -> str:
        """Foreign CPU of every round, for a report line."""
        return " ".join(
            "n/a" if r["other_cores"] is None else f"{r['other_cores']:.2f}" for r in self.rounds
        )


class NumpyBandwidth:
    """The machine's weight bandwidth by BLAS: `W @ x` over a float32 W of `n_bytes` (shape
    [n_bytes / 4 / d_model, d_model]), and `W @ X` with X of `batch` columns."""

    def __init__(self, n_bytes: int, d_model: int, seed: int):
        rows = max(1, round(n_bytes / 4 / d_model))
        rng = np.random.default_rng(seed)
        self.w = rng.standard_normal((rows, d_model), dtype=np.float32)
        self.x = rng.standard_normal((d_model,), dtype=np.float32)
        self.y = np.empty((rows,), np.float32)
        self._gemm: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def nbytes(self) -> int:
        return int(self.w.nbytes)

    def matvec_times(self, reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.dot(self.w, self.x, out=self.y)
            out.append(time.perf_counter() - t0)
        return out

    def gemm_times(self, batch: int, reps: int) -> list[float]:
        if batch == 1:
            return self.matvec_times(reps)
        if batch not in self._gemm:
            x = np.random.default_rng(batch).standard_normal(
                (self.w.shape[1], batch), dtype=np.float32
            )
            self._gemm[batch] = (x, np.empty((self.w.shape[0], batch), np.float32))
        x, y = self._gemm[batch]
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(self.w, x, out=y)
            out.append(time.perf_counter() - t0)
        return out


def device_bandwidth(reps: int = 10, n_bytes: int = 1 << 30) -> float:
    """Bytes/s the default device reads and writes in a jitted `x + 1` over `n_bytes`."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((n_bytes // 4,), jnp.float32)
    add = jax.jit(lambda a: a + 1)
    add(x).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        add(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * x.nbytes / median(times)


def save_report(
    path: str, *, flags: dict, results: Any, packages: Sequence[str] = (), **extra
) -> dict:
    """{"flags", "environment", "results", **extra} as JSON at `path`; returns it."""
    report = {"flags": flags, "environment": environment(packages), "results": results, **extra}
    write_json(path, report)
    return report
