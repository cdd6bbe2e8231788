"""Serving across processes: every process runs the same engine on one mesh, process 0 decides.

    process 0:  intake (trace) -> Engine(clock=ReplicatedClock) -> events, results
    process k:  the same trace -> Engine(clock=ReplicatedClock) -> (events discarded)
                   every clock reading is process 0's, broadcast (`broadcast_one_to_all`)
    each iteration: process 0's fingerprint of what it emitted, checked on every process

Why the inputs and not the plan. A follower given only process 0's `Plan` could not dispatch
the same device calls: the engine turns a plan into calls through host state the plan does
not carry (the device slot table and its packed diffs, the tokens read back, which pages a
request already has, the multi-step length, the host copies of swapped KV), so a follower
would have to mirror that state, i.e. run the engine. So every process runs the engine, and
what could make the replicas differ is made identical: the scheduler is deterministic given
its inputs, the inputs are the submissions (the same trace in every process; a server would
broadcast its new requests the same way) and the clock, and the clock is process 0's. The
price is one small broadcast per clock reading (a few per iteration: `ClockStats`). A
divergence (a nondeterministic policy, a different trace) is not a silent hang: the
fingerprint check names the iteration where process k's tokens differ from process 0's.

Only process 0 emits events and writes results. Restrictions (checked): the mesh's "data"
axis is 1 (tensor parallel across processes: tokens come back replicated on every process),
and swaps need a host tier that keeps each process's shard (`host_mode=pinned_host`).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from jaxserve import distributed


@dataclasses.dataclass
class ClockStats:
    readings: int = 0  # clock readings (one broadcast each)
    seconds: float = 0.0  # spent in those broadcasts
    checks: int = 0  # fingerprint checks (one broadcast each)
    check_seconds: float = 0.0
    nbytes_per_reading: int = 8  # two int32: seconds and microseconds
    nbytes_per_check: int = 4  # one int32 (crc32 of the iteration's events)


def _broadcast(x: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(x))


class ReplicatedClock:
    """Process 0's `base()` clock, read in every process at the same points of the same code.

    Each call is a collective: every process must call it in the same order (they do: they
    run the same engine). With one process it is `base` itself, at no cost."""

    def __init__(self, base: Callable[[], float] = time.perf_counter):
        self.base = base
        self.stats = ClockStats()
        self._origin = base()

    def __call__(self) -> float:
        if distributed.process_count() == 1:
            return self.base()
        t0 = time.perf_counter()
        since = self.base() - self._origin if distributed.is_main() else 0.0
        whole = int(since)
        out = _broadcast(np.array([whole, int((since - whole) * 1e6)], np.int32))
        self.stats.readings += 1
        self.stats.seconds += time.perf_counter() - t0
        return float(out[0]) + float(out[1]) * 1e-6


def events_fingerprint(events: Sequence) -> int:
    """crc32 of an iteration's events (kind, request, token, detail), as a signed int32."""
    text = "|".join(f"{e.kind},{e.request_id},{e.token},{e.detail}" for e in events)
    return int(np.int32(np.uint32(zlib.crc32(text.encode()))))


class ReplicaDivergedError(RuntimeError):
    """A process's engine did something else than process 0's (names the process)."""


def check_same(events: Sequence, iteration: int, stats: ClockStats | None = None) -> None:
    """Every process: compare this iteration's events with process 0's (a collective)."""
    if distributed.process_count() == 1:
        return
    t0 = time.perf_counter()
    mine = events_fingerprint(events)
    theirs = int(_broadcast(np.array([mine], np.int32))[0])
    if stats is not None:
        stats.checks += 1
        stats.check_seconds += time.perf_counter() - t0
    if mine != theirs:
        raise ReplicaDivergedError(
            f"{distributed.label()}: iteration {iteration} differs from process 0's (its "
            "engine replica got other inputs or a nondeterministic policy); stopping"
        )


def check_mesh(mesh) -> None:
    """ValueError unless the mesh can serve across these processes (module doc)."""
    if distributed.process_count() > 1 and mesh.shape.get("data", 1) != 1:
        raise ValueError(
            f"serving across processes needs a mesh with data:1 (tensor parallel over all "
            f"devices, e.g. model:{mesh.size}), not {dict(mesh.shape)}"
        )


def run_replicated(engine, arrivals, stats: ClockStats | None = None) -> int:
    """`Engine.replay(arrivals)` in every process, each iteration checked against process 0
    (`check_same`). The engine must run on a `ReplicatedClock`. Returns the iterations."""
    step = engine.step
    count = 0

    def checked_step():
        nonlocal count
        events = step()
        check_same(events, count, stats)
        count += 1
        return events

    engine.step = checked_step
    try:
        engine.replay(arrivals)
    finally:
        del engine.step
    return count
