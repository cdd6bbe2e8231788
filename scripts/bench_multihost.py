"""Serving across processes on this CPU: coordination cost per iteration and throughput.

    python scripts/bench_multihost.py --out=one.json                  # 1 process, model:2
    DEVICES_PER_PROCESS=1 bash scripts/launch_local.sh 2 -- \
        python scripts/bench_multihost.py --out=two.json              # 2 processes, model:2
    python scripts/bench_multihost.py --serve_rounds=2 --out=serve.json   # experiments.serve

With `--serve_rounds=R` it drives the serve command instead: R rounds, each one run of
`experiments.serve` on one process with 2 devices and one across 2 processes of 1 device
(`scripts/launch_local.sh`), the same trace (--requests, all arriving at once) and `model:2`;
it prints each round's 2-process/1-process throughput and the 2-process run's ticks (bytes
and microseconds per tick, from results.json).

The same trace (all requests at t=0, greedy, fixed lengths) on a `model:2` mesh of the `tiny`
preset with random weights: in one process over its own 2 CPU devices, or across 2 processes
of one device each (`jaxserve.multihost`: process 0's clock and a fingerprint check posted
once per iteration). The engine is warmed up first, so the figures are steady
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
_ROUNDS = flags.DEFINE_integer(
    "serve_rounds", 0, "Drive experiments.serve for this many rounds (module doc).", lower_bound=0
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve_summary(out_dir: str, processes: int) -> dict:
    """One run of experiments.serve (1 process x 2 devices, or 2 x 1): its summary."""
    import json
    import subprocess

    args = ["-m", "experiments.serve", "--model=tiny", "--schedulers=fcfs", "--rate=1000"]
    args += [f"--num_requests={_REQUESTS.value}", f"--max_batch={_BATCH.value}"]
    args += [f"--max_prompt_len={_PROMPT.value}", f"--max_output_len={_NEW.value}"]
    args += [f"--decode_steps={_STEPS.value}", "--mesh=model:2", f"--out={out_dir}"]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAXSERVE_COMPILATION_CACHE="")
    if processes == 1:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        cmd = [sys.executable, *args]
    else:
        env["DEVICES_PER_PROCESS"] = "1"
        env.pop("XLA_FLAGS", None)
        cmd = ["bash", os.path.join(ROOT, "scripts", "launch_local.sh"), "2", "--"]
        cmd += [sys.executable, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)["runs"][0]["summary"]


def serve_rounds() -> dict:
    import tempfile

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(_ROUNDS.value):
            one = _serve_summary(os.path.join(tmp, f"one{i}"), 1)
            two = _serve_summary(os.path.join(tmp, f"two{i}"), 2)
            row = {
                "tokens_per_s_1": one["throughput_tokens_per_s"],
                "tokens_per_s_2": two["throughput_tokens_per_s"],
                "ratio_2_over_1": two["throughput_tokens_per_s"] / one["throughput_tokens_per_s"],
                "iterations": [one["iterations"], two["iterations"]],
                "ticks": two["coordination_ticks"],
                "coordination_us_per_tick": two["coordination_us_per_tick"],
                "coordination_bytes_per_tick": two["coordination_bytes_per_tick"],
                "coordination_share_of_wall": two["coordination_ticks"]
                * two["coordination_us_per_tick"]
                / 1e6
                / two["wall_seconds"],
            }
            print(row, flush=True)
            rounds.append(row)
    ratios = [r["ratio_2_over_1"] for r in rounds]
    return {"rounds": rounds, "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main(argv) -> None:
    if _ROUNDS.value:
        result = {**serve_rounds(), "environment": experiment.environment()}
        print({k: v for k, v in result.items() if k not in ("rounds", "environment")})
        if _OUT.value:
            experiment.write_json(_OUT.value, result)
        return
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
