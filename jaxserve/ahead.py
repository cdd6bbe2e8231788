"""Compile many programs before serving, several at a time.

Warm-up used to call each bucket's program once, one after the other. On XLA:CPU one
compilation runs on one core, and it is about nine tenths of the cost: tracing and lowering
(Python, holding the GIL) are the rest. `AheadOfTime` collects lowered programs and compiles
them on a thread pool, as XLA releases the GIL while it compiles. A later call with the same
argument shapes and shardings finds the executable in jit's in-memory cache and compiles
nothing (the engine's tests count compiles after warm-up).

    ahead = AheadOfTime()
    ahead.add(jitted_fn, *args)       # lowers now: args may be arrays or ShapeDtypeStructs
    ahead.compile()                   # compiles every program added, `workers` at a time
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax


def default_workers() -> int:
    """Compile threads: the cores this process may run on (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class AheadOfTime:
    def __init__(self, workers: int | None = None):
        self.workers = workers if workers is not None else default_workers()
        self._lowered: list[jax.stages.Lowered] = []
        self._compiled: list[jax.stages.Compiled] = []

    def __len__(self) -> int:
        return len(self._lowered)

    def add(self, fn, *args) -> jax.stages.Lowered:
        """Lower `fn` (a `jax.jit` function) for `args`; nothing runs and nothing is donated."""
        lowered = fn.lower(*args)
        self._lowered.append(lowered)
        return lowered

    def compile(self) -> None:
        """Compile every program added so far."""
        lowered, self._lowered = self._lowered, []
        if self.workers <= 1 or len(lowered) <= 1:
            compiled = [x.compile() for x in lowered]
        else:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="compile") as pool:
                compiled = list(pool.map(lambda x: x.compile(), lowered))
        self._compiled += compiled  # kept alive with the cache entries they fill
