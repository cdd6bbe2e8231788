"""The `experiments.serve` job: every scheduler serves the same trace on the same model.

    model -> profile (prefill table, decode time, swap bandwidth) -> for each rate:
        trace = make_workload(...)             # identical for every scheduler
        for each scheduler: Engine(shared runner).replay(trace) -> timelines -> summary
    -> table on stdout, DIR/results.json, DIR/latency_cdf*.png, DIR/jct_vs_rate.png

The whole input (every rate's trace, the output directory, a saved profile) is checked before
any profiling. One ModelRunner is shared by all engines, and every shape bucket that a request
able to run can reach is compiled before the first measured request, so no scheduler pays for
compilation; a request that can never run (the scheduler rejects it) compiles nothing and
shows in the table's rejected column, with a line per reason, and in results.json.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from jaxserve import experiment, metrics, plots, workload
from jaxserve.engine import Engine, Timeline
from jaxserve.errors import InputError
from jaxserve.events import preemption_record, preemption_summary
from jaxserve.models.transformer import Decoder
from jaxserve.profiler import Profile, profile
from jaxserve.runner import CompileCounter, ModelRunner, ServingModel
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig, reject_reason


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


def prompt_ids_for(req: workload.TraceRequest, tokenizer, vocab: int, rng) -> list[int]:
    if req.prompt_ids is not None:
        return list(req.prompt_ids)
    if req.prompt is not None and tokenizer is not None:
        return tokenizer.encode(req.prompt)[: max(1, req.prompt_len)] or [0]
    return [int(t) for t in rng.integers(3, vocab, req.prompt_len)]


@dataclasses.dataclass
class ServeSettings:
    schedulers: Sequence[str]
    workload: str
    rates: Sequence[float]
    num_requests: int
    max_batch: int = 8
    kv_pages: int = 512
    page_size: int = 16
    preemption: str = "swap"
    seed: int = 0
    arrival: str = "poisson"
    cv: float = 1.0
    scale: float = 0.25
    output_sigma: float | None = None  # lognormal sigma of synthetic output lengths (None: the
    # distribution's own; larger is heavier-tailed)
    max_prompt_len: int = 256
    max_output_len: int = 256
    q0: float | None = None  # seconds; default: q0_iterations decode iterations at max_batch
    q0_iterations: float = 8.0
    num_queues: int = 8
    quantum_charge: str = "own"
    promote_every: int = 1000
    starve_s: float = 3.0
    reserve_pages: int = 0
    prefetch: int = 2
    host_pages: int | None = None  # default: 4x the device pool
    host_mode: str = "auto"
    decode_steps: int = 16  # most decode steps in one device call (a power of two)
    switch: str = "all"  # context-switch mechanisms, a key of SWITCHES
    slo_ttft: float | None = None
    slo_tbt: float | None = None
    prefill: str = "base"  # or "kv_prediction:CKPT": every scheduler also runs with KVP prefill
    input_cost: float = 1.0  # fair policies and service metrics: charge per prompt token
    output_cost: float = 2.0  # ... and per generated token
    rerank_every: int = 8  # fair_priority: iterations between re-rankings
    rerank_margin: float = 1.0  # fair_priority: hysteresis, re-rank periods of service
    closed_loop: bool = True  # a conversation's next turn waits for the previous one to end


# FastSwitch's ablation: --switch -> (host tier transfer, wait for every swap)
SWITCHES = {
    "baseline": {"swap_transfer": "pages", "sync_swaps": True, "reuse": False},
    "block_groups": {"swap_transfer": "groups", "sync_swaps": True, "reuse": False},
    "async": {"swap_transfer": "groups", "sync_swaps": False, "reuse": False},
    "reuse": {"swap_transfer": "groups", "sync_swaps": False, "reuse": True},
    "all": {"swap_transfer": "gather", "sync_swaps": False, "reuse": True},
}


def parse_prefill(spec: str) -> str | None:
    """'base' -> None; 'kv_prediction:DIR' -> DIR. Raises ValueError naming the problem."""
    if spec == "base":
        return None
    kind, sep, path = spec.partition(":")
    if kind != "kv_prediction" or not sep or not path:
        raise ValueError(f"--prefill: {spec!r} is neither 'base' nor 'kv_prediction:CKPT'")
    if not os.path.isdir(path):
        raise ValueError(f"--prefill: KV prediction checkpoint {path!r} does not exist")
    return path


def check_preemption(preemption: str, prefill: str) -> None:
    """--preemption=predict re-predicts dropped requests' caches: only with KV prediction."""
    if preemption == "predict" and prefill == "base":
        raise InputError(
            "--preemption=predict re-predicts a dropped request's cache with KV prediction's "
            "auxiliary model: it needs --prefill=kv_prediction:CKPT"
        )


def scheduler_config(
    s: ServeSettings,
    prof: Profile,
    max_seq_len: int,
    kv_page_bytes: int,
    client_weights: dict[str, float] | None = None,
):
    """The scheduler's knobs for one run. A profile of a model that predicts its cache
    (KV prediction) brings the cost of re-predicting; on the base prefill, `predict` runs as
    `recompute` (the base cannot predict)."""
    q0 = s.q0 if s.q0 is not None else s.q0_iterations * prof.decode_time(s.max_batch)
    predict = prof.predict_tokens_per_s
    preemption = "recompute" if s.preemption == "predict" and predict is None else s.preemption
    return SchedulerConfig(
        max_batch=s.max_batch,
        num_pages=s.kv_pages,
        page_size=s.page_size,
        max_seq_len=max_seq_len,
        preemption=preemption,
        predict_tokens_per_s=predict,
        host_pages=s.host_pages if s.host_pages is not None else 4 * s.kv_pages,
        swap_bandwidth=prof.swap_bandwidth,
        prefill_tokens_per_s=prof.prefill_tokens_per_s,
        kv_bytes_per_page=kv_page_bytes,
        q0=q0,
        num_queues=s.num_queues,
        quantum_charge=s.quantum_charge,
        promote_every=s.promote_every,
        starve_s=s.starve_s,
        reserve_pages=s.reserve_pages,
        prefetch=s.prefetch,
        prefill_table=list(prof.prefill),
        input_cost=s.input_cost,
        output_cost=s.output_cost,
        client_weights=client_weights or None,
        rerank_every=s.rerank_every,
        rerank_margin=s.rerank_margin,
    )


def page_nbytes(config, page_size: int) -> int:
    """Bytes of K and V in one KV page, all layers."""
    return config.kv_bytes_per_token(np.dtype(config.dtype).itemsize) * page_size


def profile_runner(runner: ModelRunner, s: ServeSettings, save_to: str | None = None) -> Profile:
    """The prefill table (powers of two up to max_prompt_len), decode times at 1 and
    max_batch, and swap bandwidth; saved to `save_to` when given."""
    lengths = [16 << i for i in range(int(math.log2(max(s.max_prompt_len, 16) / 16)) + 1)]
    prof = profile(runner, s.page_size, lengths=lengths, batches=sorted({1, s.max_batch}))
    if save_to is not None:
        prof.save(save_to)
    return prof


@dataclasses.dataclass
class PreparedTrace:
    """One rate's trace, read and checked before any model work."""

    rate: float
    requests: list[workload.TraceRequest]
    prompts: dict[str, list[int]]  # request id -> prompt token ids
    caps: dict[str, int]  # request id -> max_new_tokens it is replayed with
    never_runs: dict[str, str]  # request id -> why the scheduler will reject it
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # client -> weight


def never_runs_reason(
    prompt_len: int, cap: int, max_seq_len: int, kv_pages: int, page_size: int
) -> str | None:
    """Why a request can never run (the scheduler will reject it), or None: the scheduler's
    own rule, evaluated before the run so warm-up can skip it."""
    config = SchedulerConfig(
        max_batch=1, num_pages=kv_pages, page_size=page_size, max_seq_len=max_seq_len
    )
    return reject_reason(config, prompt_len, cap)


def trace_for(s: ServeSettings, rate: float, tokenizer):
    """The trace of one rate: the same arguments and seed for in-process and HTTP replays."""
    return workload.workload_for(s, rate, tokenizer.encode if tokenizer is not None else None)


def prepare_traces(s: ServeSettings, tokenizer, config) -> list[PreparedTrace]:
    """Every rate's trace, read and validated in full (`WorkloadError` naming the file and the
    request: empty, malformed, token ids outside the vocabulary) before any profiling."""
    out = []
    for rate in s.rates:
        trace = trace_for(s, rate, tokenizer)
        if not trace:
            raise workload.WorkloadError(f"--workload={s.workload}: no requests in it")
        rng = np.random.default_rng(s.seed)
        prompts, caps, never = {}, {}, {}
        for r in trace:
            ids = prompt_ids_for(r, tokenizer, config.vocab_size, rng)
            bad = [t for t in ids if not 0 <= t < config.vocab_size]
            if bad:
                raise workload.WorkloadError(
                    f"--workload={s.workload}: request {r.id!r} has token ids {bad[:3]} outside "
                    f"the model's vocabulary of {config.vocab_size}"
                )
            prompts[r.id] = ids
            caps[r.id] = replay_cap(len(ids), r.output_len, s.max_output_len, config.max_seq_len)
            why = never_runs_reason(
                len(ids), caps[r.id], config.max_seq_len, s.kv_pages, s.page_size
            )
            if why is not None:
                never[r.id] = why
        weights = workload.client_weights(trace)
        out.append(PreparedTrace(rate, trace, prompts, caps, never, weights))
    return out


def warmup_lengths(t: PreparedTrace, max_seq_len: int) -> tuple[int, int] | None:
    """(max_prompt, max_context) over the requests that can run: what warm-up must cover.
    None when no request can run (nothing to compile)."""
    ok = [r.id for r in t.requests if r.id not in t.never_runs]
    if not ok:
        return None
    max_prompt = max(len(t.prompts[i]) for i in ok)
    max_context = min(max_seq_len, max(len(t.prompts[i]) + t.caps[i] for i in ok))
    return max_prompt, max_context


def load_profile(path: str) -> Profile:
    """A saved profile.json; `InputError` naming the flag and the file when it is not one."""
    try:
        return Profile.load(path)
    except InputError as e:
        raise InputError(f"--profile={e}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"--profile={path}: not a profile ({e})") from None


def run_serve(
    settings: ServeSettings,
    *,
    checkpoint: str | None,
    preset: str | None,
    out_dir: str,
    flag_values: dict | None = None,
    profile_path: str | None = None,
    load_prefill_model: Callable[[str, Decoder], ServingModel] | None = None,
) -> dict:
    """Serve every rate's trace with every scheduler (module doc). `load_prefill_model(dir,
    base)` builds the model of `settings.prefill`'s checkpoint (KV prediction: the entry point
    passes `kvpred.io.load_kvp`; jaxserve does not import kvpred)."""
    s = settings
    check_preemption(s.preemption, s.prefill)
    experiment.check_output_dir(out_dir)
    prof = load_profile(profile_path) if profile_path else None
    model, tokenizer, source = experiment.resolve_model(checkpoint, preset, s.seed)
    config = model.config
    traces = prepare_traces(s, tokenizer, config)  # the whole input, checked before any work
    for t in traces:
        if t.never_runs:
            print(
                f"note: at rate {t.rate:g}, {len(t.never_runs)} of {len(t.requests)} requests "
                f"can never run and will be rejected "
                f"(first: {next(iter(t.never_runs.values()))})",
                flush=True,
            )
    kvp_dir = parse_prefill(s.prefill)
    kvp_model = None
    if kvp_dir is not None:
        if load_prefill_model is None:
            raise InputError(f"--prefill={s.prefill}: no loader for this prefill was given")
        kvp_model = load_prefill_model(kvp_dir, model)
    runner = ModelRunner(model)
    page_bytes = page_nbytes(config, s.page_size)
    if prof is None:
        prof = profile_runner(runner, s, os.path.join(out_dir, "profile.json"))
    # (label suffix, runner, profile): the base prefill, and KV prediction's when asked for
    variants = [("", runner, prof)]
    if kvp_model is not None:
        kvp_runner = ModelRunner(kvp_model)
        kvp_prof = profile_runner(
            kvp_runner, s, os.path.join(out_dir, "profile_kv_prediction.json")
        )
        variants.append(("+kvp", kvp_runner, kvp_prof))
    results: dict = {
        "flags": flag_values or {},
        "environment": experiment.environment(),
        "model": {"source": source, "config": config.to_dict()},
        "profile": dataclasses.asdict(prof),
        "runs": [],
    }
    print(HEADER, flush=True)
    labels = [name + suffix for name in s.schedulers for suffix, _, _ in variants]
    sweep: dict[str, list] = {label: [] for label in labels}
    for t in traces:
        rate, trace = t.rate, t.requests
        reach = warmup_lengths(t, config.max_seq_len)
        by_sched = {}
        for name in s.schedulers:
            for tag, run_runner, run_prof in variants:
                label = name + tag
                sc = scheduler_config(s, run_prof, config.max_seq_len, page_bytes, t.weights)
                engine = Engine(
                    model,
                    name,
                    sc,
                    tokenizer,
                    runner=run_runner,
                    host_mode=s.host_mode,
                    decode_steps=s.decode_steps,
                    **SWITCHES[s.switch],
                )
                # only the buckets a request that can run reaches (none when none can)
                turns = any(r.conversation is not None for r in trace)
                warm = engine.warmup(*reach, extend=engine.reuse and turns) if reach else 0
                compiles_before = CompileCounter.count()
                start = time.perf_counter()
                replay_trace(engine, t, s.max_output_len, closed_loop=s.closed_loop)
                wall = time.perf_counter() - start
                records = [to_record(engine.timelines[r.id]) for r in trace]
                summary = metrics.summarize(
                    records,
                    slo_ttft=s.slo_ttft,
                    slo_tbt=s.slo_tbt,
                    client_weights=t.weights,
                    input_cost=s.input_cost,
                    output_cost=s.output_cost,
                )
                compiles = CompileCounter.count() - compiles_before
                summary.update(
                    wall_seconds=wall,
                    iterations=engine.iterations,
                    busy_seconds=engine.busy_time,
                    swap_seconds=engine.swap_time,
                    warmup_compiles=warm,
                    compiles_during_run=compiles,
                    reuse_hits=engine.conversations.hits,
                    reused_prompt_tokens=engine.conversations.tokens_reused,
                    prompt_tokens=sum(r.prompt_len for r in records),
                    host_fallbacks=engine.switch.fallbacks,
                    swap_bytes_not_copied=engine.switch.bytes_not_copied,
                    **preemption_summary([engine.timelines[r.id] for r in trace]),
                )
                # each request's preempt and resume times, beside its record (in trace order)
                switches = [
                    {"id": r.id, **preemption_record(engine.timelines[r.id])} for r in trace
                ]
                by_sched[label] = records
                sweep[label].append((rate, summary))
                results["runs"].append(
                    {
                        "scheduler": name,
                        "prefill": "kv_prediction" if tag else "base",
                        "rate": rate,
                        "summary": summary,
                        "requests": metrics.records_to_json(records),
                        "preemptions": switches,
                    }
                )
                print(_row(label, rate, summary), flush=True)
                for line in rejection_lines(summary) + detail_lines(summary):
                    print(line, flush=True)
        suffix = "" if len(s.rates) == 1 else f"_rate{rate:g}"
        plots.latency_cdfs(by_sched, os.path.join(out_dir, f"latency_cdf{suffix}.png"))
    if len(s.rates) > 1:
        plots.jct_vs_rate(sweep, os.path.join(out_dir, "jct_vs_rate.png"))
    if kvp_dir is not None:
        results["kv_prediction"] = {
            "checkpoint": os.path.abspath(kvp_dir),
            "ttft": ttft_comparison(results["runs"]),
        }
        for row in results["kv_prediction"]["ttft"]:
            print(
                f"TTFT with KV prediction, {row['scheduler']} at {row['rate']:g} req/s: mean "
                f"{_s(row['mean_ttft_base'])} -> {_s(row['mean_ttft_kvp'])} s "
                f"({_x(row['mean_ttft_speedup'])}), p99 {_s(row['p99_ttft_base'])} -> "
                f"{_s(row['p99_ttft_kvp'])} s"
            )
    experiment.write_json(os.path.join(out_dir, "results.json"), results)
    return results


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _x(x: float | None) -> str:
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
        return _s(s.get(key))

    lines = [
        f"{pad} TTFT p95/p99/p99.9 {f('p95_ttft')}/{f('p99_ttft')}/{f('p99.9_ttft')} s, "
        f"TBT {f('p95_tbt')}/{f('p99_tbt')}/{f('p99.9_tbt')} s, stall {f('mean_stall_time')} "
        f"s/request ({_pct(s.get('p99_stall_share'))} of p99 JCT), "
        f"{s['total_swapped_bytes'] / 1e6:.2f} MB device<->host"
    ]
    wait, cost = s.get("preempt_to_resume"), s.get("resume_cost")
    if wait and wait["n"]:
        lines.append(
            f"{pad} preempt -> resume mean/p99 {_s(wait['mean'])}/{_s(wait['p99'])} s over "
            f"{wait['n']} resumes, resume cost mean/p99 {_s(cost['mean'])}/{_s(cost['p99'])} s"
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
                f"(weighted {c['weighted_service']:.0f}), TTFT mean {_s(c['mean_ttft'])} "
                f"p99 {_s(c['p99_ttft'])} s"
            )
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def replay_trace(
    engine: Engine, t: PreparedTrace, max_output_len: int, *, closed_loop: bool = True
) -> None:
    """Serve `t` on `engine` in real time, as `Engine.replay` does, with conversations in a
    closed loop: a later turn is released when the previous turn of its conversation has
    ended plus the think time (their arrival gap, `workload.next_turn_release`), and its
    prompt is that turn's prompt and actual output followed by the new message (the last
    prompt_len - previous prompt_len - previous output_len tokens of its trace prompt, at
    least one). Everything else (and every turn with `closed_loop=False`) arrives at its
    trace time with its trace prompt."""
    by_turn = {(r.conversation, r.turn): r for r in t.requests if r.conversation is not None}
    trace = {r.id: r for r in t.requests}
    order = {r.id: k for k, r in enumerate(t.requests)}
    prev_of: dict[str, str] = {}  # a later turn -> the turn it waits for
    heap: list[tuple[float, int, str]] = []  # (release, trace order, id)
    for k, r in enumerate(t.requests):
        prev = by_turn.get((r.conversation, r.turn - 1)) if r.conversation is not None else None
        if closed_loop and prev is not None and r.turn > 0:
            prev_of[r.id] = prev.id
        else:
            heap.append((r.arrival, k, r.id))
    heapq.heapify(heap)
    waiting = {p: r for r, p in prev_of.items()}  # previous turn -> next turn, not released
    prompts: dict[str, list[int]] = {}  # id -> the prompt it was submitted with
    base = engine.now()

    def submit(rid: str, at: float) -> None:
        r, ids, pid = trace[rid], t.prompts[rid], prev_of.get(rid)
        if pid is not None:
            p = trace[pid]
            new = max(1, r.prompt_len - p.prompt_len - p.output_len)
            ids = prompts[pid] + engine.output(pid) + ids[-new:]
        prompts[rid] = ids
        _submitter(engine, r, ids, max_output_len)(base + at)

    while heap or waiting or engine.has_work:
        for pid in [p for p in waiting if p in prompts]:
            done = engine.timelines[pid].finish_time
            if done is not None:
                nxt = trace[waiting.pop(pid)]
                release = workload.next_turn_release(trace[pid], done - base, nxt)
                heapq.heappush(heap, (release, order[nxt.id], nxt.id))
        now = engine.now() - base
        while heap and heap[0][0] <= now:
            at, _, rid = heapq.heappop(heap)
            submit(rid, at)
        engine.next_arrival = base + heap[0][0] if heap else None
        if engine.has_work:
            engine.step()
        elif heap:
            time.sleep(max(0.0, heap[0][0] - (engine.now() - base)))
        elif not any(p in prompts for p in waiting):
            raise AssertionError(f"turns wait on turns never submitted: {sorted(waiting)}")
    engine.next_arrival = None


def replay_cap(prompt_len: int, output_len: int, max_output_len: int, max_seq_len: int) -> int:
    """max_new_tokens of a replayed request: it asks for up to `max_output_len` tokens (its
    trace length if longer), as a client sets max_tokens, and ends at its trace length as if
    the model emitted EOS. Policies plan with this cap; only the srpt oracle reads the length."""
    return max(1, min(max_seq_len - prompt_len, max(max_output_len, output_len)))


def _submitter(engine: Engine, req: workload.TraceRequest, ids: list[int], max_output_len: int):
    cap = replay_cap(len(ids), req.output_len, max_output_len, engine.config.max_seq_len)
    params = SamplingParams(max_new_tokens=cap, seed=0)

    def submit(arrival: float) -> str:
        return engine.submit(
            ids,
            params,
            request_id=req.id,
            arrival=arrival,
            output_len=req.output_len,
            client=req.client,
            stop_at_output_len=True,
            conversation=req.conversation,
            priority=req.priority,
        )

    return submit


HEADER = (
    f"{'scheduler':>18} {'rate':>6} {'mean JCT':>9} {'p99 JCT':>9} {'mean TTFT':>9} "
    f"{'p99 TTFT':>9} {'p99 TBT':>8} {'tok/s':>8} {'preempt':>7} {'rejected':>8} "
    f"{'compiles':>8}"
)


def _row(name: str, rate: float, s: dict) -> str:
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
