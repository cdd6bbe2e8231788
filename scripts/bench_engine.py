"""Engine overhead against a bare jitted decode loop, host time per step, and swap stalls.

    python scripts/bench_engine.py --models=tiny,small --batches=1,8 --rounds=5 \
        --out=bench_engine.json

1. Decode throughput of the serving engine (scheduler, slot updates, token reads, events)
   divided by a bare decode loop at the same batch, prompts and context: the runner's
   `lax.scan` over the whole generation in ONE jitted call, with no host round trip. The
   engine runs as it serves (one step ahead, `--decode_steps` per call when nothing can
   change), one step ahead with one step per call, and synchronously (each step read before
   the next is planned). Rounds are interleaved so machine noise hits every variant; the
   median and the range over rounds are printed.
2. Host time per decode step: wall time per step of the engine less that of the bare loop,
   and the engine's own split (`Engine.host_time`: scheduling, dispatch of batch updates and
   device calls, reading tokens and emitting them; waiting for tokens is not host work).
3. Swaps on a swap-heavy trace (a tight page pool): the same requests served with swaps
   dispatched and never waited for, and with every swap waited for (`sync_swaps`, what a
   synchronous engine does). "Stall" is the time the loop spent blocked on swaps; "swap time"
   is what the same transfers take run on their own, timed here after the run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jaxserve import experiment
from jaxserve.batch import DecodeBatch
from jaxserve.config import get_preset
from jaxserve.engine import Engine
from jaxserve.kvcache.host import HostTier
from jaxserve.models.transformer import init_model
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams, sampling_arrays
from jaxserve.sched import SchedulerConfig

VARIANTS = {  # name -> Engine keyword arguments (decode_steps filled in from the flag)
    "engine": {"overlap": True},
    "engine_1step": {"overlap": True, "decode_steps": 1},
    "engine_sync": {"overlap": False, "decode_steps": 1},
}


def _prompts(vocab: int, batch: int, prompt: int) -> list[list[int]]:
    rs = np.random.RandomState(0)
    return [[int(t) for t in rs.randint(3, vocab, prompt)] for _ in range(batch)]


def engine_decode(model, runner, batch: int, prompt: int, new: int, **kw) -> dict:
    """Decode tokens/s of the engine, from the first read of every prompt's first token."""
    pages = 1 + batch * ((prompt + new) // 16 + 2)
    cfg = SchedulerConfig(max_batch=batch, num_pages=pages, page_size=16, max_seq_len=2048)
    engine = Engine(model, "fcfs", cfg, runner=runner, **kw)
    engine.warmup(prompt, prompt + new)
    for i, ids in enumerate(_prompts(model.config.vocab_size, batch, prompt)):
        engine.submit(ids, SamplingParams(max_new_tokens=new), request_id=f"r{i}")
    while any(not t.output_ids for t in engine.timelines.values()):
        engine.step()
    before = sum(len(t.output_ids) for t in engine.timelines.values())
    host0 = dict(engine.host_time)
    calls0 = engine.decode_calls
    start = time.perf_counter()
    while engine.has_work:
        engine.step()
    elapsed = time.perf_counter() - start
    tokens = sum(len(t.output_ids) for t in engine.timelines.values()) - before
    steps = tokens / batch
    host = {k: (engine.host_time[k] - host0[k]) / steps for k in host0}
    return {
        "tok_s": tokens / elapsed,
        "step_s": elapsed / steps,
        "host_s_per_step": host,
        "decode_calls": engine.decode_calls - calls0,
        "steps": steps,
    }


def bare_decode(runner: ModelRunner, batch: int, prompt: int, new: int) -> dict:
    width = (prompt + new) // 16 + 2
    kv = runner.new_kv(1 + batch * width, 16)
    bt = (1 + np.arange(batch * width, dtype=np.int32)).reshape(batch, width)
    b = runner.put_batch(
        DecodeBatch(
            tokens=np.ones(batch, np.int32),
            positions=np.full(batch, prompt, np.int32),
            block_tables=bt,
            active=np.ones(batch, bool),
            remaining=np.full(batch, new + 1, np.int32),
            stop_ids=np.full((batch, 1), -1, np.int32),
            **sampling_arrays([], [], batch),
        )
    )
    kv, _, toks, _ = runner.decode(kv, b, new - 1)
    toks.block_until_ready()
    start = time.perf_counter()
    kv, _, toks, _ = runner.decode(kv, b, new - 1)
    toks.block_until_ready()
    elapsed = time.perf_counter() - start
    return {"tok_s": batch * (new - 1) / elapsed, "step_s": elapsed / (new - 1)}


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def decode_overhead(name: str, batch: int, args) -> dict:
    model = init_model(get_preset(name))
    runner = ModelRunner(model)
    shape = (batch, args.prompt_len, args.new_tokens)
    runs = {v: [] for v in VARIANTS} | {"bare": []}
    for _ in range(args.rounds):  # interleaved
        for v, kw in VARIANTS.items():
            kw = {"decode_steps": args.decode_steps, **kw}
            runs[v].append(engine_decode(model, runner, *shape, **kw))
        runs["bare"].append(bare_decode(runner, *shape))
    out = {"model": name, "batch": batch}
    for v in VARIANTS:
        ratios = [e["tok_s"] / b["tok_s"] for e, b in zip(runs[v], runs["bare"])]
        extra = [e["step_s"] - b["step_s"] for e, b in zip(runs[v], runs["bare"])]
        host = {
            k: statistics.median(r["host_s_per_step"][k] for r in runs[v])
            for k in runs[v][0]["host_s_per_step"]
        }
        out[v] = {
            "over_bare": _spread(ratios),
            "extra_s_per_step": _spread(extra),
            "host_s_per_step": host,
            "tok_s": _spread([r["tok_s"] for r in runs[v]]),
            "decode_calls": runs[v][-1]["decode_calls"],
        }
    out["bare_tok_s"] = _spread([r["tok_s"] for r in runs["bare"]])
    return out


def _swap_trace(engine: Engine, n: int, vocab: int) -> None:
    rs = np.random.RandomState(1)
    for i in range(n):
        ids = [int(t) for t in rs.randint(3, vocab, int(rs.randint(48, 96)))]
        engine.submit(ids, SamplingParams(max_new_tokens=int(rs.randint(32, 96))), f"s{i}")


def swap_stalls(args) -> dict:
    """The swap-heavy trace with async and with synchronous swaps, interleaved."""
    model = init_model(get_preset(args.swap_model))
    runner = ModelRunner(model)
    cfg = SchedulerConfig(
        max_batch=8,
        num_pages=40,
        page_size=16,
        max_seq_len=2048,
        preemption="swap",
        q0=1e-4,
        host_pages=100000,
    )
    runs = {"async": [], "sync": []}
    moved = []
    for _ in range(args.rounds):
        for mode in runs:
            engine = Engine(model, "skip_join_mlfq", cfg, runner=runner, sync_swaps=mode == "sync")
            engine.warmup(96, 96 + 96)
            _swap_trace(engine, args.swap_requests, model.config.vocab_size)
            start = time.perf_counter()
            engine.run_until_done()
            wall = time.perf_counter() - start
            nbytes = sum(t.swapped_bytes for t in engine.timelines.values())
            runs[mode].append(
                {
                    "wall_s": wall,
                    "wait_s": engine.swap_wait,
                    "dispatch_s": engine.swap_time,
                    "bytes": nbytes,
                    "preemptions": sum(t.preemptions for t in engine.timelines.values()),
                }
            )
        moved.append(runs["async"][-1]["bytes"])
    # what those bytes take to move on their own: a page group out and back, timed alone
    tier = HostTier(runner.kv_sharding)
    kv = runner.new_kv(65, 16)
    pages = list(range(1, 33))
    host = tier.swap_out(kv, pages)
    kv = tier.swap_in(kv, host, pages)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        host = tier.swap_out(kv, pages)
        host.settle()
        kv = tier.swap_in(kv, host, pages)
        kv.block_until_ready()
        times.append(time.perf_counter() - t)
    bw = 2 * host.nbytes / statistics.median(times)
    out = {"model": args.swap_model, "mode": tier.mode, "alone_GBps": bw / 1e9}
    for mode, rs in runs.items():
        swap_s = [r["bytes"] / bw for r in rs]
        out[mode] = {
            "stall_over_swap_time": _spread([r["wait_s"] / s for r, s in zip(rs, swap_s)]),
            "wall_s": _spread([r["wall_s"] for r in rs]),
            "swap_time_s": statistics.median(swap_s),
            "dispatch_s": statistics.median(r["dispatch_s"] for r in rs),
            "bytes": rs[-1]["bytes"],
            "preemptions": rs[-1]["preemptions"],
        }
    out["sync_wall_over_async"] = _spread(
        [s["wall_s"] / a["wall_s"] for s, a in zip(runs["sync"], runs["async"])]
    )
    return out


def _fmt(s: dict, f: str = ".3f") -> str:
    return f"{s['median']:{f}} [{s['min']:{f}}, {s['max']:{f}}]"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--decode_steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--swap_model", default="tiny")
    p.add_argument("--swap_requests", type=int, default=24)
    p.add_argument("--skip_swaps", action="store_true")
    p.add_argument("--out", default="bench_engine.json")
    args = p.parse_args()
    results = {"decode": [], "swaps": None}
    print("engine / bare decode loop: median [min, max] over rounds; host us per step")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = decode_overhead(name, batch, args)
            results["decode"].append(r)
            print(f"{name:6} batch {batch:2}  bare {r['bare_tok_s']['median']:8.0f} tok/s")
            for v in VARIANTS:
                h = r[v]["host_s_per_step"]
                split = " ".join(f"{k} {1e6 * x:5.0f}" for k, x in h.items())
                print(
                    f"    {v:13} {_fmt(r[v]['over_bare'])}  extra/step "
                    f"{1e6 * r[v]['extra_s_per_step']['median']:6.0f} us  ({split})"
                )
    if not args.skip_swaps:
        s = swap_stalls(args)
        results["swaps"] = s
        print(
            f"swaps ({s['model']}, {s['mode']}, {s['async']['preemptions']} preemptions, "
            f"{s['async']['bytes'] / 1e6:.1f} MB moved; alone {s['alone_GBps']:.2f} GB/s)"
        )
        for mode in ("async", "sync"):
            m = s[mode]
            print(
                f"    {mode:5} stall / swap time {_fmt(m['stall_over_swap_time'])}  "
                f"wall {_fmt(m['wall_s'], '.2f')} s  dispatch {m['dispatch_s'] * 1e3:.1f} ms"
            )
        print(f"    sync wall / async wall {_fmt(s['sync_wall_over_async'])}")
    experiment.write_json(
        args.out, {"flags": vars(args), "environment": experiment.environment(), "results": results}
    )


if __name__ == "__main__":
    main()
