"""Fair scheduling figures: VTC's service gap against its bound, and per-client service.

    python scripts/bench_fair.py                 # simulator only (seconds)
    python scripts/bench_fair.py --engine        # plus one small run on the tiny model

1. Overload in the simulator: a heavy client (weight 2, 6x the requests) and three light
   ones, everything arriving within one second, served by vtc and, for contrast, fcfs. The
   largest service gap between two backlogged clients (`metrics.max_service_gap`, weighted
   service) against VTC's bound 2U, U = (input_cost * L + output_cost * M) / min weight
   (`jaxserve.sched.policies.vtc`: L the longest prompt, M the pool in tokens).
2. The same check on the engine (--engine): the tiny model, a small pool, the same kind of
   trace, all submitted at once; the gap is measured from the emitted tokens' times.
3. A multiturn_synth trace (heavy client of weight 2, light and on/off clients) in the
   simulator at a rate above capacity, with fcfs, vllm, vtc and fair_priority: each client's
   weighted service while every client still had requests arriving (up to the first
   client's last arrival), Jain's index over it, and the largest service gap. Turns arrive
   at their trace times here (open loop); `experiments.serve` replays them closed-loop.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from jaxserve import metrics, workload
from jaxserve.sched import Plan, Request, Scheduler, SchedulerConfig, make_scheduler
from jaxserve.sched.policies import vtc_bound
from jaxserve.sched.simloop import LinearCost, simulate
from jaxserve.workload import replay_cap

WEIGHTS = {"heavy": 2.0}


def overload_requests(seed: int, max_prompt: int = 16, max_output: int = 24) -> list[Request]:
    rng = np.random.default_rng(seed)
    out = []
    for client, n in (("heavy", 240), ("l0", 40), ("l1", 40), ("l2", 40)):
        for i in range(n):
            o = int(rng.integers(4, max_output + 1))
            out.append(
                Request(
                    f"{client}-{i}",
                    arrival=float(rng.uniform(0, 1)),
                    prompt_len=int(rng.integers(4, max_prompt + 1)),
                    max_new_tokens=o,
                    output_len=o,
                    client=client,
                )
            )
    return out


def simulate_records(policy: str, cfg: SchedulerConfig, requests: list[Request], cost):
    """Serve `requests` in the simulator; RequestRecords with every token's emission time."""
    times: dict[str, list[float]] = {}

    def on_step(s: Scheduler, plan: Plan) -> None:
        end = plan.now + cost.iteration_time(plan)
        for r in plan.batch:
            times.setdefault(r.id, []).append(end)

    res = simulate(make_scheduler(policy, cfg), requests, cost, on_step=on_step)
    return [
        metrics.RequestRecord(
            r.id,
            r.arrival,
            r.prompt_len,
            len(times.get(r.id, [])),
            times[r.id][0] if r.id in times else None,
            r.finish_time,
            times.get(r.id, []),
            preemptions=r.preemptions,
            client=r.client,
            state="finished" if r.finish_time is not None else "rejected",
        )
        for r in res.requests
    ]


def client_service(records, weights, input_cost, output_cost, until: float) -> dict:
    """Each client's weighted service received before `until` (`metrics.service_events`)."""
    out: dict[str, float] = {}
    for r in records:
        got = sum(s for t, s in metrics.service_events(r, input_cost, output_cost) if t < until)
        out[r.client] = out.get(r.client, 0.0) + got / weights.get(r.client, 1.0)
    return out


def overload_gap(args) -> dict:
    cfg = SchedulerConfig(
        max_batch=8,
        num_pages=33,
        page_size=4,
        max_seq_len=4096,
        input_cost=args.input_cost,
        output_cost=args.output_cost,
        client_weights=WEIGHTS,
    )
    reqs = overload_requests(args.seed)
    bound = vtc_bound(cfg, max(r.prompt_len for r in reqs))
    out = {"bound": bound, "pool_tokens": cfg.usable_pages * cfg.page_size}
    for policy in ("vtc", "fcfs"):
        fresh = overload_requests(args.seed)
        records = simulate_records(policy, cfg, fresh, LinearCost(a=0.01, b=1e-3))
        out[policy] = metrics.max_service_gap(records, WEIGHTS, args.input_cost, args.output_cost)
    return out


def engine_gap(args) -> dict:
    """vtc on the tiny model: every overload request submitted at once."""
    from jaxserve import experiment
    from jaxserve.engine import Engine
    from jaxserve.sampling import SamplingParams
    from jaxserve.serve_report import to_record

    model, _, source = experiment.resolve_model(None, "tiny", args.seed)
    cfg = SchedulerConfig(
        max_batch=8,
        num_pages=33,
        page_size=4,
        max_seq_len=model.config.max_seq_len,
        input_cost=args.input_cost,
        output_cost=args.output_cost,
        client_weights=WEIGHTS,
    )
    rng = np.random.default_rng(args.seed)
    reqs = overload_requests(args.seed)[:: args.engine_stride]
    engine = Engine(model, "vtc", cfg)
    for r in sorted(reqs, key=lambda r: r.arrival):
        ids = [int(t) for t in rng.integers(3, model.config.vocab_size, r.prompt_len)]
        engine.submit(
            ids,
            SamplingParams(max_new_tokens=r.max_new_tokens),
            request_id=r.id,
            output_len=r.output_len,
            client=r.client,
            stop_at_output_len=True,
        )
    engine.run_until_done()
    records = [to_record(engine.timelines[r.id]) for r in reqs]
    gap = metrics.max_service_gap(records, WEIGHTS, args.input_cost, args.output_cost)
    bound = vtc_bound(cfg, max(r.prompt_len for r in reqs))
    return {"model": source, "requests": len(reqs), "bound": bound, "vtc": gap}


def multiturn(args) -> dict:
    trace = workload.make_workload(
        "multiturn_synth",
        args.rate,
        args.num_requests,
        args.seed,
        scale=0.25,
        max_prompt_len=256,
        max_output_len=256,
    )
    weights = workload.client_weights(trace)
    cfg = SchedulerConfig(
        max_batch=16,
        num_pages=300,
        page_size=16,
        max_seq_len=1024,
        preemption="swap",
        swap_bandwidth=1.6e9,
        kv_bytes_per_page=16 * 2 * 4 * 2 * 32 * 4,  # tiny: 4 layers, 2 KV heads of 32, fp32
        input_cost=args.input_cost,
        output_cost=args.output_cost,
        client_weights=weights,
        rerank_every=args.rerank_every,
        rerank_margin=args.rerank_margin,
    )
    cost = LinearCost(
        a=1.8e-3,
        b=2.5e-4,
        b_prefill=1e-4,
        c=1.2e-6,
        swap_bandwidth=1.6e9,
        kv_bytes_per_page=cfg.kv_bytes_per_page,
    )
    until = min(max(r.arrival for r in trace if r.client == c) for c in {r.client for r in trace})
    bound = vtc_bound(cfg, max(r.prompt_len for r in trace), [1.0, *weights.values()])
    out = {"requests": len(trace), "weights": weights, "window_s": until, "vtc_bound": bound}
    out["policies"] = {}
    for policy in ("fcfs", "vllm", "vtc", "fair_priority"):
        reqs = [
            Request(
                r.id,
                arrival=r.arrival,
                prompt_len=r.prompt_len,
                max_new_tokens=replay_cap(r.prompt_len, r.output_len, 256, cfg.max_seq_len),
                output_len=r.output_len,
                client=r.client,
            )
            for r in trace
        ]
        records = simulate_records(policy, cfg, reqs, cost)
        served = client_service(records, weights, args.input_cost, args.output_cost, until)
        summary = metrics.summarize(
            [r for r in records if r.state == "finished"],
            client_weights=weights,
            input_cost=args.input_cost,
            output_cost=args.output_cost,
        )
        out["policies"][policy] = {
            "weighted_service_in_window": served,
            "jain_in_window": metrics.jain_index(list(served.values())),
            "max_service_gap": summary["max_service_gap"],
            "p99_ttft": summary["p99_ttft"],
            "clients_p99_ttft": {c: v["p99_ttft"] for c, v in summary["clients"].items()},
            "preemptions": summary["total_preemptions"],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input_cost", type=float, default=1.0)
    p.add_argument("--output_cost", type=float, default=2.0)
    p.add_argument("--rate", type=float, default=6.0, help="multiturn conversations/s")
    p.add_argument("--num_requests", type=int, default=400)
    p.add_argument("--rerank_every", type=int, default=8)
    p.add_argument("--rerank_margin", type=float, default=1.0, help="fair_priority hysteresis")
    p.add_argument("--engine", action="store_true", help="also the small engine run")
    p.add_argument("--engine_stride", type=int, default=4, help="every k-th overload request")
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    args = p.parse_args()
    for name in ("input_cost", "output_cost"):
        if not getattr(args, name) >= 0:
            p.error(f"--{name} must be >= 0")
    if args.rerank_every < 1 or args.num_requests < 1 or args.rate <= 0:
        p.error("--rerank_every and --num_requests must be >= 1, --rate > 0")
    if not args.rerank_margin >= 0:
        p.error("--rerank_margin must be >= 0")

    res = {"overload": overload_gap(args)}
    o = res["overload"]
    print(
        f"overload, simulator ({o['pool_tokens']}-token pool, heavy weight 2, input "
        f"{args.input_cost:g} / output {args.output_cost:g} a token): VTC bound 2U = "
        f"{o['bound']:.0f}; worst gap vtc {o['vtc']['gap']:.1f} "
        f"({' vs '.join(o['vtc']['clients'])}), fcfs {o['fcfs']['gap']:.1f}"
    )
    if args.engine:
        e = res["engine"] = engine_gap(args)
        print(
            f"overload, engine ({e['model']}, {e['requests']} requests): VTC bound "
            f"{e['bound']:.0f}; worst gap vtc {e['vtc']['gap']:.1f}"
        )
    m = res["multiturn"] = multiturn(args)
    print(
        f"\nmultiturn_synth, simulator: {m['requests']} requests at {args.rate:g} "
        f"conversations/s, weights {m['weights']}; weighted service in the first "
        f"{m['window_s']:.1f} s (VTC bound on the gap {m['vtc_bound']:.0f})"
    )
    clients = sorted(next(iter(m["policies"].values()))["weighted_service_in_window"])
    print(
        f"{'policy':>14} " + " ".join(f"{c:>8}" for c in clients) + f" {'Jain':>6} {'gap':>8}"
        f" {'p99 TTFT':>9} {'preempt':>7}"
    )
    for policy, v in m["policies"].items():
        served = v["weighted_service_in_window"]
        print(
            f"{policy:>14} "
            + " ".join(f"{served[c]:8.0f}" for c in clients)
            + f" {v['jain_in_window']:6.3f} {v['max_service_gap']['gap']:8.0f}"
            f" {v['p99_ttft']:9.3f} {v['preemptions']:7d}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
