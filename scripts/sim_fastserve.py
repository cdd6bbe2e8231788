"""FastServe's figure in simulation: Orca-style fcfs against skip_join_mlfq (and the srpt
oracle) on GPT-3 175B over 16 A100-80G (tensor parallel 8, pipeline parallel 2), mean and
P99 JCT against arrival rate.

    python -m scripts.sim_fastserve --out=runs/sim_fastserve
    python -m scripts.sim_fastserve --rates=1,2,4,8 --num_requests=1000 --output_sigma=2 --out=DIR

Runs `experiments.simulate`'s library call (so DIR/results.json and DIR/jct_vs_rate.png are
the same files), then prints fcfs / skip_join_mlfq for mean and P99 JCT at each rate next to
the paper's headline (up to 5.1x mean and 6.4x tail JCT against Orca).
"""

from __future__ import annotations

import argparse

from jaxserve.sim.run import SimSettings, run_analytical

PAPER = {"mean": 5.1, "p99": 6.4}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="2,4,6,8")
    p.add_argument("--num_requests", type=int, default=500)
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument(
        "--output_sigma", type=float, default=2.5, help="output length tail (0: the default)"
    )
    p.add_argument(
        "--kv_pages", type=int, default=None, help="KV pool (default: what the HBM holds)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/sim_fastserve")
    args = p.parse_args()
    s = SimSettings(
        schedulers=["fcfs", "skip_join_mlfq", "srpt"],
        rates=[float(r) for r in args.rates.split(",")],
        num_requests=args.num_requests,
        max_batch=args.max_batch,
        output_sigma=args.output_sigma if args.output_sigma > 0 else None,
        kv_pages=args.kv_pages,
        seed=args.seed,
    )
    res = run_analytical(s, "a100-80g", "gpt3-175b", 16, 8, 2, args.out)
    print(f"\n{'rate':>6} {'fcfs/skip_join mean':>20} {'p99':>6} {'skip_join/srpt mean':>20}")
    best = {"mean": 0.0, "p99": 0.0}
    for rate in s.rates:
        by = {r["scheduler"]: r["summary"] for r in res["runs"] if r["rate"] == rate}
        m = by["fcfs"]["mean_jct"] / by["skip_join_mlfq"]["mean_jct"]
        t = by["fcfs"]["p99_jct"] / by["skip_join_mlfq"]["p99_jct"]
        o = by["skip_join_mlfq"]["mean_jct"] / by["srpt"]["mean_jct"]
        best = {"mean": max(best["mean"], m), "p99": max(best["p99"], t)}
        print(f"{rate:6.2f} {m:19.2f}x {t:5.2f}x {o:19.2f}x")
    print(
        f"largest fcfs/skip_join_mlfq: mean {best['mean']:.2f}x (paper {PAPER['mean']}x), "
        f"p99 {best['p99']:.2f}x (paper {PAPER['p99']}x)"
    )


if __name__ == "__main__":
    main()
