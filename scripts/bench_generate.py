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
step's weight bandwidth is also given as a fraction of it. Rounds, their foreign-CPU record and
quiet-round selection come from `jaxserve.bench`; each row prints its spread over the rounds.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from jaxserve.bench import Rounds, device_bandwidth, fmt_spread, median, save_report, spread, timed
from jaxserve.config import get_preset
from jaxserve.generate import Generator
from jaxserve.models.transformer import init_model
from jaxserve.sampling import SamplingParams


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
        for n in (1, new):  # warm-up: compiles both lengths
            gen.generate(prompts, SamplingParams(max_new_tokens=n))
        rounds = Rounds(reps)
        while rounds.more():
            with rounds.round() as r:
                for n in (1, new):
                    r[n] = timed(
                        lambda n=n, p=prompts: gen.generate(p, SamplingParams(max_new_tokens=n))
                    )[0]
        used, which = rounds.selected()
        step = (median([r[new] for r in used]) - median([r[1] for r in used])) / (new - 1)
        weight_bps = weight_bytes / step
        row = {
            "preset": preset,
            "dtype": config.dtype,
            "batch": b,
            "ms_per_step": step * 1e3,
            "decode_tok_s": b / step,
            "prefill_ms": median([r[1] for r in used]) * 1e3,
            "weight_GBps": weight_bps / 1e9,
            "of_device_bandwidth": weight_bps / bw,
            # one step time per round, from that round's two lengths: its spread
            "ms_per_step_rounds": spread([1e3 * (r[new] - r[1]) / (new - 1) for r in used]),
            "rounds": which,
            "other_cores": rounds.loads(),
        }
        print(
            f"{preset} {config.dtype} batch {b}: {row['ms_per_step']:.3f} ms/step "
            f"({fmt_spread(row['ms_per_step_rounds'], '.3f')} rounds, {which}), "
            f"{row['decode_tok_s']:.0f} tok/s, weights {row['weight_GBps']:.1f} GB/s = "
            f"{row['of_device_bandwidth']:.2f} of the device's",
            flush=True,
        )
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
    save_report(args.out, flags=vars(args), results=rows, device_bandwidth_GBps=bw / 1e9)
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
