"""Engine overhead and swap bandwidth, as ratios measured in one run.

    python scripts/bench_engine.py --model=small --batch=8 --out=bench_engine.json

1. Decode throughput of the serving engine (scheduler, batch assembly, per-token host sync,
   events) divided by a bare jitted decode loop at the same batch and context: the runner's
   `lax.scan` over the same number of steps in one call, with no scheduling at all. The
   engine runs as it serves (look-ahead decode on) and, for reference, with look-ahead off.
2. Host-tier swap bandwidth (out and back in, bytes/s) divided by numpy's copy bandwidth
   (`np.copyto` into a preallocated buffer) of the same number of bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jaxserve import experiment
from jaxserve.config import get_preset
from jaxserve.engine import Engine
from jaxserve.kvcache.host import HostTier
from jaxserve.models.transformer import init_model
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig


def engine_decode(model, runner, batch: int, prompt: int, new: int, lookahead: bool) -> float:
    """Decode tokens/s of the engine: time of the decode-only iterations."""
    pages = 1 + batch * ((prompt + new) // 16 + 2)
    cfg = SchedulerConfig(max_batch=batch, num_pages=pages, page_size=16, max_seq_len=2048)
    engine = Engine(model, "fcfs", cfg, runner=runner, lookahead=lookahead)
    engine.warmup(prompt, prompt + new)
    rs = np.random.RandomState(0)
    for i in range(batch):
        ids = [int(t) for t in rs.randint(3, model.config.vocab_size, prompt)]
        engine.submit(ids, SamplingParams(max_new_tokens=new), request_id=f"r{i}")
    engine.step()  # the prefill iteration
    start = time.perf_counter()
    steps = 0
    while engine.has_work:
        engine.step()
        steps += 1
    return batch * steps / (time.perf_counter() - start)


def bare_decode(runner: ModelRunner, batch: int, prompt: int, new: int) -> float:
    width = (prompt + new) // 16 + 2
    kv = runner.new_kv(1 + batch * width, 16)
    bt = (1 + np.arange(batch * width, dtype=np.int32)).reshape(batch, width)
    b = runner.put_batch({
        "tokens": np.ones(batch, np.int32), "positions": np.full(batch, prompt, np.int32),
        "block_tables": bt, "active": np.ones(batch, bool),
        "remaining": np.full(batch, new + 1, np.int32),
        "stop_ids": np.full((batch, 1), -1, np.int32),
        "keys": np.zeros((batch, 2), np.uint32), "temperature": np.zeros(batch, np.float32),
        "top_k": np.zeros(batch, np.int32), "top_p": np.ones(batch, np.float32),
    })  # fmt: skip
    kv, _, toks, _ = runner.decode(kv, b, new - 1)
    toks.block_until_ready()
    start = time.perf_counter()
    kv, _, toks, _ = runner.decode(kv, b, new - 1)
    toks.block_until_ready()
    return batch * (new - 1) / (time.perf_counter() - start)


def swap_vs_copy(runner: ModelRunner, num_pages: int, reps: int) -> dict:
    kv = runner.new_kv(2 * num_pages + 1, 16)
    tier = HostTier(runner.kv_sharding)
    src = list(range(1, num_pages + 1))
    dst = list(range(num_pages + 1, 2 * num_pages + 1))
    kv = tier.swap_in(kv, tier.swap_out(kv, src), dst)  # compile
    swap, copy = [], []
    host = tier.swap_out(kv, src)
    a = np.asarray(host.k).copy()
    buf = np.empty_like(a)
    for _ in range(reps):  # interleaved
        t = time.perf_counter()
        host = tier.swap_out(kv, src)
        kv = tier.swap_in(kv, host, dst)
        kv.k.block_until_ready()
        swap.append(time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(buf, a)  # k and v: the same bytes as one direction of the swap
        np.copyto(buf, a)
        copy.append(time.perf_counter() - t)
    moved = 2 * host.nbytes  # out and back in
    swap_bw = moved / statistics.median(swap)
    copy_bw = 2 * a.nbytes / statistics.median(copy)
    return {"pages": num_pages, "bytes_round_trip": moved, "mode": tier.mode,
            "swap_GBps": swap_bw / 1e9, "numpy_copy_GBps": copy_bw / 1e9,
            "swap_over_numpy": swap_bw / copy_bw}  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--swap_pages", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="bench_engine.json")
    args = p.parse_args()
    model = init_model(get_preset(args.model))
    runner = ModelRunner(model)
    eng, step, bare = [], [], []
    shape = (args.batch, args.prompt_len, args.new_tokens)
    for _ in range(args.reps):  # interleave them so machine noise hits all three
        eng.append(engine_decode(model, runner, *shape, lookahead=True))
        step.append(engine_decode(model, runner, *shape, lookahead=False))
        bare.append(bare_decode(runner, *shape))
    swap = swap_vs_copy(runner, args.swap_pages, 10)
    res = {
        "engine_decode_tok_s": statistics.median(eng), "bare_decode_tok_s": statistics.median(bare),
        "engine_over_bare": statistics.median(eng) / statistics.median(bare),
        "engine_no_lookahead_tok_s": statistics.median(step),
        "engine_no_lookahead_over_bare": statistics.median(step) / statistics.median(bare),
        "swap": swap,
    }  # fmt: skip
    print(f"model {args.model}, batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens")  # fmt: skip
    print(f"engine decode  {res['engine_decode_tok_s']:8.1f} tok/s")
    print(f"bare jit loop  {res['bare_decode_tok_s']:8.1f} tok/s")
    print(f"engine / bare  {res['engine_over_bare']:8.3f}")
    print(f"engine without look-ahead {res['engine_no_lookahead_tok_s']:8.1f} tok/s, / bare "
          f"{res['engine_no_lookahead_over_bare']:.3f}")  # fmt: skip
    print(f"swap ({swap['mode']}, {swap['pages']} pages) {swap['swap_GBps']:.2f} GB/s; numpy copy "
          f"{swap['numpy_copy_GBps']:.2f} GB/s; ratio {swap['swap_over_numpy']:.3f}")  # fmt: skip
    experiment.write_json(args.out, {"flags": vars(args), "environment": experiment.environment(),
                                     "results": res})  # fmt: skip


if __name__ == "__main__":
    main()
