"""Engine warm-up on an empty compilation cache, by the number of compile threads.

    python scripts/bench_warmup.py --model=tiny --workers=2,1 --rounds=2

Builds one engine with the main job's settings (`--max_batch`, `--kv_pages`, swap preemption
with a host budget, so the recovery prefills are warmed too) and times `Engine.warmup` for
`--max_prompt` / `--max_context`, with every in-memory cache cleared before each (no persistent
cache is used). Rounds interleave the worker counts; wall and CPU seconds are printed as the
median (min-max) over rounds, with the number of programs.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

import jaxserve.ahead as ahead
from jaxserve import experiment
from jaxserve.bench import fmt_spread, spread
from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sched.config import SchedulerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--workers", default="2,1", help="compile threads to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max_batch", type=int, default=16)
    ap.add_argument("--kv_pages", type=int, default=300)
    ap.add_argument("--max_prompt", type=int, default=128)
    ap.add_argument("--max_context", type=int, default=896)
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    model, tokenizer, _ = experiment.resolve_model(None, args.model, 0)
    config = SchedulerConfig(
        max_batch=args.max_batch,
        num_pages=args.kv_pages,
        page_size=16,
        max_seq_len=model.config.max_seq_len,
        host_pages=4 * args.kv_pages,
    )
    results: dict[int, dict[str, list[float]]] = {w: {"wall": [], "cpu": []} for w in workers}
    programs = 0
    for _ in range(args.rounds):
        for w in workers:
            jax.clear_caches()
            ahead.default_workers = lambda w=w: w
            runner = ModelRunner(model)
            engine = Engine(model, "fcfs", config, tokenizer, runner=runner)
            start, cpu = time.perf_counter(), sum(os.times()[:2])
            programs = engine.warmup(args.max_prompt, args.max_context)
            results[w]["wall"].append(time.perf_counter() - start)
            results[w]["cpu"].append(sum(os.times()[:2]) - cpu)
    print(f"{args.model}: {programs} warm-up programs, median (min-max over rounds)")
    for w in workers:
        wall, cpu = spread(results[w]["wall"]), spread(results[w]["cpu"])
        print(
            f"  {w} compile thread(s): wall {fmt_spread(wall, '.1f', ' s')}, "
            f"CPU {fmt_spread(cpu, '.1f', ' s')}"
        )


if __name__ == "__main__":
    main()
