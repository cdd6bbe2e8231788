"""Where skip-join approximates SRPT, and where it beats FCFS: three sweeps in simulation.

    python -m scripts.sim_sweep --out=runs/sim_sweep

Every point runs fcfs, skip_join_mlfq and srpt on the same trace (Llama-3-8B on one A100-80G
by default; `--model`, `--hardware`, `--tp`, `--pp` change it) and records the mean-JCT ratios
fcfs / skip_join_mlfq and skip_join_mlfq / srpt:

    load      utilisation 0.5 .. 1.5: the arrival rate over the rate the server sustains at
              max_batch (max_batch rows a decode iteration over the mean output length)
    memory    the KV pool as a fraction of what the whole batch at mean context needs
              (1 = just enough, below it requests are preempted and swapped), at load 0.9
    tail      the output-length lognormal sigma (heavier tail to the right), at load 0.9

Writes DIR/sweep.json and DIR/sweep.png (one panel per sweep).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from jaxserve import metrics
from jaxserve.sim import Parallelism, RooflineCost, Timing, get_hardware, get_model
from jaxserve.sim.run import SimSettings, make_trace, plan_seconds, scheduler_config, simulate_trace

POLICIES = ("fcfs", "skip_join_mlfq", "srpt")


def point(s: SimSettings, cost, kv_pages: int, rate: float) -> dict:
    config = scheduler_config(s, cost, cost.model.max_seq_len, kv_pages, cost.kv_bytes_per_page)
    trace = make_trace(s, rate)
    out = {}
    for name in POLICIES:
        records, _ = simulate_trace(name, trace, config, cost, Timing(False, 1), s.max_output_len)
        out[name] = metrics.summarize(records)
    return {
        "rate": rate,
        "kv_pages": kv_pages,
        "fcfs/skip_join": out["fcfs"]["mean_jct"] / out["skip_join_mlfq"]["mean_jct"],
        "skip_join/srpt": out["skip_join_mlfq"]["mean_jct"] / out["srpt"]["mean_jct"],
        "p99 fcfs/skip_join": out["fcfs"]["p99_jct"] / out["skip_join_mlfq"]["p99_jct"],
        "mean_jct": {k: v["mean_jct"] for k, v in out.items()},
        "preemptions": {k: v["total_preemptions"] for k, v in out.items()},
    }


def sustained_rate(s: SimSettings, cost) -> float:
    trace = make_trace(dataclasses.replace(s, num_requests=2000), 1.0)
    mean_in = sum(r.prompt_len for r in trace) / len(trace)
    mean_out = sum(r.output_len for r in trace) / len(trace)
    step = plan_seconds(cost, decode=[int(mean_in + mean_out / 2)] * s.max_batch)
    return s.max_batch / step / mean_out, mean_in + mean_out / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hardware", default="a100-80g")
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--num_requests", type=int, default=400)
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument("--loads", default="0.5,0.7,0.9,1.1,1.3,1.5")
    p.add_argument("--memory", default="0.25,0.5,0.75,1,2")
    p.add_argument("--sigmas", default="0.5,1,1.5,2,2.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/sim_sweep")
    args = p.parse_args()
    cost = RooflineCost(
        get_hardware(args.hardware), get_model(args.model), Parallelism(args.tp, args.pp)
    )
    base = SimSettings(
        schedulers=POLICIES, num_requests=args.num_requests, max_batch=args.max_batch,
        seed=args.seed, max_prompt_len=1024, max_output_len=1024,
    )  # fmt: skip
    full = cost.kv_pages()
    results: dict[str, list] = {"load": [], "memory": [], "tail": []}
    rate, ctx = sustained_rate(base, cost)
    for load in [float(x) for x in args.loads.split(",")]:
        results["load"].append({"x": load} | point(base, cost, full, load * rate))
        print("load", results["load"][-1]["x"], _fmt(results["load"][-1]), flush=True)
    need = int(args.max_batch * ctx / base.page_size) + 1
    for frac in [float(x) for x in args.memory.split(",")]:
        pages = max(int(frac * need), 1024 // base.page_size * 2 + 2)
        results["memory"].append({"x": frac} | point(base, cost, pages, 0.9 * rate))
        print("memory", frac, _fmt(results["memory"][-1]), flush=True)
    for sigma in [float(x) for x in args.sigmas.split(",")]:
        s = dataclasses.replace(base, output_sigma=sigma)
        r, _ = sustained_rate(s, cost)
        results["tail"].append({"x": sigma} | point(s, cost, full, 0.9 * r))
        print("tail", sigma, _fmt(results["tail"][-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump({"flags": vars(args), "sweeps": results}, f, indent=1)
    plot(results, os.path.join(args.out, "sweep.png"))
    print(f"JSON: {os.path.join(args.out, 'sweep.json')}")


def _fmt(r: dict) -> str:
    return (
        f"fcfs/skip_join {r['fcfs/skip_join']:.2f}x (p99 {r['p99 fcfs/skip_join']:.2f}x), "
        f"skip_join/srpt {r['skip_join/srpt']:.2f}x"
    )


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "load": "utilisation (arrival rate / sustained rate)",
        "memory": "KV pool / what a full batch needs",
        "tail": "output length lognormal sigma",
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (name, pts) in zip(axes, results.items()):
        xs = [p["x"] for p in pts]
        ax.plot(xs, [p["fcfs/skip_join"] for p in pts], marker="o", label="fcfs / skip_join")
        ax.plot(xs, [p["skip_join/srpt"] for p in pts], marker="s", label="skip_join / srpt")
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.set_xlabel(labels[name])
        ax.set_ylabel("mean JCT ratio")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
