"""FastSwitch's comparison at its scale, in simulation: tail latency of fair scheduling with
cheap context switches against vLLM, on a multi-turn trace over PCIe.

    python -m scripts.sim_fastswitch --out=runs/sim_fastswitch

Llama-3-8B on one A100-80G (PCIe 4.0, ~32 GB/s; a host copy call 2.3 us) by default, with a
KV pool of `--kv_pages` pages of 16 tokens (FastSwitch runs its models with little memory
left for KV, so requests are preempted), `multiturn_synth` conversations (a heavy client,
light and on/off ones; prompts grow with the history) at each `--rates` over `--seeds`.
Each (rate, seed) trace is served by:

    vllm/baseline            vLLM: its FCFS-with-preemption, per-page swaps waited for
    fair_priority/<switch>   FastSwitch's setting (re-ranked by attained service every
                             `--rerank_every` iterations), with the mechanisms turned on
                             one by one: baseline, block_groups, async, reuse, all

(`jaxserve.sim.switch`: a per-layer cache makes every per-page or per-run transfer
2 x layers copies; `all` is the engine's one gathered copy per swap.) Prints, per point, the
P99 TTFT and P99 TBT of each run, its preemptions, swap seconds, P99 stall share and bytes
moved, then the ratios vllm/baseline over fair_priority/all and fair_priority/baseline over
fair_priority/all with their median and range over the seeds, and the swap time of one long
request per-page over per-run. Writes DIR/fastswitch.json and DIR/tail_vs_rate.png (P99
TTFT and TBT against rate, each run's median over the seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics

from jaxserve import metrics
from jaxserve.sim import Parallelism, RooflineCost, Timing, get_hardware, get_model
from jaxserve.sim.run import SimSettings, make_trace, scheduler_config, simulate_trace
from jaxserve.sim.switch import SwitchState, switch_for
from jaxserve.workload import client_weights

RUNS = (
    ("vllm", "baseline"),
    ("fair_priority", "baseline"),
    ("fair_priority", "block_groups"),
    ("fair_priority", "async"),
    ("fair_priority", "reuse"),
    ("fair_priority", "all"),
)
FIGURES = ("p99_ttft", "p99_tbt", "total_preemptions", "swap_seconds", "p99_stall_share")


def serve_point(s: SimSettings, cost, kv_pages: int, rate: float, copy_latency: float) -> dict:
    """Every run of RUNS on one trace: name -> summary (with the switch's counts)."""
    trace = make_trace(s, rate)
    config = scheduler_config(
        s, cost, cost.model.max_seq_len, kv_pages, cost.kv_bytes_per_page, client_weights(trace)
    )
    out = {}
    for policy, switch in RUNS:
        sw = switch_for(switch, 2 * cost.layers_per_stage, copy_latency)
        records, (res,) = simulate_trace(
            policy, trace, config, cost, Timing(False, 1), s.max_output_len, switch=sw
        )
        out[f"{policy}/{switch}"] = metrics.summarize(records) | res.switch
    return out


def long_swap_ratio(cost, copy_latency: float, tokens: int) -> float:
    """Swap time of one request of `tokens` tokens in contiguous pages: per page / per run."""
    pages = list(range(1, -(-tokens // cost.page_size) + 1))
    copies = 2 * cost.layers_per_stage
    t = {
        mode: SwitchState(switch_for(mode, copies, copy_latency), cost, cost.page_size,
                          cost.kv_bytes_per_page).transfer_time(pages)
        for mode in ("baseline", "block_groups")
    }  # fmt: skip
    return t["baseline"] / t["block_groups"]


def ratio(a: dict, b: dict, key: str) -> float | None:
    return a[key] / b[key] if a.get(key) and b.get(key) else None


def spread(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}, {max(xs):.2f}]"


def plot(points: list[dict], rates: list[float], path: str) -> None:
    """P99 TTFT and TBT against rate, each run's median over the seeds."""
    from jaxserve import plots

    sweep = {}
    for policy, switch in RUNS:
        name = f"{policy}/{switch}"
        for r in rates:
            at = [p["runs"][name] for p in points if p["rate"] == r]
            median = {k: statistics.median(x[k] for x in at) for k in ("p99_ttft", "p99_tbt")}
            sweep.setdefault(name, []).append((r, median))
    plots.tail_vs_rate(sweep, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hardware", default="a100-80g")
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--kv_pages", type=int, default=1200, help="KV pool, pages of 16 tokens")
    p.add_argument("--rates", default="2,3,4")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--num_requests", type=int, default=300)
    p.add_argument("--max_batch", type=int, default=32)
    p.add_argument("--rerank_every", type=int, default=8)
    p.add_argument("--out", default="runs/sim_fastswitch")
    args = p.parse_args()
    if args.kv_pages < 2 or args.num_requests < 1 or args.max_batch < 1:
        p.error("--kv_pages must be >= 2, --num_requests and --max_batch >= 1")
    try:
        rates = [float(x) for x in args.rates.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error(f"--rates and --seeds must be comma-separated numbers: {args.rates!r}, "
                f"{args.seeds!r}")  # fmt: skip
    if any(not r > 0 for r in rates):
        p.error(f"--rates must be positive, got {args.rates}")
    try:
        hw = get_hardware(args.hardware)
        cost = RooflineCost(hw, get_model(args.model), Parallelism())
    except ValueError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    base = SimSettings(
        schedulers=[], workload="multiturn_synth", num_requests=args.num_requests,
        max_batch=args.max_batch, rerank_every=args.rerank_every,
    )  # fmt: skip
    print(f"{args.model} on one {hw.name}, {args.kv_pages - 1} KV pages of 16 tokens, "
          f"multiturn_synth x {args.num_requests}, max_batch {args.max_batch}")  # fmt: skip
    print(f"{'rate':>5} {'seed':>4} {'run':>27} {'P99 TTFT':>9} {'P99 TBT':>8} {'preempt':>7} "
          f"{'swap s':>7} {'stall@P99':>9} {'GB copied':>9} {'GB saved':>8}")  # fmt: skip
    points = []
    for rate in rates:
        for seed in seeds:
            s = dataclasses.replace(base, seed=seed)
            runs = serve_point(s, cost, args.kv_pages, rate, hw.host_copy_latency)
            points.append({"rate": rate, "seed": seed, "runs": runs})
            for name, r in runs.items():
                share = r["p99_stall_share"]
                print(
                    f"{rate:5.1f} {seed:4d} {name:>27} {r['p99_ttft']:9.3f} {r['p99_tbt']:8.4f} "
                    f"{r['total_preemptions']:7d} {r['swap_seconds']:7.2f} "
                    f"{share if share is not None else 0:9.1%} {r['bytes_copied'] / 1e9:9.1f} "
                    f"{r['bytes_saved_by_reuse'] / 1e9:8.1f}",
                    flush=True,
                )
    print("\nratios over fair_priority/all, median [min, max] over the seeds:")
    for rate in rates:
        at = [pt["runs"] for pt in points if pt["rate"] == rate]
        for other in ("vllm/baseline", "fair_priority/baseline"):
            cells = [
                f"{key} {spread([ratio(r[other], r['fair_priority/all'], key) for r in at])}"
                for key in ("p99_ttft", "p99_tbt")
            ]
            print(f"  rate {rate:g}: {other} / fair_priority/all: " + ", ".join(cells))
    swap = long_swap_ratio(cost, hw.host_copy_latency, 2048)
    print(f"swap of one 2048-token request, per page / per run: {swap:.2f}x")
    plot(points, rates, os.path.join(args.out, "tail_vs_rate.png"))
    keep = {"points": [{**pt, "runs": {n: {k: r[k] for k in (*FIGURES, "p99_jct", "bytes_copied",
            "bytes_saved_by_reuse", "prompt_tokens_reused")} for n, r in pt["runs"].items()}}
            for pt in points], "swap_per_page_over_per_run": swap, "args": vars(args)}  # fmt: skip
    with open(os.path.join(args.out, "fastswitch.json"), "w") as f:
        json.dump(keep, f, indent=1)
    print(f"wrote {args.out}/fastswitch.json and tail_vs_rate.png")


if __name__ == "__main__":
    main()
