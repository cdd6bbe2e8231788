"""Serving across processes on this CPU: coordination cost per iteration and throughput.

    python scripts/bench_multihost.py --out=one.json                  # 1 process, model:2
    DEVICES_PER_PROCESS=1 bash scripts/launch_local.sh 2 -- \
        python scripts/bench_multihost.py --out=two.json              # 2 processes, model:2

The same trace (all requests at t=0, greedy, fixed lengths) on a `model:2` mesh of the `tiny`
preset with random weights: in one process over its own 2 CPU devices, or across 2 processes
of one device each (`jaxserve.multihost`: process 0's clock broadcast at each reading, one
fingerprint check per iteration). The engine is warmed up first, so the figures are steady
state. Process 0 writes: generated tokens per second, iterations, broadcasts per iteration,
and the microseconds (process 0: posting its tick; the others: waiting for it) and payload
bytes the coordination costs per iteration.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxserve import cli, distributed, experiment, multihost, sharding  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Process 0 writes the figures here (JSON).")
_REQUESTS = flags.DEFINE_integer("requests", 16, "Requests (all at t=0).", lower_bound=1)
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.", lower_bound=1)
_NEW = flags.DEFINE_integer("new_tokens", 64, "Generated tokens per request.", lower_bound=1)
_BATCH = flags.DEFINE_integer("max_batch", 8, "Requests per iteration.", lower_bound=1)
_STEPS = flags.DEFINE_integer("decode_steps", 16, "Most decode steps per device call.")


def main(argv) -> None:
    import numpy as np

    from jaxserve.config import get_preset
    from jaxserve.engine import Engine
    from jaxserve.models.transformer import init_model
    from jaxserve.sampling import SamplingParams
    from jaxserve.sched import SchedulerConfig

    config = get_preset("tiny")
    mesh = sharding.make_mesh("model:2")
    multihost.check_mesh(mesh)
    sched = SchedulerConfig(
        max_batch=_BATCH.value, num_pages=512, page_size=16, max_seq_len=config.max_seq_len
    )
    clock = multihost.ReplicatedClock()
    engine = Engine(
        init_model(config, 0), "fcfs", sched, mesh=mesh, clock=clock, decode_steps=_STEPS.value
    )
    engine.warmup(_PROMPT.value, _PROMPT.value + _NEW.value)
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=_NEW.value, temperature=0.0)
    arrivals = []
    for i in range(_REQUESTS.value):
        ids = rng.integers(3, config.vocab_size, _PROMPT.value).tolist()
        arrivals.append((0.0, lambda at, ids=ids, i=i: engine.submit(ids, params, f"r{i}", at)))
    before = (clock.stats.ticks, clock.stats.seconds)
    clock.stats.nbytes = 0
    t0 = time.perf_counter()
    iterations = multihost.run_replicated(engine, arrivals)
    wall = time.perf_counter() - t0
    ticks = clock.stats.ticks - before[0]
    coord_s = clock.stats.seconds - before[1]
    tokens = sum(len(engine.output(f"r{i}")) for i in range(_REQUESTS.value))
    result = {
        "processes": distributed.process_count(),
        "mesh": dict(mesh.shape),
        "requests": _REQUESTS.value,
        "generated_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "iterations": iterations,
        "broadcasts_per_iteration": ticks / max(iterations, 1),
        "coordination_us_per_iteration": 1e6 * coord_s / max(iterations, 1),
        "coordination_bytes_per_iteration": clock.stats.nbytes / max(iterations, 1),
        "coordination_share_of_wall": coord_s / wall,
        "environment": experiment.environment(),
    }
    if distributed.is_main():
        print({k: v for k, v in result.items() if k != "environment"}, flush=True)
        if _OUT.value:
            experiment.write_json(_OUT.value, result)


if __name__ == "__main__":
    cli.run(main)
