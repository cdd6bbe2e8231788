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
and host without and with reuse, and the prompt tokens reuse did not prefill. Extra flags after `--`
go to every run (e.g. `-- --rerank_every=16`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

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


def run(name: str, seed: int, out: str, extra: list[str]) -> dict:
    sched, switch = RUNS[name]
    path = os.path.join(out, f"seed{seed}", name.replace("/", "_"))
    cmd = [sys.executable, "-m", "experiments.serve", *TRACE, f"--seed={seed}"]
    cmd += [f"--schedulers={sched}", f"--switch={switch}", f"--out={path}", *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)["runs"][0]["summary"]


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}, {max(xs):.2f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/fastswitch")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        s = {name: run(name, seed, args.out, extra) for name in RUNS}
        base, fair, noreuse = s["vllm/baseline"], s["fair_priority/all"], s["fair_priority/async"]
        slow = s["fair_priority/baseline"]
        row = {
            "seed": seed,
            "p99_ttft_ratio": base["p99_ttft"] / fair["p99_ttft"],
            "p99_tbt_ratio": base["p99_tbt"] / fair["p99_tbt"],
            "switch_p99_ttft_ratio": slow["p99_ttft"] / fair["p99_ttft"],
            "switch_p99_tbt_ratio": slow["p99_tbt"] / fair["p99_tbt"],
            "mb_moved_without_reuse": noreuse["total_swapped_bytes"] / 1e6,
            "mb_moved_with_reuse": fair["total_swapped_bytes"] / 1e6,
            "reused_prompt_tokens": fair.get("reused_prompt_tokens", 0),
            "prompt_tokens": fair.get("prompt_tokens", 0),
            "summaries": s,
        }
        rows.append(row)
        print(
            f"seed {seed}: p99 TTFT vllm/fair {row['p99_ttft_ratio']:.2f}x "
            f"({base['p99_ttft']:.3f} / {fair['p99_ttft']:.3f} s), p99 TBT "
            f"{row['p99_tbt_ratio']:.2f}x ({base['p99_tbt']:.4f} / {fair['p99_tbt']:.4f} s); "
            f"MB moved {row['mb_moved_without_reuse']:.1f} without reuse, "
            f"{row['mb_moved_with_reuse']:.1f} with; {row['reused_prompt_tokens']} of "
            f"{row['prompt_tokens']} prompt tokens reused; preemptions vllm "
            f"{base['total_preemptions']}, fair {fair['total_preemptions']}; fair_priority on "
            f"vLLM's switch / all: p99 TTFT {row['switch_p99_ttft_ratio']:.2f}x, p99 TBT "
            f"{row['switch_p99_tbt_ratio']:.2f}x"
        )
    keys = ("p99_ttft_ratio", "p99_tbt_ratio", "switch_p99_ttft_ratio", "switch_p99_tbt_ratio")
    for key in keys:
        print(f"{key}: {spread([r[key] for r in rows])} over {len(rows)} seeds")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fastswitch.json"), "w") as f:
        json.dump({"trace": TRACE, "extra": extra, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
