"""`experiments.load`: the trace `experiments.serve` would replay, replayed over HTTP.

GET /v1/models (vocab, context, scheduler, model) -> for each rate:
    trace = workload.make_workload(...)  and prompts = serve_trace.prompt_ids_for(...)  (the
    same calls, flags and seed as experiments.serve) -> client.replay (conversations'
    turns closed-loop with --closed_loop, as in-process) -> records
    -> metrics.summarize -> DIR/results.json (experiments.serve's schema)
"""

from __future__ import annotations

import os

import httpx
import numpy as np

from jaxserve import experiment, metrics, serve, serve_trace, workload
from jaxserve.server import client
from jaxserve.tokenizer import Tokenizer, load_default, load_tokenizer


class ServerUnreachable(Exception):
    pass


def requests_for(
    s: serve.ServeSettings, trace, tokenizer: Tokenizer | None, card: dict
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Prompt ids (as experiments.serve draws them) and max_tokens of each request."""
    rng = np.random.default_rng(s.seed)
    prompts = {
        r.id: serve_trace.prompt_ids_for(r, tokenizer, card["vocab_size"], rng) for r in trace
    }
    caps = {r.id: turn_cap(s, card, r, len(prompts[r.id])) for r in trace}
    return prompts, caps


def turn_cap(s: serve.ServeSettings, card: dict, r, prompt_len: int) -> int:
    """max_tokens of a request sent with a prompt of `prompt_len` ids (`workload.replay_cap`,
    at most the server's max_tokens)."""
    cap = workload.replay_cap(prompt_len, r.output_len, s.max_output_len, card["max_model_len"])
    return min(card["max_tokens"], cap)


def summarize(replayed: client.Replayed, s: serve.ServeSettings) -> dict:
    summary = metrics.summarize(replayed.records, slo_ttft=s.slo_ttft, slo_tbt=s.slo_tbt)
    o = np.asarray(replayed.overhead)
    if replayed.cached_tokens:  # conversation turns: what the server did not prefill
        summary["reuse_hits"] = sum(1 for n in replayed.cached_tokens.values() if n)
        summary["reused_prompt_tokens"] = sum(replayed.cached_tokens.values())
        summary["prompt_tokens"] = sum(r.prompt_len for r in replayed.records)
    summary.update(
        transport="http",
        wall_seconds=replayed.wall_seconds,
        http_statuses={str(k): v for k, v in sorted(replayed.statuses.items())},
        mean_server_overhead_per_token=float(o.mean()) if o.size else None,
        p50_server_overhead_per_token=float(np.percentile(o, 50)) if o.size else None,
        p99_server_overhead_per_token=float(np.percentile(o, 99)) if o.size else None,
    )
    if replayed.ttft_parts:  # where the TTFT at the client goes (means, seconds)
        m = np.asarray(replayed.ttft_parts).mean(axis=0)
        summary["mean_ttft_parts"] = dict(zip(TTFT_PARTS, map(float, m)))
    return summary


TTFT_PARTS = ("client_send_delay", "send_to_submit", "engine_ttft", "first_token_delivery")


def run_load(
    s: serve.ServeSettings,
    url: str,
    *,
    out_dir: str,
    tokenizer_dir: str | None = None,
    details: bool = True,
    timeout: float = 600.0,
    flag_values: dict | None = None,
    verbose: bool = True,
) -> dict:
    try:
        card = client.server_info(url)
    except (httpx.HTTPError, KeyError, ValueError) as e:
        raise ServerUnreachable(f"no jaxserve server at {url}: {e}") from None
    tokenizer = load_default()
    if tokenizer_dir:
        try:
            tokenizer = load_tokenizer(tokenizer_dir)
        except FileNotFoundError:
            pass
    info = card.get("jaxserve", {})
    results: dict = {
        "flags": flag_values or {},
        "environment": experiment.environment(),
        "server": {"url": url, **card},
        "model": info.get("model", {}),
        "runs": [],
    }
    if verbose:
        print(HEADER)
    for rate in s.rates:
        trace = serve_trace.trace_for(s, rate, tokenizer)
        prompts, caps = requests_for(s, trace, tokenizer, card)
        replayed = client.replay(
            url,
            card["id"],
            trace,
            prompts,
            caps,
            details=details,
            timeout=timeout,
            closed_loop=s.closed_loop,
            turn_cap=lambda r, n: turn_cap(s, card, r, n),
        )
        summary = summarize(replayed, s)
        name = info.get("scheduler", "server")
        results["runs"].append(
            {
                "scheduler": name,
                "prefill": info.get("prefill", "base"),
                "rate": rate,
                "summary": summary,
                "requests": metrics.records_to_json(replayed.records),
            }
        )
        if verbose:
            print(row(name, rate, summary), flush=True)
            if "reused_prompt_tokens" in summary:
                print(
                    f"{'':>19}KV reuse: {summary['reuse_hits']} turns continued from kept KV, "
                    f"{summary['reused_prompt_tokens']} of {summary['prompt_tokens']} prompt "
                    "tokens not prefilled (usage.prompt_tokens_details.cached_tokens)"
                )
    os.makedirs(out_dir, exist_ok=True)
    experiment.write_json(os.path.join(out_dir, "results.json"), results)
    return results


HEADER = (
    f"{'scheduler':>18} {'rate':>6} {'mean JCT':>9} {'p99 JCT':>9} {'mean TTFT':>9} "
    f"{'p99 TTFT':>9} {'p99 TBT':>8} {'tok/s':>8} {'preempt':>7} {'HTTP 200':>8} "
    f"{'overhead':>9}"
)


def row(name: str, rate: float, s: dict) -> str:
    def f(x, w=9):
        return f"{x:{w}.3f}" if x is not None else f"{'-':>{w}}"

    tput = s["throughput_tokens_per_s"]
    over = s["mean_server_overhead_per_token"]
    return (
        f"{name:>18} {rate:6.2f} {f(s['mean_jct'])} {f(s['p99_jct'])} {f(s['mean_ttft'])} "
        f"{f(s['p99_ttft'])} {f(s['p99_tbt'], 8)} {f(tput, 8)} {s['total_preemptions']:7d} "
        f"{s['http_statuses'].get('200', 0):8d} "
        f"{f(over * 1e3 if over is not None else None, 7)}ms"
    )
