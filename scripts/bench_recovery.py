"""Predicted-cache recovery against recompute: time to rebuild the same victims' KV, and how
often a preempted request's greedy output stays what it is without preemption.

    python scripts/bench_recovery.py --kvp=runs/kvp_lp/final --rounds=7 \
        --out=runs/bench_recovery.json

On a KV prediction model (`--kvp`, a `experiments.train_kvpred` checkpoint; its base is the
one it was trained for), `--requests` greedy requests (prompts are windows of the project's
own docs, tokenized) are served four times with the same KVP prefill:

  * reference: a pool large enough that nothing is preempted;
  * swap / recompute / predict: vLLM's policy on a pool of `--kv_pages` pages, so the same
    requests are preempted at the same points (vLLM's choices depend only on pages), with
    victims swapped, dropped and recomputed by the base, or dropped and re-predicted.

It prints the share of requests whose whole output equals the reference, and of tokens
equal position by position. Then it times the recoveries themselves: each victim's resume
(its prompt and the tokens generated before the drop), as the base's exact prefill and as a
prediction, one call each, one after the other, in rounds (`jaxserve.bench`); the total over
victims per round, median and range over rounds, and the ratio recompute / predict.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from jaxserve.bench import Rounds, fmt_spread, save_report, spread, timed

MODES = ("swap", "recompute", "predict")


def prompts_from_docs(n: int, lo: int, hi: int, tokenizer, seed: int) -> list[list[int]]:
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
    text = "\n".join(open(p).read() for p in sorted(glob.glob(os.path.join(root, "*.md"))))
    ids = tokenizer.encode(text)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, len(ids) - length))
        out.append([int(t) for t in ids[start : start + length]])
    return out


def serve(kvp, runner, prompts, out_len: int, pages: int, page: int, mode: str):
    """Outputs by request, the engine, and each resume prefill's (request, tokens)."""
    from jaxserve.engine import Engine
    from jaxserve.sampling import SamplingParams
    from jaxserve.sched import SchedulerConfig

    config = SchedulerConfig(
        max_batch=8,
        num_pages=pages,
        page_size=page,
        max_seq_len=kvp.config.max_seq_len,
        preemption=mode,
        predict_tokens_per_s=1e4 if mode == "predict" else None,
    )
    engine = Engine(kvp, "vllm", config, runner=runner, decode_steps=1)
    resumes = []
    real = engine.device.prefill

    def prefill(kv, reqs, seqs, params, keys, base=False):
        for r, s in zip(reqs, seqs):
            if len(s) > r.prompt_len:
                resumes.append((r.id, list(s)))
        return real(kv, reqs, seqs, params, keys, base)

    engine.device.prefill = prefill
    params = SamplingParams(max_new_tokens=out_len)
    for i, p in enumerate(prompts):
        engine.submit(p, params, request_id=f"q{i}")
    engine.run_until_done()
    engine.scheduler.check_invariants()
    return {rid: engine.output(rid) for rid in engine.timelines}, engine, resumes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kvp", required=True, help="KV prediction checkpoint directory")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt_len", default="96,192", help="min,max prompt tokens")
    p.add_argument("--output_len", type=int, default=48)
    p.add_argument("--kv_pages", type=int, default=40, help="device pages of the tight pool")
    p.add_argument("--page_size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--budget_s", type=float, default=240.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_recovery.json")
    args = p.parse_args()
    lo, hi = (int(x) for x in args.prompt_len.split(","))
    if not os.path.isdir(args.kvp):
        p.error(f"--kvp: {args.kvp!r} is not a directory")
    if not 1 <= lo <= hi or args.requests < 1 or args.output_len < 1:
        p.error("--prompt_len needs 1 <= min <= max; --requests and --output_len >= 1")

    import jax

    from jaxserve.device_batch import DeviceBatch
    from jaxserve.runner import ModelRunner
    from jaxserve.sampling import SamplingParams
    from jaxserve.sched import Request, SchedulerConfig
    from jaxserve.tokenizer import load_default
    from kvpred.io import load_kvp

    kvp = load_kvp(args.kvp)
    runner = ModelRunner(kvp)
    prompts = prompts_from_docs(args.requests, lo, hi, load_default(), args.seed)
    ps = args.page_size
    roomy = 1 + args.requests * -(-(hi + args.output_len) // ps)
    ref, _, _ = serve(kvp, runner, prompts, args.output_len, roomy, ps, "swap")
    agreement, victims = {}, {}
    for mode in MODES:
        out, engine, resumes = serve(kvp, runner, prompts, args.output_len, args.kv_pages, ps, mode)
        preempted = [r for r, tl in engine.timelines.items() if tl.preemptions]
        same = [r for r in preempted if out[r] == ref[r]]
        tokens = sum(len(ref[r]) for r in preempted)
        equal = sum(a == b for r in preempted for a, b in zip(out[r], ref[r]))
        costs = [c for tl in engine.timelines.values() for c in tl.resume_costs]
        agreement[mode] = {
            "preempted": len(preempted),
            "unchanged": len(same),
            "tokens_equal_share": equal / tokens if tokens else None,
            "resume_cost_s": spread(costs),
        }
        victims[mode] = resumes
        share = len(same) / len(preempted) if preempted else float("nan")
        print(
            f"{mode:9s}: {len(preempted)} of {args.requests} requests preempted, "
            f"{len(same)} ({share:.0%}) with the reference output, "
            f"{agreement[mode]['tokens_equal_share'] or 0:.1%} of their tokens equal; "
            f"{len(resumes)} re-prefills"
        )
    same_victims = [(r, len(s)) for r, s in victims["recompute"]] == [
        (r, len(s)) for r, s in victims["predict"]
    ]
    seqs = [s for _, s in victims["predict"]]
    result = {"agreement": agreement, "same_victims": same_victims, "victims": len(seqs)}
    if seqs:
        cfg = SchedulerConfig(
            max_batch=1, num_pages=roomy, page_size=ps, max_seq_len=kvp.config.max_seq_len
        )
        device = DeviceBatch(runner, cfg, 4)
        state = {"kv": runner.new_kv(roomy, ps)}
        key = np.zeros(2, np.uint32)

        def recover(seq, base: bool):
            r = Request("v", 0.0, len(seq), 1)
            r.pages = list(range(1, 1 + -(-len(seq) // ps)))
            state["kv"], first = device.prefill(
                state["kv"], [r], [seq], [SamplingParams()], [key], base
            )
            first.block_until_ready()

        def both() -> tuple[float, float]:
            """Every victim recovered both ways, one after the other (noise hits both)."""
            rec = pre = 0.0
            for seq in seqs:
                rec += timed(lambda s=seq: recover(s, True))[0]
                pre += timed(lambda s=seq: recover(s, False))[0]
            return rec, pre

        both()  # compile every length bucket
        rounds = Rounds(reps=args.rounds, max_rounds=2 * args.rounds, time_budget_s=args.budget_s)
        while rounds.more():
            with rounds.round() as r:
                r["recompute"], r["predict"] = both()
        used, which = rounds.selected()
        rec = spread([r["recompute"] for r in used])
        pre = spread([r["predict"] for r in used])
        ratio = spread([r["recompute"] / r["predict"] for r in used])
        result["timing"] = {"rounds": which, "recompute_s": rec, "predict_s": pre}
        result["timing"]["recompute_over_predict"] = ratio
        ctx = [len(s) for s in seqs]
        print(
            f"{len(seqs)} victims (contexts {min(ctx)}-{max(ctx)} tokens, the same in both "
            f"runs: {same_victims}), total recovery time per round ({which} rounds):"
        )
        print(f"  recompute (base prefill) {fmt_spread(rec, '.4f', ' s')}")
        print(f"  predict (auxiliary)      {fmt_spread(pre, '.4f', ' s')}")
        print(f"  recompute / predict      {fmt_spread(ratio)}")
    save_report(args.out, flags=vars(args), results=result, backend=jax.default_backend())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
