"""What `experiments.serve` prints and records of a run: each request's record, the table's
rows, the lines under a row (rejections, tails, stalls, preemptions, reuse) and the TTFT
comparison of KV-prediction prefill against the base's.
"""

from __future__ import annotations

from jaxserve import metrics
from jaxserve.engine import Timeline


def to_record(tl: Timeline) -> metrics.RequestRecord:
    if tl.rejected:
        state = "rejected"
    elif tl.finish_time is not None and tl.finish_reason != "cancelled":
        state = "finished"
    else:
        state = "cancelled" if tl.finish_reason == "cancelled" else "unfinished"
    return metrics.RequestRecord(
        id=tl.id,
        arrival=tl.arrival,
        prompt_len=tl.prompt_len,
        output_len=len(tl.token_times),
        first_token_time=tl.token_times[0] if tl.token_times else None,
        finish_time=tl.finish_time if state == "finished" else None,
        token_times=list(tl.token_times),
        preemptions=tl.preemptions,
        swapped_bytes=tl.swapped_bytes,
        swap_time=tl.swap_time,
        stall_time=tl.stall_time,
        client=tl.client,
        output_ids=list(tl.output_ids),
        state=state,
        finish_reason=tl.finish_reason,
    )


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def fmt_x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def rejection_lines(summary: dict, limit: int = 5) -> list[str]:
    """One indented line per rejection reason (the most frequent first), for the table."""
    reasons = sorted(summary.get("rejected_reasons", {}).items(), key=lambda kv: -kv[1])
    lines = [f"{'':>18} rejected {n}: {why}" for why, n in reasons[:limit]]
    if len(reasons) > limit:
        lines.append(f"{'':>18} ... and {len(reasons) - limit} more reasons (results.json)")
    return lines


def ttft_comparison(runs: list[dict]) -> list[dict]:
    """Per (scheduler, rate): mean and p99 TTFT with the base prefill and with KV prediction."""
    base = {(r["scheduler"], r["rate"]): r["summary"] for r in runs if r["prefill"] == "base"}
    out = []
    for r in runs:
        if r["prefill"] != "kv_prediction":
            continue
        b, k = base[(r["scheduler"], r["rate"])], r["summary"]
        speedup = (
            b["mean_ttft"] / k["mean_ttft"]
            if b["mean_ttft"] is not None and k["mean_ttft"]
            else None
        )
        out.append(
            {
                "scheduler": r["scheduler"],
                "rate": r["rate"],
                "mean_ttft_base": b["mean_ttft"],
                "mean_ttft_kvp": k["mean_ttft"],
                "mean_ttft_speedup": speedup,
                "p99_ttft_base": b["p99_ttft"],
                "p99_ttft_kvp": k["p99_ttft"],
            }
        )
    return out


def detail_lines(summary: dict) -> list[str]:
    """Under a table row: tail latencies, stalls and bytes moved; with several clients, each
    client's service and TTFT, Jain's index and the largest service gap."""
    s, pad = summary, f"{'':>18}"

    def f(key: str) -> str:
        return fmt_s(s.get(key))

    lines = [
        f"{pad} TTFT p95/p99/p99.9 {f('p95_ttft')}/{f('p99_ttft')}/{f('p99.9_ttft')} s, "
        f"TBT {f('p95_tbt')}/{f('p99_tbt')}/{f('p99.9_tbt')} s, stall {f('mean_stall_time')} "
        f"s/request ({fmt_pct(s.get('p99_stall_share'))} of p99 JCT), "
        f"{s['total_swapped_bytes'] / 1e6:.2f} MB device<->host"
    ]
    wait, cost = s.get("preempt_to_resume"), s.get("resume_cost")
    if wait and wait["n"]:
        lines.append(
            f"{pad} preempt -> resume mean/p99 {fmt_s(wait['mean'])}/{fmt_s(wait['p99'])} s "
            f"over {wait['n']} resumes, resume cost mean/p99 {fmt_s(cost['mean'])}/"
            f"{fmt_s(cost['p99'])} s"
        )
    if s.get("reuse_hits"):
        lines.append(
            f"{pad} KV reuse: {s['reuse_hits']} turns continued from kept KV, "
            f"{s['reused_prompt_tokens']} of {s['prompt_tokens']} prompt tokens not prefilled"
        )
    clients = s.get("clients", {})
    if len(clients) > 1:
        gap = s["max_service_gap"]
        between = " vs ".join(gap["clients"]) if gap["clients"] else "-"
        lines.append(
            f"{pad} Jain {s['jain_fairness']:.3f}, largest service gap between backlogged "
            f"clients {gap['gap']:.1f} ({between})"
        )
        for name, c in clients.items():
            lines.append(
                f"{pad}   {name:>10} w={c['weight']:g}: service {c['service']:.0f} "
                f"(weighted {c['weighted_service']:.0f}), TTFT mean {fmt_s(c['mean_ttft'])} "
                f"p99 {fmt_s(c['p99_ttft'])} s"
            )
    return lines


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


HEADER = (
    f"{'scheduler':>18} {'rate':>6} {'mean JCT':>9} {'p99 JCT':>9} {'mean TTFT':>9} "
    f"{'p99 TTFT':>9} {'p99 TBT':>8} {'tok/s':>8} {'preempt':>7} {'rejected':>8} "
    f"{'compiles':>8}"
)


def table_row(name: str, rate: float, s: dict) -> str:
    def f(x):
        return f"{x:9.3f}" if x is not None else f"{'-':>9}"

    t = s["throughput_tokens_per_s"]  # None when nothing finished (all rejected)
    tput = f"{t:8.1f}" if t is not None else f"{'-':>8}"

    return (
        f"{name:>18} {rate:6.2f} {f(s['mean_jct'])} {f(s['p99_jct'])} {f(s['mean_ttft'])} "
        f"{f(s['p99_ttft'])} {f(s['p99_tbt'])[1:]} {tput} "
        f"{s['total_preemptions']:7d} {s['num_rejected']:8d} "
        f"{s['compiles_during_run']:8d}"
    )
