"""The README's main job on a fresh machine: wall time with an empty compilation cache.

    python scripts/bench_cold_start.py --rounds=2 [--warm] [--out=runs/bench_cold_start.json]

Runs the first `python -m experiments.serve` command of README.md as a subprocess, each round
with its own empty `JAXSERVE_COMPILATION_CACHE` (nothing compiled before: a fresh install),
and with `--warm` once more on that round's filled cache. Prints, per round, the wall and CPU
seconds of the whole command, where they went (profile, warm-up, replays, from its
results.json), the CPU other processes used meanwhile, and the mean-JCT ratios the job
prints; then the median (min-max) over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxserve.bench import fmt_spread, save_report, spread  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_command() -> list[str]:
    """The README's first serve command, continuation lines joined, as argv."""
    text = open(os.path.join(ROOT, "README.md")).read().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if "python -m experiments.serve" in x)
    argv = shlex.split(line[line.index("python -m experiments.serve") :])
    return [sys.executable] + argv[1:]


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_once(argv: list[str], cache: str, out: str) -> dict:
    argv = [a for a in argv if not a.startswith("--out=")] + [f"--out={out}"]
    env = dict(os.environ, JAXSERVE_COMPILATION_CACHE=cache)
    busy0, kids0, t0 = busy_seconds(), sum(os.times()[2:4]), time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = sum(os.times()[2:4]) - kids0
    busy1 = busy_seconds()
    if proc.returncode != 0:
        raise SystemExit(f"the main job failed:\n{proc.stderr[-3000:]}")
    res = json.load(open(os.path.join(out, "results.json")))
    runs = {r["scheduler"]: r["summary"] for r in res["runs"]}
    jct = {name: s["mean_jct"] for name, s in runs.items()}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "other_cores": None if busy0 is None else max(0.0, (busy1 - busy0 - cpu) / wall),
        "profile_s": res.get("profile_seconds"),
        "warmup_s": sum(s.get("warmup_seconds", 0.0) for s in runs.values()),
        "warmup_programs": sum(s.get("warmup_compiles", 0) for s in runs.values()),
        "replays_s": sum(s["wall_seconds"] for s in runs.values()),
        "fcfs/skip_join": jct["fcfs"] / jct["skip_join_mlfq"],
        "skip_join/srpt": jct["skip_join_mlfq"] / jct["srpt"],
    }


def show(label: str, r: dict) -> None:
    other = "n/a" if r["other_cores"] is None else f"{r['other_cores']:.2f}"
    print(
        f"  {label}: wall {r['wall_s']:.1f} s (CPU {r['cpu_s']:.0f} s; other processes "
        f"{other} cores) = profile {r['profile_s']:.1f} + warm-up "
        f"{r['warmup_s']:.1f} ({r['warmup_programs']} programs) + replays "
        f"{r['replays_s']:.1f} + the rest; fcfs/skip_join {r['fcfs/skip_join']:.2f}x, "
        f"skip_join/srpt {r['skip_join/srpt']:.2f}x",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warm", action="store_true", help="also run each round on its warm cache")
    ap.add_argument("--out", default="runs/bench_cold_start.json")
    args = ap.parse_args()
    argv = readme_command()
    print("command:", " ".join(shlex.quote(a) for a in argv[1:]), flush=True)
    rounds: dict[str, list[dict]] = {"cold": [], "warm": []}
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "xla")
            for kind in ("cold", "warm") if args.warm else ("cold",):
                r = run_once(argv, cache, os.path.join(tmp, kind))
                rounds[kind].append(r)
                show(f"round {i + 1}, {kind}", r)
    for kind, rs in rounds.items():
        if not rs:
            continue
        print(f"{kind}, median (min-max) over {len(rs)} rounds:")
        for key, fmt, unit in (
            ("wall_s", ".1f", " s"),
            ("warmup_s", ".1f", " s"),
            ("replays_s", ".1f", " s"),
            ("fcfs/skip_join", ".2f", "x"),
            ("skip_join/srpt", ".2f", "x"),
        ):
            print(f"  {key}: {fmt_spread(spread([r[key] for r in rs]), fmt, unit)}")
    flags = {"rounds": args.rounds, "warm": args.warm, "command": argv[1:]}
    save_report(args.out, flags=flags, results=rounds)
    print("results:", args.out)


if __name__ == "__main__":
    main()
