"""Serving across 2 CPU processes (`jaxserve.multihost`): the same greedy outputs as one process.

The worker (this file run by `scripts/launch_local.sh 2`, one simulated device per process)
serves a fixed trace on `model:2`, a mesh whose two devices belong to different processes, so
the KV heads and the weights' head/MLP dimensions are split across processes. Process 0
writes every request's tokens and the coordination cost to a JSON file; the test compares the
tokens with one process serving the same trace on a `model:2` mesh of its own two devices.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from test_distributed import ROOT, launch

PROMPTS = [[5, 17, 33, 9], [40, 41, 42, 43, 44, 45, 46], [7] * 11, [88, 3], [12, 60, 24]]
MAX_NEW = [12, 5, 9, 16, 7]


def serve(
    mesh, clock=None, trace_out: str | None = None, preemption: str = "recompute"
) -> tuple[dict, dict]:
    """Serve the trace: all requests at once, a batch of 4 and 7 pages of 4 tokens, so they
    queue and the `vllm` policy preempts; (tokens, stats)."""
    from conftest import random_model, tiny_config

    from jaxserve import distributed, multihost
    from jaxserve.engine import Engine
    from jaxserve.sampling import SamplingParams
    from jaxserve.sched import SchedulerConfig

    config = tiny_config()
    multihost.check_mesh(mesh)
    sched = SchedulerConfig(
        max_batch=4, num_pages=8, page_size=4, max_seq_len=64, preemption=preemption
    )
    clock = clock or multihost.ReplicatedClock()
    host_mode = "pinned_host" if preemption == "swap" else "auto"
    engine = Engine(
        random_model(config, 0), "vllm", sched, mesh=mesh, clock=clock, host_mode=host_mode
    )
    arrivals = []
    for i, (ids, n) in enumerate(zip(PROMPTS, MAX_NEW)):
        params = SamplingParams(max_new_tokens=n, temperature=0.0)

        def submit(at, ids=ids, params=params, i=i):
            return engine.submit(ids, params, request_id=f"r{i}", arrival=at)

        arrivals.append((0.0, submit))
    t0 = time.perf_counter()
    iterations = multihost.run_replicated(engine, arrivals)
    wall = time.perf_counter() - t0
    tokens = {f"r{i}": engine.output(f"r{i}") for i in range(len(PROMPTS))}
    info = {
        "iterations": iterations,
        "wall_s": wall,
        "ticks": clock.stats.ticks,
        "tick_seconds": clock.stats.seconds,
        "preemptions": sum(tl.preemptions for tl in engine.timelines.values()),
    }
    if trace_out and distributed.is_main():
        with open(trace_out, "w") as f:
            json.dump({"tokens": tokens, "info": info}, f)
    return tokens, info


@pytest.mark.slow
def test_two_processes_serve_the_same_greedy_tokens_as_one_with_swaps(tmp_path):
    from jaxserve import sharding

    out = str(tmp_path / "multi.json")
    rc, log, _ = launch(["--out", out], timeout=240, devices=1, script=__file__)
    assert rc == 0, log
    with open(out) as f:
        multi = json.load(f)
    one, info = serve(sharding.make_mesh("model:2"), preemption="swap")
    assert info["preemptions"] > 0  # the trace does swap
    assert multi["info"]["preemptions"] == info["preemptions"]
    assert multi["tokens"] == one
    assert [len(one[f"r{i}"]) for i in range(len(PROMPTS))] == MAX_NEW
    assert multi["info"]["ticks"] > multi["info"]["iterations"] > 1  # every one checked


def test_a_replica_that_diverges_is_named(monkeypatch):
    """The per-iteration check, without processes: process 0's fingerprint differs."""
    from jaxserve import distributed, multihost
    from jaxserve.events import Event

    events = [Event("token", "r0", 0.0, token=5)]
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    clock = multihost.ReplicatedClock()
    mine = multihost.events_fingerprint(events)
    posted = {"jaxserve/tick/0": f"3.25 {mine}", "jaxserve/tick/1": f"3.5 {mine + 1}"}
    monkeypatch.setattr(multihost, "_receive", posted.pop)  # what process 0 posted
    clock.tick(mine)  # iteration 0: process 0 emitted the same events
    assert clock() == 3.25 and clock.iteration == 1
    with pytest.raises(multihost.ReplicaDivergedError, match="process 1 of 2: iteration 1"):
        clock.tick(mine)  # iteration 1: process 0 emitted something else
    assert mine == multihost.events_fingerprint(list(events))
    assert mine != multihost.events_fingerprint([Event("token", "r0", 0.0, token=6)])


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from absl import flags

    from jaxserve import cli, sharding

    flags.DEFINE_string("out", None, "Process 0 writes tokens and costs here.")
    flags.DEFINE_enum("preemption", "swap", ["swap", "recompute"], "How victims lose KV.")

    def main(argv):
        f = flags.FLAGS
        serve(sharding.make_mesh("model:2"), trace_out=f.out, preemption=f.preemption)

    cli.run(main)
