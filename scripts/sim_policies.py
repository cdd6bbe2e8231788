"""Every scheduling policy on one synthetic trace, in the model-free simulator (seconds to run).

    python scripts/sim_policies.py --rate=12 --num_requests=200 --max_batch=16 --kv_pages=300
    python scripts/sim_policies.py --output_sigma=2.0 --rates=12,18,25   # heavier tails, a sweep

The cost model is linear (`jaxserve.sched.simloop.LinearCost`): an iteration takes
`a + b * decode rows + b_prefill * prompt tokens + c * context tokens the decode rows read`
seconds plus its swaps at `--swap_gbps`. The defaults approximate the `small` preset on a
2-core CPU: 1.83 ms a step at batch 1 and 5.69 ms at batch 16 on short contexts, 25 ms to
prefill 256 tokens, and 1.2 us a step per context token (the cache each decode row gathers;
on long contexts this doubles the iteration time, which is what overloads the engine in
`scripts/bench_serve.sh`). On that benchmark's trace the simulator gets fcfs, mlfq and srpt
within about 30% of the engine's mean JCT, but vllm's about 35% too low, so its vllm ratios
are conservative. Requests ask for `--max_output_len` tokens and end at their
trace length (an emulated EOS), as `experiments.serve` replays them, so only `srpt` knows how
long a job is. Prints mean / p99 JCT per policy and the FastServe ratios; with `--seeds=N`,
also the ratios' spread over N traces (seeds seed .. seed+N-1); `--out` writes every run as
JSON. Use it to find the regimes where a policy can win before spending device time on a real
model.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxserve import bench, metrics, workload
from jaxserve.sched import SchedulerConfig
from jaxserve.sched.policies import POLICIES
from jaxserve.sched.request import Request
from jaxserve.sched.scheduler import Scheduler
from jaxserve.sched.simloop import LinearCost, simulate
from jaxserve.workload import replay_cap


def trace(args, rate: float, seed: int) -> list[workload.TraceRequest]:
    """The trace `experiments.serve` builds from the same flags (and output sigma)."""
    return workload.make_workload(
        "sharegpt_synth",
        rate,
        args.num_requests,
        seed,
        arrival=args.arrival,
        cv=args.cv,
        scale=args.scale,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
        length_params={"sigma_output": args.output_sigma},
    )


def run(args, policy: str, reqs: list[workload.TraceRequest]) -> dict:
    page_bytes = args.kv_bytes_per_token * args.page_size
    cfg = SchedulerConfig(
        max_batch=args.max_batch,
        num_pages=args.kv_pages,
        page_size=args.page_size,
        max_seq_len=args.max_seq_len,
        preemption=args.preemption,
        host_pages=4 * args.kv_pages,
        swap_bandwidth=args.swap_gbps * 1e9,
        prefill_tokens_per_s=1 / args.b_prefill,
        kv_bytes_per_page=page_bytes,
        q0=args.q0_iterations * (args.a + args.b * args.max_batch),
        prefetch=args.prefetch,
        reserve_pages=args.reserve_pages,
        quantum_charge=args.quantum_charge,
        prefill_table=[(n, args.a + n * args.b_prefill) for n in (16, 1024)],
    )
    requests = [
        Request(
            id=r.id,
            arrival=r.arrival,
            prompt_len=r.prompt_len,
            output_len=r.output_len,
            max_new_tokens=replay_cap(
                r.prompt_len, r.output_len, args.max_output_len, args.max_seq_len
            ),
        )
        for r in reqs
    ]
    cost = LinearCost(
        a=args.a,
        b=args.b,
        swap_bandwidth=args.swap_gbps * 1e9,
        kv_bytes_per_page=page_bytes,
        b_prefill=args.b_prefill,
        c=args.c,
    )
    res = simulate(Scheduler(cfg, policy), requests, cost)
    jct = np.array(list(res.jct().values()))
    return {
        "mean_jct": float(jct.mean()),
        "p99_jct": float(np.percentile(jct, 99)),
        "preemptions": sum(r.preemptions for r in requests),
        "makespan": res.time,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policies", default=",".join(POLICIES), help="comma separated")
    p.add_argument("--rates", default="12", help="requests/s, comma separated")
    p.add_argument("--num_requests", type=int, default=200)
    p.add_argument("--arrival", default="poisson", choices=workload.ARRIVALS)
    p.add_argument("--cv", type=float, default=1.0, help="gamma arrivals' coefficient of variation")
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--max_prompt_len", type=int, default=256)
    p.add_argument("--max_output_len", type=int, default=1000)
    p.add_argument("--output_sigma", type=float, default=1.5, help="lognormal output sigma")
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument("--kv_pages", type=int, default=300)
    p.add_argument("--page_size", type=int, default=16)
    p.add_argument("--max_seq_len", type=int, default=2048)
    p.add_argument("--preemption", default="swap", choices=("swap", "recompute", "auto"))
    p.add_argument("--q0_iterations", type=float, default=8.0)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--quantum_charge", choices=["own", "iteration"], default="own")
    p.add_argument("--reserve_pages", type=int, default=0)
    p.add_argument("--a", type=float, default=1.57e-3, help="seconds per iteration")
    p.add_argument("--b", type=float, default=2.57e-4, help="seconds per decode row")
    p.add_argument("--b_prefill", type=float, default=9.6e-5, help="seconds per prefill token")
    p.add_argument(
        "--c", type=float, default=1.2e-6, help="seconds per context token a decode row reads"
    )
    p.add_argument("--swap_gbps", type=float, default=6.0)
    p.add_argument("--kv_bytes_per_token", type=int, default=6144, help="small, fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="traces seed, seed+1, ...: prints the ratios' spread over them",
    )
    p.add_argument("--out", default=None, help="write every run and the spread here (JSON)")
    args = p.parse_args()
    policies = args.policies.split(",")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        p.error(f"--policies: unknown {unknown}; known: {sorted(POLICIES)}")
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        p.error(f"--rates: {args.rates!r} is not a comma separated list of numbers")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    results = []
    for rate in rates:
        runs = []
        for seed in range(args.seed, args.seed + args.seeds):
            reqs = trace(args, rate, seed)
            out = {name: run(args, name, reqs) for name in policies}
            runs.append({"seed": seed, "summaries": out, "jct_ratios": metrics.jct_ratios(out)})
            if seed != args.seed:
                continue
            print(
                f"rate {rate:g} req/s, {len(reqs)} requests, batch {args.max_batch}, "
                f"{args.kv_pages} pages, output sigma {args.output_sigma:g}"
            )
            print(f"{'policy':>16} {'mean JCT':>9} {'p99 JCT':>9} {'preempt':>8}")
            for name, s in out.items():
                print(f"{name:>16} {s['mean_jct']:9.3f} {s['p99_jct']:9.3f} {s['preemptions']:8d}")
            line = metrics.ratio_line(out)
            if line:
                print(line)
        spreads = {
            k: bench.spread([r["jct_ratios"][k]["mean"] for r in runs])
            for k in runs[0]["jct_ratios"]
        }
        if args.seeds > 1 and spreads:
            print(
                f"mean JCT over {args.seeds} traces (seeds {args.seed}-{seed}): "
                + ", ".join(f"{k} {bench.fmt_spread(v, unit='x')}" for k, v in spreads.items())
            )
        results.append({"rate": rate, "runs": runs, "mean_jct_ratio_spread": spreads})
    if args.out:
        bench.save_report(args.out, flags=vars(args), results=results)
        print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
