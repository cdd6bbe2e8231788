"""Simulator speed: simulated requests per minute of wall time, skip_join_mlfq at batch 16.

    python -m scripts.bench_sim                       # 20000 requests, Llama-3-8B on an H100
    python -m scripts.bench_sim --scale=0.25 --max_len=256   # the CPU engine's trace lengths
    python -m scripts.bench_sim --num_requests=50000 --policy=srpt --profile

The trace is `sharegpt_synth` (its own length distribution, clipped to 1024 tokens) at
`--load` times the rate the server sustains at max_batch (measured from the cost model:
max_batch rows per decode iteration over the mean output length), so the scheduler has a
real queue to sort. Runs `--rounds` times (a fresh cost model and scheduler each: nothing
cached carries over) and prints each round's wall time and rate, then the median and the
spread (min-max), by wall time and by this process's CPU time (on a machine shared with
other jobs, the wall time also counts the time the process waited for a core); with
`--profile`, one round and its hottest functions.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time

from jaxserve import workload
from jaxserve.sim import HARDWARE, MODELS, Parallelism, RooflineCost, Timing
from jaxserve.sim.run import SimSettings, plan_seconds, scheduler_config, simulate_trace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_requests", type=int, default=20000)
    p.add_argument("--policy", default="skip_join_mlfq")
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument("--load", type=float, default=0.9, help="arrival rate / sustained rate")
    p.add_argument("--timing", choices=["sync", "engine"], default="sync")
    p.add_argument("--profile", action="store_true", help="print the hottest functions")
    p.add_argument("--no_fast", action="store_true", help="plan every iteration (no fast path)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply synthetic lengths")
    p.add_argument("--max_len", type=int, default=1024, help="clip prompts and outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="times to run it (spread)")
    args = p.parse_args()

    def new_cost() -> RooflineCost:
        return RooflineCost(HARDWARE["h100"], MODELS["llama-3-8b"], Parallelism())

    cost = new_cost()
    s = SimSettings(
        schedulers=[args.policy], num_requests=args.num_requests, max_batch=args.max_batch,
        max_prompt_len=args.max_len, max_output_len=args.max_len, seed=args.seed,
    )  # fmt: skip
    lengths = dict(scale=args.scale, max_prompt_len=args.max_len, max_output_len=args.max_len)
    probe = workload.make_workload("sharegpt_synth", 1.0, 2000, args.seed, **lengths)
    mean_out = sum(r.output_len for r in probe) / len(probe)
    mean_in = sum(r.prompt_len for r in probe) / len(probe)
    step = plan_seconds(cost, decode=[int(mean_in + mean_out / 2)] * args.max_batch)
    rate = args.load * args.max_batch / step / mean_out
    trace = workload.make_workload("sharegpt_synth", rate, args.num_requests, args.seed, **lengths)
    timing = Timing(overlap=False, decode_steps=1) if args.timing == "sync" else Timing()
    config = scheduler_config(s, cost, 8192, cost.kv_pages(), cost.kv_bytes_per_page)
    rates, cpu_rates = [], []
    load = os.getloadavg()
    for k in range(1 if args.profile else args.rounds):
        cost = new_cost()  # its memo starts empty each round
        prof = cProfile.Profile() if args.profile else None
        start, cpu = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        records, results = simulate_trace(
            args.policy, trace, config, cost, timing, args.max_len, fast=not args.no_fast
        )
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rates.append(len(records) / wall * 60)
        cpu_rates.append(len(records) / cpu * 60)
        if k == 0:
            done = sum(r.state == "finished" for r in records)
            print(
                f"{args.policy}, batch {args.max_batch}, {args.timing} timing: {done} of "
                f"{len(records)} requests finished, {results[0].iterations} iterations, "
                f"{results[0].time:.0f} simulated s at {rate:.2f} req/s; mean prompt "
                f"{mean_in:.0f}, mean output {mean_out:.0f} tokens"
            )
        print(
            f"round {k + 1}: wall {wall:.2f} s, {rates[-1]:,.0f} simulated requests per "
            f"minute, {results[0].iterations / wall:,.0f} iterations/s; CPU {cpu:.2f} s, "
            f"{cpu_rates[-1]:,.0f} per CPU minute",
            flush=True,
        )
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    print(
        f"simulated requests per minute: median {statistics.median(rates):,.0f} "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {len(rates)} rounds; load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after: other jobs on this machine); "
        f"per minute of this process's CPU time: median {statistics.median(cpu_rates):,.0f} "
        f"(min {min(cpu_rates):,.0f}, max {max(cpu_rates):,.0f})"
    )


if __name__ == "__main__":
    main()
