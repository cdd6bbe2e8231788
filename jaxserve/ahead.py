"""Compile many programs before serving, several at a time.

Warm-up used to call each bucket's program once, one after the other. Compiling is about
nine tenths of the cost, tracing and lowering (Python, holding the GIL) the rest.
`AheadOfTime` collects lowered programs and compiles them on a thread pool, as XLA releases
the GIL while it compiles; a program starts compiling as soon as it is lowered, while the
next one is lowered. (On a 2-core CPU this gains little: XLA:CPU already keeps about 1.6
cores busy compiling one program; it pays where there are more cores.) A later call with the same
argument shapes and shardings finds the executable in jit's in-memory cache and compiles
nothing (the engine's tests count compiles after warm-up).

    ahead = AheadOfTime()
    ahead.add(jitted_fn, *args)   # lowers now (arrays or ShapeDtypeStructs), compiles meanwhile
    ahead.compile()               # waits for every program added; an AheadOfTime is used once

`CompileCounter` counts the process's compilations, to prove that after warm-up a run
compiles nothing.
"""

from __future__ import annotations

import os
import threading
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
        # compiling starts as soon as a program is lowered, while the next is being lowered
        self._pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="compile")
            if self.workers > 1
            else None
        )
        self._pending: list = []  # futures of compiled programs, or lowered ones (no pool)
        self._compiled: list[jax.stages.Compiled] = []

    def add(self, fn, *args) -> jax.stages.Lowered:
        """Lower `fn` (a `jax.jit` function) for `args` and start compiling it; nothing runs
        and nothing is donated."""
        lowered = fn.lower(*args)
        self._pending.append(lowered if self._pool is None else self._pool.submit(lowered.compile))
        return lowered

    def compile(self) -> None:
        """Wait for every program added so far to be compiled (an error raises here)."""
        pending, self._pending = self._pending, []
        try:
            for x in pending:
                self._compiled.append(x.compile() if self._pool is None else x.result())
        finally:
            self.close()

    def close(self) -> None:
        """Drop what has not started compiling and release the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class CompileCounter:
    """Counts XLA backend compilations (and persistent-cache hits) process-wide."""

    _lock = threading.Lock()
    _count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._installed:
                return

            def listener(event: str, duration: float, **kwargs) -> None:
                if event in (
                    "/jax/core/compile/backend_compile_duration",
                    "/jax/compilation_cache/cache_retrieval_time_sec",
                ):
                    cls._count += 1

            jax.monitoring.register_event_duration_secs_listener(listener)
            cls._installed = True

    @classmethod
    def count(cls) -> int:
        cls.install()
        return cls._count
