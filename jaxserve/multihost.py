"""Serving across processes: every process runs the same engine on one mesh, process 0 decides.

    process 0:  intake (trace) -> Engine(clock=ReplicatedClock) -> events, results
    process k:  the same trace -> Engine(clock=ReplicatedClock) -> (events discarded)
    (experiments.serve: `serve_loop` in every process; experiments.server: server/replicas.py)
    each iteration, process 0 posts one tick (~20 bytes) in the coordination service:
        its clock (the time every process's engine reads until the next tick)
        + a fingerprint of the iteration's events, checked by every other process

Why the inputs and not the plan. A follower given only process 0's `Plan` could not dispatch
the same device calls: the engine turns a plan into calls through host state the plan does
not carry (the device slot table and its packed diffs, the tokens read back, which pages a
request already has, the multi-step length, the host copies of swapped KV), so a follower
would have to mirror that state, i.e. run the engine. So every process runs the engine, and
what could make the replicas differ is made identical: the scheduler is deterministic given
its inputs, the inputs are the submissions (the same trace in every process; the HTTP
server sends its new requests in the tick, `jaxserve/server/replicas.py`), the clock (process
0's, read once per iteration) and the profile the scheduler reads (`share_json`). The price
is one ~20-byte post per iteration (`ClockStats`); the followers keep pace because every
device step's collectives need them. A divergence (a nondeterministic policy, a different
trace) is not a silent hang: the fingerprint check names the iteration where process k's
events differ from process 0's.

Only process 0 emits events and writes results. Every process reads every token: decode and
prefill outputs come back replicated (`ModelRunner.first_sharding`), also where the mesh's
"data" axis splits the rows across processes. Swaps need a host tier that keeps each
process's shard (`host_mode=pinned_host`); the serve command picks it
(`serve.serving_host_mode`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import zlib
from collections.abc import Callable, Sequence

from jaxserve import distributed


@dataclasses.dataclass
class ClockStats:
    ticks: int = 0  # one per loop iteration: process 0's time and last fingerprint
    seconds: float = 0.0  # spent posting (process 0) or waiting for (the others) them
    nbytes: int = 0  # payload bytes of the ticks


_TICK = "jaxserve/tick/{}/{}"  # clock, iteration: every clock of a run has its own keys
_KEEP = 1000  # ticks kept in the store (the others are never this far behind)
_clocks = itertools.count()  # clocks made in this process (the same sequence in every one)
_shared = itertools.count()  # values shared by `share_json`


def _send(key: str, value: str) -> None:
    distributed._client().key_value_set(key, value)


def _drop(key: str) -> None:
    distributed._client().key_value_delete(key)


def _receive(key: str) -> str:
    return distributed._client().blocking_key_value_get(key, 3_600_000)


def events_fingerprint(events: Sequence) -> int:
    """crc32 of an iteration's events (kind, request, token, detail)."""
    return zlib.crc32(
        "|".join(f"{e.kind},{e.request_id},{e.token},{e.detail}" for e in events).encode()
    )


class ReplicaDivergedError(RuntimeError):
    """A process's engine did something else than process 0's (names the process)."""


class ReplicatedClock:
    """Process 0's clock, the same in every process: it advances only at `tick()`.

    `tick(fingerprint)` ends a loop iteration. Process 0 posts its clock reading and the
    fingerprint of the iteration's events in the coordination service's key-value store
    (not a device collective: it never waits for the device, so the engine stays one step
    ahead); every other process waits for that post, takes the time, and checks the
    fingerprint against its own (ReplicaDivergedError naming the iteration if they differ;
    `cli` then tells process 0). Between ticks the clock reads the last tick's time in every
    process alike, so the engine's decisions do not depend on which process reads it. With
    one process `tick` does nothing and the clock is `base`."""

    def __init__(self, base: Callable[[], float] = time.perf_counter):
        self.base = base
        self.stats = ClockStats()
        self._origin = base()
        self._now = 0.0
        self.iteration = 0
        self._id = next(_clocks)

    @property
    def origin(self) -> float:
        """The `base` reading this clock counts from (process 0's)."""
        return self._origin

    def __call__(self) -> float:
        if distributed.process_count() == 1:
            return self.base() - self._origin
        return self._now

    def tick(self, fingerprint: int = 0, payload: str = "") -> str:
        """(Also carries process 0's `payload`, one line, to the others: returned in every
        process; "" for one process.)"""
        if distributed.process_count() == 1:
            return payload
        t0 = time.perf_counter()
        key = _TICK.format(self._id, self.iteration)
        if distributed.is_main():
            value = f"{self.base() - self._origin:.6f} {fingerprint} {payload}"
            _send(key, value)
            if self.iteration >= _KEEP:
                _drop(_TICK.format(self._id, self.iteration - _KEEP))
        else:
            value = _receive(key)
            if int(value.split()[1]) != fingerprint:
                raise ReplicaDivergedError(
                    f"{distributed.label()}: iteration {self.iteration} differs from process "
                    "0's (its engine replica got other inputs or a nondeterministic policy)"
                )
        self._now = float(value.split()[0])
        self.stats.ticks += 1
        self.stats.nbytes += len(value)
        self.stats.seconds += time.perf_counter() - t0
        self.iteration += 1
        return (value.split(" ", 2) + [""])[2]


def check_mesh(mesh) -> None:
    """ValueError unless the engine can serve on the mesh: its "data" axis splits batches
    of 2^k rows (the engine's buckets), so it is a power of two."""
    data = mesh.shape.get("data", 1)
    if data & (data - 1):
        raise ValueError(f"the data axis splits batches of 2^k rows: data:{data} cannot")


def share_json(value=None):
    """Process 0's `value` (JSON-able) in every process, through the key-value store: what
    the scheduler reads that one process measures (a profile) must be the same in all. Every
    process calls it at the same point; the others' `value` is ignored."""
    if distributed.process_count() == 1:
        return value
    key = f"jaxserve/share/{next(_shared)}"
    if distributed.is_main():
        _send(key, json.dumps(value))
        return json.loads(json.dumps(value))  # what the others get (tuples become lists)
    return json.loads(_receive(key))


def serve_loop(
    engine,
    release: Callable[[float, float], float | None],
    more: Callable[[], bool],
) -> int:
    """The replay loop, in one process or in each of several: each iteration
    `release(base, now)` submits what has arrived by `now` (seconds since `base`, the engine
    time the loop started) and returns the next arrival known (same scale; None: none), then
    the engine steps, or process 0 waits for that arrival; `more()`: arrivals are still to
    come. On a `ReplicatedClock` every iteration ends with a tick (the clock, and the check
    of the iteration's events). Returns the iterations that stepped the engine."""
    clock = engine.clock
    replicated = isinstance(clock, ReplicatedClock)
    if replicated:
        clock.tick()
    base = engine.now()
    steps = 0
    while more() or engine.has_work:
        nxt = release(base, engine.now() - base)
        engine.next_arrival = base + nxt if nxt is not None else None
        events = []
        if engine.has_work:
            events = engine.step()
            steps += 1
        elif nxt is not None and distributed.is_main():
            wait = nxt - (engine.now() - base)
            # (a replicated clock reads the last tick: wait a little, then tick anew)
            time.sleep(max(0.0, min(wait, 0.05) if replicated else wait))
        if replicated:
            clock.tick(events_fingerprint(events) if events else 0)
    engine.next_arrival = None
    return steps


def run_replicated(engine, arrivals: Sequence[tuple[float, Callable[[float], str]]]) -> int:
    """`Engine.replay(arrivals)` in every process: one `tick` per iteration (the clock, and
    the check of the iteration's events). The engine must run on a
    `ReplicatedClock`. Returns the iterations that stepped the engine."""
    if not isinstance(engine.clock, ReplicatedClock):
        raise TypeError("run_replicated needs an Engine built with clock=ReplicatedClock()")
    pending = list(arrivals)
    i = 0

    def release(base: float, now: float) -> float | None:
        nonlocal i
        while i < len(pending) and pending[i][0] <= now:
            pending[i][1](base + pending[i][0])
            i += 1
        return pending[i][0] if i < len(pending) else None

    return serve_loop(engine, release, lambda: i < len(pending))
