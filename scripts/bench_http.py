"""What the HTTP layer costs: the same trace in-process and over HTTP, per scheduler.

    python scripts/bench_http.py --model=tiny --schedulers=fcfs,vllm,skip_join_mlfq \
        --rate=8 --num_requests=48 --rounds=3 --sweep=2,4,8,16,32 --p99_ttft_target=0.5 \
        --out=runs/bench_http

Per scheduler, `--rounds` times (figures are quoted as mean and range over rounds):
1. the trace at --rate, in-process (`jaxserve.serve.run_serve`, as `experiments.serve`), then
   over HTTP (`experiments.server` in its own process, driven by the load client in this one):
   throughput HTTP / in-process and mean TTFT in-process / HTTP (both >= 0.9 is the target),
   and where the TTFT over HTTP goes (client send delay, send to engine submit, the engine's
   first token, its delivery to the client);
2. server overhead per streamed token: client receipt minus engine emission of each token
   (one host, one monotonic clock): detokenising, the event-loop hop, SSE, HTTP, the client;
3. a rate sweep over HTTP: the highest rate whose P99 TTFT stays within --p99_ttft_target
   with every request served (the sweep stops at the first rate that fails).
Both sides use one saved profile, so the schedulers' settings (q0, prefill table) are identical.
Writes DIR/bench_http.json; prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxserve import experiment, serve, serve_trace  # noqa: E402
from jaxserve.runner import ModelRunner  # noqa: E402
from jaxserve.server import client, load  # noqa: E402


def start_server(args, scheduler: str, profile_path: str, log_path: str):
    cmd = [
        sys.executable,
        "-m",
        "experiments.server",
        f"--model={args.model}",
        f"--scheduler={scheduler}",
        "--port=0",
        f"--profile={profile_path}",
        f"--max_batch={args.max_batch}",
        f"--kv_pages={args.kv_pages}",
        f"--max_prompt_len={args.max_prompt_len}",
        f"--max_output_len={args.max_output_len}",
        f"--max_inflight={args.max_inflight}",
        f"--seed={args.seed}",
        *args.server_args.split(),
    ]
    env = dict(os.environ)  # with this process's JAX_COMPILATION_CACHE_DIR
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    deadline = time.monotonic() + args.startup_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"on (http://[\d.]+:\d+)", line)
            if m:
                return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server for {scheduler} did not start; see {log_path}")


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_run(url: str, s: serve.ServeSettings, rate: float, tokenizer, card) -> dict:
    trace = serve_trace.trace_for(s, rate, tokenizer)
    prompts, caps = load.requests_for(s, trace, tokenizer, card)
    rep = client.replay(url, card["id"], trace, prompts, caps, details=True)
    return load.summarize(rep, s)


def spread(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{np.mean(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--schedulers", default="fcfs,vllm,skip_join_mlfq")
    p.add_argument("--workload", default="sharegpt_synth")
    p.add_argument("--rate", type=float, default=8.0)
    p.add_argument("--num_requests", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sweep", default="2,4,8,16,32", help="HTTP rates for the P99 TTFT sweep")
    p.add_argument("--p99_ttft_target", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=0.25)
    p.add_argument("--max_batch", type=int, default=8)
    p.add_argument("--kv_pages", type=int, default=256)
    p.add_argument("--max_prompt_len", type=int, default=128)
    p.add_argument("--max_output_len", type=int, default=128)
    p.add_argument("--max_inflight", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup_s", type=float, default=900.0)
    p.add_argument("--server_args", default="", help="more flags for experiments.server")
    p.add_argument("--out", default="runs/bench_http")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # one compilation cache for this process and the servers: a server compiles nothing new
    cache = os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", os.path.abspath(os.path.join(args.out, "jax_cache"))
    )
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    schedulers = args.schedulers.split(",")
    sweep = [float(r) for r in args.sweep.split(",") if r]  # empty: no sweep
    s = serve.ServeSettings(
        schedulers=schedulers,
        workload=args.workload,
        rates=[args.rate] * args.rounds,
        num_requests=args.num_requests,
        max_batch=args.max_batch,
        kv_pages=args.kv_pages,
        scale=args.scale,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
        seed=args.seed,
    )

    # one profile for both sides
    model, tokenizer, source = experiment.resolve_model(None, args.model, args.seed)
    profile_path = os.path.join(args.out, "profile.json")
    serve.profile_runner(ModelRunner(model), s, profile_path)
    results = {
        "args": vars(args),
        "environment": experiment.environment(),
        "model": source,
        "schedulers": {},
    }
    for name in schedulers:
        inproc = []
        proc, url = start_server(
            args, name, profile_path, os.path.join(args.out, f"server_{name}.log")
        )
        try:
            card = client.server_info(url)
            # one unmeasured round first, as the in-process engine's warm-up: the client's
            # connections, and whatever the server's first requests touch first
            http_run(url, s, args.rate, tokenizer, card)
            http = []
            best = []
            sweeps = []
            for i in range(args.rounds):
                # in-process, then over HTTP (the server idles meanwhile): a round's two
                # sides run back to back, under the same load on a shared machine
                print(f"{name}: round {i + 1}/{args.rounds} in-process", flush=True)
                local = serve.run_serve(
                    dataclasses.replace(s, schedulers=[name], rates=[args.rate]),
                    checkpoint=None,
                    preset=args.model,
                    out_dir=os.path.join(args.out, f"in_process_{name}_{i}"),
                    profile_path=profile_path,
                )
                inproc.append(local["runs"][0]["summary"])
                print(f"{name}: round {i + 1}/{args.rounds} over HTTP", flush=True)
                http.append(http_run(url, s, args.rate, tokenizer, card))
                ok_rate, points = None, []
                for rate in sweep:
                    summ = http_run(url, s, rate, tokenizer, card)
                    p99 = summ["p99_ttft"]
                    served = summ["num_finished"] == summ["num_requests"]
                    points.append(
                        {
                            "rate": rate,
                            "p99_ttft": p99,
                            "served_all": served,
                            "throughput_tokens_per_s": summ["throughput_tokens_per_s"],
                        }
                    )
                    if not served or p99 is None or p99 > args.p99_ttft_target:
                        break
                    ok_rate = rate
                best.append(ok_rate)
                sweeps.append(points)
        finally:
            stop_server(proc)
        tput = [
            h["throughput_tokens_per_s"] / i["throughput_tokens_per_s"]
            for h, i in zip(http, inproc)
        ]
        ttft = [i["mean_ttft"] / h["mean_ttft"] for h, i in zip(http, inproc)]
        over = [h["mean_server_overhead_per_token"] * 1e3 for h in http]
        parts = {
            k: float(np.mean([h["mean_ttft_parts"][k] for h in http])) for k in load.TTFT_PARTS
        }
        results["schedulers"][name] = {
            "in_process": inproc,
            "http": http,
            "throughput_ratio": tput,
            "mean_ttft_ratio": ttft,
            "overhead_ms_per_token": over,
            "mean_ttft_parts": parts,
            "mean_ttft_s": {
                "in_process": [i["mean_ttft"] for i in inproc],
                "http": [h["mean_ttft"] for h in http],
            },
            "max_rate_within_target": best,
            "sweeps": sweeps,
        }
        experiment.write_json(os.path.join(args.out, "bench_http.json"), results)

    print(
        f"\nmodel {source}; {args.workload} x{args.num_requests} at {args.rate:g} req/s; "
        f"device {results['environment']['device_kind']}; mean [min, max] over "
        f"{args.rounds} rounds"
    )
    print(
        f"{'scheduler':>16} {'tok/s HTTP/local':>24} {'TTFT local/HTTP':>24} "
        f"{'overhead ms/token':>24} {'max rate p99<=' + str(args.p99_ttft_target) + 's':>26}"
    )
    for name, r in results["schedulers"].items():
        rates = r["max_rate_within_target"]
        rate_txt = "/".join("-" if x is None else f"{x:g}" for x in rates)
        print(
            f"{name:>16} {spread(r['throughput_ratio']):>24} {spread(r['mean_ttft_ratio']):>24} "
            f"{spread(r['overhead_ms_per_token']):>24} {rate_txt:>26}"
        )
    print("\nmean TTFT, ms (mean over rounds): in-process; over HTTP = client send delay + send to")
    print("engine submit + the engine's first token + its delivery to the client")
    for name, r in results["schedulers"].items():
        t, p = r["mean_ttft_s"], r["mean_ttft_parts"]
        print(
            f"{name:>16} {1e3 * np.mean(t['in_process']):7.1f}; {1e3 * np.mean(t['http']):7.1f} = "
            + " + ".join(f"{1e3 * p[k]:.1f}" for k in load.TTFT_PARTS)
        )
    print(f"results: {os.path.join(args.out, 'bench_http.json')}")


if __name__ == "__main__":
    main()
