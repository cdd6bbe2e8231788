"""Per-request timelines -> latency, throughput, SLO and fairness summaries.

    RequestRecord (arrival, token emission times, preemptions, swaps)  ->  summarize(...)  ->
    {mean/p50/p90/p95/p99/p99.9 of JCT, TTFT, TBT; normalized latency; throughput; SLO
     attainment; preemption, stall and swap totals; per-client service and TTFT, Jain's
     fairness index, the largest service gap between backlogged clients}

Definitions (all times in seconds):
  JCT   = finish_time - arrival.
  TTFT  = first_token_time - arrival (first_token_time, else token_times[0]).
  TBT   = the gaps between consecutive token_times of one request, pooled over requests.
  normalized latency = mean over requests of JCT / output_len (s/token).
  Latency statistics use finished requests only (state == "finished"); a request that never
  finished shows up in num_rejected / num_unfinished and fails its SLO instead.
  Percentiles: numpy's default "linear" method: the p-th percentile of sorted x[0..n-1] sits
  at index (n - 1) * p / 100, interpolated linearly between its neighbours.
  Empty statistics are None, so a summary is plain JSON.

Fairness (the VTC paper's measures). A request's service is input_cost * prompt_len, received
when its first token is emitted (the prefill), plus output_cost per generated token, received
at its emission; a client's weighted service divides by its weight. A client is BACKLOGGED
while it has a request that arrived and has not emitted its first token (waiting for
admission; a preempted request is not counted, the records do not say when it was out).
The service gap of clients f and g over an interval [t1, t2) in which both are backlogged is
|(S_f(t2) - S_f(t1)) - (S_g(t2) - S_g(t1))|, S the weighted service received up to a time;
`max_service_gap` is its largest value over every pair and every such interval.

No jax here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99, 99.9)


@dataclasses.dataclass
class RequestRecord:
    id: str
    arrival: float  # when the request arrived (s)
    prompt_len: int  # prompt tokens
    output_len: int  # tokens generated (so far, for an unfinished request)
    first_token_time: float | None = None  # when the first output token was emitted
    finish_time: float | None = None  # when the last output token was emitted
    token_times: list[float] = dataclasses.field(default_factory=list)  # emission of each token
    preemptions: int = 0  # times the request was preempted
    swapped_bytes: int = 0  # KV bytes moved between device and host, both directions
    swap_time: float = 0.0  # seconds spent on this request's swaps
    stall_time: float = 0.0  # seconds the accelerator idled waiting on this request's swaps
    client: str = "default"
    output_ids: list[int] | None = None
    state: str = "finished"  # "finished", "rejected", or anything else for unfinished
    finish_reason: str | None = None  # "stop", "length", "cancelled", "rejected: <why>", ...


def _stats(name: str, values: Sequence[float]) -> dict[str, float | None]:
    """{"mean_<name>", "p50_<name>", ..., "p99.9_<name>"}: numpy mean and linear-interpolation
    percentiles."""
    x = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {f"mean_{name}": float(x.mean()) if x.size else None}
    for p in PERCENTILES:
        out[f"p{p:g}_{name}"] = float(np.percentile(x, p, method="linear")) if x.size else None
    return out


def _finished(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    out = []
    for r in records:
        if r.state == "finished":
            if r.finish_time is None:
                raise ValueError(f"record {r.id!r}: state 'finished' but finish_time is None")
            out.append(r)
    return out


def ttft(r: RequestRecord) -> float | None:
    """First token time - arrival; first_token_time, else token_times[0], else None."""
    first = r.first_token_time
    if first is None and r.token_times:
        first = r.token_times[0]
    return None if first is None else first - r.arrival


def tbts(r: RequestRecord) -> list[float]:
    """Gaps between consecutive output tokens of one request."""
    return np.diff(np.asarray(r.token_times, dtype=np.float64)).tolist()


def jcts(records: Sequence[RequestRecord]) -> list[float]:
    """JCT of each finished request."""
    return [r.finish_time - r.arrival for r in _finished(records)]


def ttfts(records: Sequence[RequestRecord]) -> list[float]:
    """TTFT of each finished request that has a first token."""
    return [t for t in (ttft(r) for r in _finished(records)) if t is not None]


def service(r: RequestRecord) -> int:
    """Tokens of work a request received: prompt + generated, once it produced a token."""
    return r.prompt_len + r.output_len if r.output_len > 0 else 0


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 when all equal, 1/n when one value
    takes everything. All zeros count as equal (1.0); empty input is an error."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("jain_index of no values")
    sq = float(np.sum(x**2))
    return 1.0 if sq == 0 else float(x.sum() ** 2 / (x.size * sq))


def service_events(
    r: RequestRecord, input_cost: float = 1.0, output_cost: float = 1.0
) -> list[tuple[float, float]]:
    """(time, service) a request received: its prompt at the first token, then each token."""
    first = r.first_token_time
    if first is None and r.token_times:
        first = r.token_times[0]
    if first is None:
        return []
    return [(first, input_cost * r.prompt_len)] + [(t, output_cost) for t in r.token_times]


def _backlog(records: Sequence[RequestRecord], end: float) -> list[tuple[float, float]]:
    """Merged [start, stop) intervals in which some record waits for its first token; one
    that never got a token waits until `end` (rejected ones not at all)."""
    spans = []
    for r in records:
        if r.state == "rejected":
            continue
        first = r.first_token_time
        if first is None and r.token_times:
            first = r.token_times[0]
        stop = end if first is None else first
        if stop > r.arrival:
            spans.append((r.arrival, stop))
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def max_service_gap(
    records: Sequence[RequestRecord],
    client_weights: Mapping[str, float] | None = None,
    input_cost: float = 1.0,
    output_cost: float = 1.0,
) -> dict[str, Any]:
    """The largest service gap between two backlogged clients (module docstring):
    {"gap": weighted service, "clients": [f, g] (f got more), "interval": [t1, t2]};
    gap 0.0 and no clients when no two clients were ever backlogged together."""
    weights = client_weights or {}
    by_client: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_client.setdefault(r.client, []).append(r)
    times = [t for r in records for t, _ in service_events(r)] + [r.arrival for r in records]
    end = max(times, default=0.0)
    cum: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # client -> (times, service up to)
    backlog = {}
    for c, rs in by_client.items():
        ev = sorted(e for r in rs for e in service_events(r, input_cost, output_cost))
        t = np.asarray([e[0] for e in ev], dtype=np.float64)
        v = np.cumsum([e[1] for e in ev], dtype=np.float64) / weights.get(c, 1.0)
        cum[c] = (t, v)
        backlog[c] = _backlog(rs, end)

    def served(c: str, at: np.ndarray) -> np.ndarray:
        t, v = cum[c]
        i = np.searchsorted(t, at, side="right")  # events at `at` count as received
        return np.where(i > 0, v[np.maximum(i - 1, 0)], 0.0)

    best: dict[str, Any] = {"gap": 0.0, "clients": [], "interval": []}
    names = sorted(by_client)
    for i, f in enumerate(names):
        for g in names[i + 1 :]:
            for fa, fb in backlog[f]:
                for ga, gb in backlog[g]:
                    a, b = max(fa, ga), min(fb, gb)
                    if a >= b:
                        continue
                    inside = np.concatenate([cum[f][0], cum[g][0]])
                    at = np.unique(np.concatenate([[a], inside[(inside > a) & (inside < b)]]))
                    d = served(f, at) - served(g, at)
                    hi, lo = int(np.argmax(d)), int(np.argmin(d))
                    gap = float(d[hi] - d[lo])
                    if gap > best["gap"]:
                        first, second = (f, g) if hi > lo else (g, f)
                        lo_t, hi_t = sorted((float(at[lo]), float(at[hi])))
                        best = {"gap": gap, "clients": [first, second], "interval": [lo_t, hi_t]}
    return best


def slo_met(r: RequestRecord, slo_ttft: float | None, slo_tbt: float | None) -> bool:
    """A request meets its SLO when it finished, TTFT <= slo_ttft (when given), and every gap
    between its consecutive tokens is <= slo_tbt (when given; vacuous with one token)."""
    if r.state != "finished":
        return False
    if slo_ttft is not None:
        t = ttft(r)
        if t is None or t > slo_ttft:
            return False
    if slo_tbt is not None and any(g > slo_tbt for g in tbts(r)):
        return False
    return True


def summarize(
    records: Sequence[RequestRecord],
    duration: float | None = None,
    slo_ttft: float | None = None,
    slo_tbt: float | None = None,
    client_weights: Mapping[str, float] | None = None,
    input_cost: float = 1.0,
    output_cost: float = 1.0,
) -> dict[str, Any]:
    """Summary of one run (definitions in the module docstring). Keys:

    num_requests, num_finished, num_rejected, num_unfinished (neither finished nor rejected);
    rejected_reasons: {reason: count} of the rejected records (their finish_reason);
    {mean,p50,p90,p95,p99,p99.9}_{jct,ttft,tbt}; mean_normalized_latency (s/token);
    duration (given, else last finish - first arrival), output_tokens (of finished requests),
    throughput_tokens_per_s = output_tokens / duration, throughput_requests_per_s =
    num_finished / duration;
    slo_ttft, slo_tbt (echoed), slo_attainment = fraction of ALL records (rejected and
    unfinished ones fail) meeting both SLOs (`slo_met`), slo_ttft_attainment and
    slo_tbt_attainment for each alone (None when that SLO is not given; slo_attainment is
    None when neither is);
    total_preemptions, total_swapped_bytes, total_swap_time, total_stall_time (all records);
    mean_stall_time: stall seconds per finished request (the time it was ready but waited
    for swaps, as the executor recorded it); p99_stall_share: over the finished requests
    whose JCT is at least the p99 JCT, their stall time / their JCT (None without them);
    clients: {client: {num_requests, num_finished, mean_jct, mean_ttft, p99_ttft,
    service_tokens, service, weighted_service, weight}}, where service_tokens sums `service`
    (prompt + generated tokens) over the client's records, service weighs them by
    input_cost / output_cost and weighted_service divides that by the client's weight
    (client_weights, default 1 each);
    jain_fairness: Jain's index over the clients' weighted_service;
    max_service_gap: `max_service_gap` (gap, clients, interval) in weighted service.
    """
    records = list(records)
    done = _finished(records)
    out: dict[str, Any] = {
        "num_requests": len(records),
        "num_finished": len(done),
        "num_rejected": sum(r.state == "rejected" for r in records),
    }
    out["num_unfinished"] = len(records) - out["num_finished"] - out["num_rejected"]
    reasons: dict[str, int] = {}
    for r in records:
        if r.state == "rejected":
            why = (r.finish_reason or "rejected").removeprefix("rejected").lstrip(": ")
            reasons[why or "no reason given"] = reasons.get(why or "no reason given", 0) + 1
    out["rejected_reasons"] = reasons
    out |= _stats("jct", jcts(done))
    out |= _stats("ttft", ttfts(done))
    out |= _stats("tbt", [g for r in done for g in tbts(r)])
    norm = [(r.finish_time - r.arrival) / r.output_len for r in done if r.output_len > 0]
    out["mean_normalized_latency"] = float(np.mean(norm)) if norm else None

    if duration is None and done:
        duration = max(r.finish_time for r in done) - min(r.arrival for r in records)
    out["duration"] = duration
    out["output_tokens"] = sum(r.output_len for r in done)
    ok = duration is not None and duration > 0
    out["throughput_tokens_per_s"] = out["output_tokens"] / duration if ok else None
    out["throughput_requests_per_s"] = len(done) / duration if ok else None

    out["slo_ttft"], out["slo_tbt"] = slo_ttft, slo_tbt

    def attainment(a: float | None, b: float | None) -> float | None:
        if (a is None and b is None) or not records:
            return None
        return sum(slo_met(r, a, b) for r in records) / len(records)

    out["slo_attainment"] = attainment(slo_ttft, slo_tbt)
    out["slo_ttft_attainment"] = attainment(slo_ttft, None) if slo_ttft is not None else None
    out["slo_tbt_attainment"] = attainment(None, slo_tbt) if slo_tbt is not None else None

    out["total_preemptions"] = sum(r.preemptions for r in records)
    out["total_swapped_bytes"] = sum(r.swapped_bytes for r in records)
    out["total_swap_time"] = float(sum(r.swap_time for r in records))
    out["total_stall_time"] = float(sum(r.stall_time for r in records))
    out["mean_stall_time"] = float(np.mean([r.stall_time for r in done])) if done else None
    out["p99_stall_share"] = None
    if done and out["p99_jct"] is not None:
        tail = [r for r in done if r.finish_time - r.arrival >= out["p99_jct"]]
        total = sum(r.finish_time - r.arrival for r in tail)
        if tail and total > 0:
            out["p99_stall_share"] = float(sum(r.stall_time for r in tail) / total)

    weights = client_weights or {}
    clients: dict[str, dict[str, Any]] = {}
    for name in sorted({r.client for r in records}):
        mine = [r for r in records if r.client == name]
        mine_done = [r for r in mine if r.state == "finished"]
        j, t = jcts(mine_done), ttfts(mine_done)
        cost = sum(v for r in mine for _, v in service_events(r, input_cost, output_cost))
        clients[name] = {
            "num_requests": len(mine),
            "num_finished": len(mine_done),
            "mean_jct": float(np.mean(j)) if j else None,
            "mean_ttft": float(np.mean(t)) if t else None,
            "p99_ttft": float(np.percentile(t, 99, method="linear")) if t else None,
            "service_tokens": sum(service(r) for r in mine),
            "service": float(cost),
            "weighted_service": float(cost / weights.get(name, 1.0)),
            "weight": float(weights.get(name, 1.0)),
        }
    out["clients"] = clients
    out["jain_fairness"] = (
        jain_index([c["weighted_service"] for c in clients.values()]) if clients else None
    )
    out["max_service_gap"] = max_service_gap(records, weights, input_cost, output_cost)
    return out


# ----------------------------------------------------------------------------- JSON

_FIELDS = {f.name: f for f in dataclasses.fields(RequestRecord)}
_REQUIRED = {
    name
    for name, f in _FIELDS.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
}


def records_to_json(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """Records as plain dicts (JSON-serialisable; embed them in an experiment's JSON file)."""
    return [dataclasses.asdict(r) for r in records]


def records_from_json(data: str | Sequence[Mapping[str, Any]]) -> list[RequestRecord]:
    """Inverse of `records_to_json`; also accepts the JSON text of that list."""
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, list):
        raise ValueError(f"expected a list of record objects, got {type(data).__name__}")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise ValueError(f"record {i}: expected an object, got {type(row).__name__}")
        unknown = sorted(set(row) - set(_FIELDS))
        missing = sorted(_REQUIRED - set(row))
        if unknown or missing:
            raise ValueError(f"record {i}: unknown fields {unknown}, missing fields {missing}")
        out.append(RequestRecord(**row))
    return out


# The comparisons the FastServe evaluation is about: (slower, faster) pairs of policies.
JCT_RATIOS = (("fcfs", "skip_join_mlfq"), ("vllm", "skip_join_mlfq"), ("skip_join_mlfq", "srpt"))


def jct_ratios(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{"a/b": {"mean": mean JCT of a / b's, "p99": ...}} for each pair of `JCT_RATIOS` whose
    two policies are in `summaries` (policy -> a `summarize` dict)."""
    out = {}
    for a, b in JCT_RATIOS:
        if a in summaries and b in summaries:
            sa, sb = summaries[a], summaries[b]
            out[f"{a}/{b}"] = {
                k: sa[f"{k}_jct"] / sb[f"{k}_jct"]
                for k in ("mean", "p99")
                if sa.get(f"{k}_jct") is not None and sb.get(f"{k}_jct")
            }
    return out


def ratio_line(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: 'mean JCT: fcfs/skip_join_mlfq 4.06x, ... (p99 JCT: 1.10x, ...)'."""
    ratios = {k: v for k, v in jct_ratios(summaries).items() if "mean" in v}
    if not ratios:
        return ""
    means = ", ".join(f"{k} {v['mean']:.2f}x" for k, v in ratios.items())
    p99 = ", ".join(f"{v['p99']:.2f}x" if "p99" in v else "-" for v in ratios.values())
    return f"mean JCT: {means} (p99 JCT: {p99})"
