"""What a compiled program's first run costs over its later runs (why warm-up runs them).

    python scripts/bench_first_run.py                 # tiny's prefills and a small function
    python scripts/bench_first_run.py --model=small --rounds=3

Each round makes fresh programs (a new `ModelRunner`, a new jitted function), compiles them
ahead (`ModelRunner.compile_ahead`, `jax.jit(...).lower().compile()`, as the warm-up does),
then times each program's first run and the median of its next three, and prints the extra
cost of the first run: per program, and its median and range over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def first_and_later(run) -> tuple[float, float]:
    """Seconds of the first call of `run` and the median of the next three."""
    first = timed(run)
    return first, statistics.median(timed(run) for _ in range(3))


def small_function() -> dict[str, tuple[float, float]]:
    def g(x, w):
        for _ in range(8):
            x = jnp.tanh(x @ w) + x
        return x

    out = {}
    for n in (64, 128):
        x, w = jnp.ones((n, 256)), jnp.full((256, 256), 0.01)
        compiled = jax.jit(g).lower(x, w).compile()
        out[f"8 x matmul+tanh [{n}, 256]"] = first_and_later(lambda c=compiled, x=x, w=w: c(x, w))
    return out


def prefills(model, lengths: list[int], batch: int) -> dict[str, tuple[float, float]]:
    from jaxserve.batch import PrefillBatch
    from jaxserve.runner import ModelRunner
    from jaxserve.sampling import sampling_arrays

    page = 16
    runner = ModelRunner(model)
    kv = runner.new_kv(2 + batch * max(lengths) // page, page)
    batches = {}
    for t in lengths:
        tokens = np.ones((batch, t), np.int32)
        bt = np.zeros((batch, t // page), np.int32)
        lens = np.full(batch, t, np.int32)
        samp = sampling_arrays([], [], batch)
        batches[t] = PrefillBatch(tokens=tokens, lengths=lens, block_tables=bt, **samp)
    with runner.compile_ahead():
        for b in batches.values():
            runner.prefill(kv, b)
    state = {"kv": kv}  # the pool is donated: each call passes the last one's

    def run(b):
        state["kv"], first = runner.prefill(state["kv"], b)
        return first

    return {
        f"prefill {batch} x {t}": first_and_later(lambda b=b: run(b)) for t, b in batches.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lengths", default="16,64,128")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    from jaxserve import experiment

    model, _, source = experiment.resolve_model(None, args.model, 0)
    lengths = [int(x) for x in args.lengths.split(",")]
    extra: dict[str, list[float]] = {}
    for k in range(args.rounds):
        rows = small_function() | prefills(model, lengths, args.batch)
        for name, (first, later) in rows.items():
            extra.setdefault(name, []).append(first - later)
            print(f"round {k} {name:>28}: first {first * 1e3:7.2f} ms, later {later * 1e3:7.2f} ms")
    print(f"\nextra cost of a first run ({source}), median (min-max) over {args.rounds} rounds:")
    for name, xs in extra.items():
        ms = [x * 1e3 for x in xs]
        print(f"  {name:>28}: {statistics.median(ms):6.2f} ms ({min(ms):.2f}-{max(ms):.2f})")


if __name__ == "__main__":
    main()
