"""FastSwitch's comparison on a multi-turn trace: vLLM's design against fair scheduling with
cheap context switches, and what KV reuse saves.

    python scripts/bench_fastswitch.py --seeds=0,1,2 --out=runs/fastswitch

Runs `experiments.serve` on one multiturn_synth trace per seed (tiny model, a tight KV pool so
that preemption is frequent) four ways:

  * vllm / baseline: vLLM's policy and context switch (a transfer per page, every swap
    waited for, no reuse across turns);
  * fair_priority / baseline: FastSwitch's setting (re-ranking for fairness, so preemption is
    frequent) on vLLM's context switch: the system FastSwitch compares against;
  * fair_priority / async: asynchronous block-group swaps, no reuse;
  * fair_priority / all: every mechanism, multi-turn KV reuse included.

and prints, per seed and as median [min, max] over seeds, the P99 TTFT and P99 TBT of each
baseline over fair_priority/all (FastSwitch reports 1.4-11.2x), bytes moved between device
and host without and with reuse, and the prompt tokens reuse did not prefill. Each run's TBT
gaps are split by whether they span a preempt -> resume wait (`tbt_sources`): the P99 of a
policy that preempts more than 1% of its gaps is such a wait.

Extra flags after `--` go to every run (e.g. `-- --rerank_every=16`). `--runs` serves a
subset of the four (the ratios need vllm/baseline and fair_priority/all); `--margins=4,100`
adds fair_priority/all runs at other `--rerank_margin`s (fair_priority's hysteresis) and their
ratios; `--reuse` reads the runs already in --out instead of serving them again.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys

import numpy as np

RUNS = {  # name -> (scheduler, --switch)
    "vllm/baseline": ("vllm", "baseline"),
    "fair_priority/baseline": ("fair_priority", "baseline"),
    "fair_priority/async": ("fair_priority", "async"),
    "fair_priority/all": ("fair_priority", "all"),
}
TRACE = [
    "--model=tiny",
    "--workload=multiturn_synth",
    "--rate=24",
    "--num_requests=96",
    "--max_batch=4",
    "--kv_pages=32",
    "--max_prompt_len=192",
    "--max_output_len=48",
    "--decode_steps=4",
]


def tbt_sources(run: dict) -> dict:
    """Where a run's TBT tail comes from: its gaps between consecutive tokens, how many span
    a preempt -> resume wait (a resume time inside the gap), how many of those are among the
    gaps at or above the P99, the P99 of the other gaps, and how many of the others at or
    above the P99 hold some request's first token (a prefill in that iteration)."""
    resumes = {p["id"]: p["resume_times"] for p in run.get("preemptions", [])}
    firsts = sorted(r["first_token_time"] for r in run["requests"] if r["first_token_time"])
    gaps, spans, prefill = [], [], []
    for r in run["requests"]:
        if r["state"] != "finished":
            continue
        t, rs = r["token_times"], resumes.get(r["id"], [])
        for a, b in zip(t, t[1:]):
            gaps.append(b - a)
            spans.append(any(a < x <= b for x in rs))
            i = bisect.bisect_right(firsts, a)  # the first first-token time after a
            prefill.append(i < len(firsts) and firsts[i] <= b)
    g, s, f = np.asarray(gaps), np.asarray(spans, dtype=bool), np.asarray(prefill, dtype=bool)
    top = g >= np.percentile(g, 99)
    return {
        "gaps": int(g.size),
        "preempt_gaps": int(s.sum()),
        "top1pct": int(top.sum()),
        "top1pct_preempt": int((top & s).sum()),
        "top1pct_other_with_prefill": int((top & ~s & f).sum()),
        "p99_other": float(np.percentile(g[~s], 99)),
    }


def run(name: str, seed: int, out: str, extra: list[str], reuse: bool = False) -> dict:
    sched, switch = RUNS[name.split("@")[0]]
    path = os.path.join(out, f"seed{seed}", name.replace("/", "_").replace("@", "_m"))
    cmd = [sys.executable, "-m", "experiments.serve", *TRACE, f"--seed={seed}"]
    cmd += [f"--schedulers={sched}", f"--switch={switch}", f"--out={path}", *extra]
    if "@" in name:  # fair_priority/all@MARGIN
        cmd.append(f"--rerank_margin={name.split('@')[1]}")
    if not (reuse and os.path.exists(os.path.join(path, "results.json"))):
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    with open(os.path.join(path, "results.json")) as f:
        data = json.load(f)["runs"][0]
    return data["summary"] | {"tbt_sources": tbt_sources(data)}


def compare(seed: int, s: dict[str, dict]) -> dict:
    """One seed's ratios over fair_priority/all (and each margin's run), with printed lines."""
    base, fair = s["vllm/baseline"], s["fair_priority/all"]
    row = {"seed": seed, "summaries": s, "lines": []}
    for name, x in s.items():
        if not name.startswith("fair_priority/all"):
            continue
        tag = "" if name == "fair_priority/all" else f"margin{name.split('@')[1]}_"
        row[f"{tag}p99_ttft_ratio"] = base["p99_ttft"] / x["p99_ttft"]
        row[f"{tag}p99_tbt_ratio"] = base["p99_tbt"] / x["p99_tbt"]
        row["lines"].append(
            f"{name}: p99 TTFT vllm/fair {row[f'{tag}p99_ttft_ratio']:.2f}x "
            f"({base['p99_ttft']:.3f} / {x['p99_ttft']:.3f} s), p99 TBT "
            f"{row[f'{tag}p99_tbt_ratio']:.2f}x ({base['p99_tbt']:.4f} / {x['p99_tbt']:.4f} s), "
            f"preemptions vllm {base['total_preemptions']}, fair {x['total_preemptions']}"
        )
    for name, x in s.items():
        t = x["tbt_sources"]
        row["lines"].append(
            f"{name}: {t['preempt_gaps']} of {t['gaps']} gaps span a preemption, "
            f"{t['top1pct_preempt']} of the {t['top1pct']} at or above the P99 (of the others "
            f"there, {t['top1pct_other_with_prefill']} hold a first token); P99 of the others "
            f"{t['p99_other']:.4f} s"
        )
    row["reused_prompt_tokens"] = fair.get("reused_prompt_tokens", 0)
    row["prompt_tokens"] = fair.get("prompt_tokens", 0)
    row["mb_moved_with_reuse"] = fair["total_swapped_bytes"] / 1e6
    row["lines"].append(
        f"{row['reused_prompt_tokens']} of {row['prompt_tokens']} prompt tokens reused, "
        f"{row['mb_moved_with_reuse']:.1f} MB moved with reuse"
    )
    if "fair_priority/async" in s:
        row["mb_moved_without_reuse"] = s["fair_priority/async"]["total_swapped_bytes"] / 1e6
    if "fair_priority/baseline" in s:
        slow = s["fair_priority/baseline"]
        row["switch_p99_ttft_ratio"] = slow["p99_ttft"] / fair["p99_ttft"]
        row["switch_p99_tbt_ratio"] = slow["p99_tbt"] / fair["p99_tbt"]
        row["lines"].append(
            f"fair_priority on vLLM's switch / all: p99 TTFT {row['switch_p99_ttft_ratio']:.2f}x,"
            f" p99 TBT {row['switch_p99_tbt_ratio']:.2f}x"
        )
    return row


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}, {max(xs):.2f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/fastswitch")
    p.add_argument("--runs", default=",".join(RUNS), help="a subset of the four, by name")
    p.add_argument("--margins", default="", help="more fair_priority/all runs: --rerank_margin")
    p.add_argument("--reuse", action="store_true", help="read runs already in --out")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.runs.split(",")
    if not {"vllm/baseline", "fair_priority/all"} <= set(names) or not set(names) <= set(RUNS):
        p.error(f"--runs: names from {list(RUNS)}, with vllm/baseline and fair_priority/all")
    names += [f"fair_priority/all@{float(m):g}" for m in args.margins.split(",") if m]
    rows = []
    for seed in seeds:
        s = {name: run(name, seed, args.out, extra, args.reuse) for name in names}
        rows.append(row := compare(seed, s))
        print(f"seed {seed}: " + "; ".join(row["lines"]))
    keys = sorted({k for r in rows for k in r if k.endswith("_ratio")})
    for key in keys:
        print(f"{key}: {spread([r[key] for r in rows if key in r])} over {len(rows)} seeds")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fastswitch.json"), "w") as f:
        json.dump({"trace": TRACE, "extra": extra, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
