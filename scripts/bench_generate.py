"""Generator decode speed and weight bandwidth on whatever backend JAX runs (GPU, TPU or CPU).

    python scripts/bench_generate.py [--presets=small,llama-3.2-1b] [--dtypes=,bfloat16]
        [--batch_sizes=1,16] [--prompt_len=64] [--new_tokens=128] [--reps=5]
        [--out=bench_generate.json]

For each preset, dtype ('' keeps the preset's own) and batch size: random weights, greedy,
`decode ms/step = (median T(new_tokens) - median T(1)) / (new_tokens - 1)` over `reps`
interleaved rounds after warm-up, the same method as `bench_decode.py` (which also compares
with PyTorch on CPU). Weight bandwidth is the bytes of every parameter a step reads (the input
embedding table left out unless tied) per step time. The device's own bandwidth is measured
in the same run as a jitted `x + 1` over 1 GiB (bytes read and written per second), and each
step's weight bandwidth is also given as a fraction of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import get_preset
from jaxserve.generate import Generator
from jaxserve.models.transformer import init_model
from jaxserve.sampling import SamplingParams


def device_bandwidth(reps: int = 10) -> float:
    x = jnp.ones((256 * 1024 * 1024,), jnp.float32)
    add = jax.jit(lambda a: a + 1)
    add(x).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        add(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * x.nbytes / statistics.median(times)


def bench(preset: str, dtype: str, batches, prompt_len: int, new: int, reps: int, bw: float):
    config = get_preset(preset)
    if dtype:
        config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
    model = init_model(config, 0)
    gen = Generator(model)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(gen.runner.state))
    if not config.tie_embeddings:
        weight_bytes -= model.embed[...].nbytes
    rng = np.random.default_rng(0)
    out = []
    for b in batches:
        high = min(config.vocab_size, 30000)
        prompts = [[int(t) for t in rng.integers(3, high, prompt_len)] for _ in range(b)]
        times = {1: [], new: []}
        for n in times:  # warm-up: compiles both lengths
            gen.generate(prompts, SamplingParams(max_new_tokens=n))
        for _ in range(reps):
            for n in times:
                t = time.perf_counter()
                gen.generate(prompts, SamplingParams(max_new_tokens=n))
                times[n].append(time.perf_counter() - t)
        step = (statistics.median(times[new]) - statistics.median(times[1])) / (new - 1)
        weight_bps = weight_bytes / step
        row = {
            "preset": preset, "dtype": config.dtype, "batch": b, "ms_per_step": step * 1e3,
            "decode_tok_s": b / step, "prefill_ms": statistics.median(times[1]) * 1e3,
            "weight_GBps": weight_bps / 1e9, "of_device_bandwidth": weight_bps / bw,
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="small,llama-3.2-1b")
    p.add_argument("--dtypes", default="", help="comma-separated; '' is the preset's own")
    p.add_argument("--batch_sizes", default="1,16")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="bench_generate.json")
    args = p.parse_args()
    if args.new_tokens < 2 or args.reps < 1:
        p.error("--new_tokens must be >= 2 and --reps >= 1")
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
        presets = [get_preset(name).name for name in args.presets.split(",")]
    except (KeyError, ValueError) as e:
        p.error(f"--presets / --batch_sizes: {e}")
    bw = device_bandwidth()
    print(f"devices {jax.devices()}; device bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    rows = []
    for preset in presets:
        for dtype in args.dtypes.split(","):
            rows += bench(preset, dtype, batches, args.prompt_len, args.new_tokens, args.reps, bw)
    result = {
        "flags": vars(args), "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
        "device_bandwidth_GBps": bw / 1e9, "results": rows,
    }  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
