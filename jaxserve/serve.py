"""The `experiments.serve` job: every scheduler serves the same trace on the same model.

    model -> profile (prefill table, decode time, swap bandwidth) -> for each rate:
        trace = make_workload(...)             # identical for every scheduler
        for each scheduler: Engine(shared runner).replay(trace) -> timelines -> summary
    -> table on stdout, DIR/results.json, DIR/latency_cdf*.png, DIR/jct_vs_rate.png

Its parts: the traces and their replay (`jaxserve.serve_trace`), what is printed and recorded
of a run (`jaxserve.serve_report`).

The whole input (every rate's trace, the output directory, a saved profile) is checked before
any profiling. One ModelRunner is shared by all engines, and every shape bucket that a request
able to run can reach is compiled before the first measured request, so no scheduler pays for
compilation; a request that can never run (the scheduler rejects it) compiles nothing and
shows in the table's rejected column, with a line per reason, and in results.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from jaxserve import distributed, experiment, metrics, multihost, plots, sharding
from jaxserve.engine import Engine
from jaxserve.errors import InputError
from jaxserve.events import preemption_record, preemption_summary
from jaxserve.models.transformer import Decoder
from jaxserve.profiler import Profile, profile
from jaxserve.runner import CompileCounter, ModelRunner, ServingModel
from jaxserve.sched.settings import SWITCHES, config_from_settings
from jaxserve.serve_report import (
    HEADER,
    detail_lines,
    fmt_s,
    fmt_x,
    rejection_lines,
    table_row,
    to_record,
    ttft_comparison,
)
from jaxserve.serve_trace import prepare_traces, replay_trace, warmup_lengths


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
    mesh: str | None = None  # e.g. "model:2" (None: one device; across processes, all)


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
    return config_from_settings(
        s,
        num_pages=s.kv_pages,
        max_seq_len=max_seq_len,
        decode_seconds=prof.decode_time(s.max_batch),
        swap_bandwidth=prof.swap_bandwidth,
        prefill_tokens_per_s=prof.prefill_tokens_per_s,
        kv_bytes_per_page=kv_page_bytes,
        prefill_table=prof.prefill,
        predict_tokens_per_s=prof.predict_tokens_per_s,
        client_weights=client_weights,
    )


def page_nbytes(config, page_size: int) -> int:
    """Bytes of K and V in one KV page, all layers."""
    return config.kv_bytes_per_token(np.dtype(config.dtype).itemsize) * page_size


def profile_runner(
    runner: ModelRunner, s: ServeSettings, save_to: str | None = None, host_mode: str = "auto"
) -> Profile:
    """The prefill table (powers of two up to max_prompt_len), decode times at 1 and
    max_batch, and swap bandwidth; saved to `save_to` when given. Across processes every
    process measures (the same device calls) and all take process 0's figures: the
    scheduler reads them, so they must be the same everywhere."""
    lengths = [16 << i for i in range(int(math.log2(max(s.max_prompt_len, 16) / 16)) + 1)]
    batches = sorted({1, s.max_batch})
    prof = profile(
        runner,
        s.page_size,
        lengths=lengths,
        batches=batches,
        num_pages=s.kv_pages,
        host_mode=host_mode,
    )
    prof = shared_profile(prof)
    if save_to is not None and distributed.is_main():
        prof.save(save_to)
    return prof


def serving_mesh(s: ServeSettings):
    """The mesh of `s.mesh` (None: one device; across processes, "model" over every
    device), checked for serving across processes; `InputError` naming --mesh."""
    if s.mesh is None and distributed.process_count() == 1:
        return None
    import jax

    try:
        mesh = sharding.make_mesh(s.mesh or {"data": 1, "model": jax.device_count()})
        multihost.check_mesh(mesh)
        if distributed.process_count() > 1:
            distributed.check_mesh(mesh)
    except ValueError as e:
        raise InputError(f"--mesh={s.mesh or ''}: {e}") from None
    return mesh


def serving_host_mode(host_mode: str) -> str:
    """The host tier across processes keeps each process's shard (pinned_host)."""
    if distributed.process_count() == 1:
        return host_mode
    if host_mode == "numpy":
        raise InputError(
            "--host_mode=numpy cannot hold KV sharded across processes: use pinned_host"
        )
    return "pinned_host"


def load_profile(path: str) -> Profile:
    """A saved profile.json; `InputError` naming the flag and the file when it is not one.
    Across processes, process 0's (`shared_profile`)."""
    try:
        return shared_profile(Profile.load(path))
    except InputError as e:
        raise InputError(f"--profile={e}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"--profile={path}: not a profile ({e})") from None


def shared_profile(prof: Profile) -> Profile:
    """Process 0's `prof` in every process (every process calls it at the same point): the
    scheduler reads it, so it must be the same everywhere. `prof` itself on one process."""
    if distributed.process_count() == 1:
        return prof
    return Profile.from_dict(multihost.share_json(dataclasses.asdict(prof)))


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
    # across processes (`jaxserve.multihost`) every process runs every engine on one mesh;
    # process 0 alone prints and writes
    main, replicas = distributed.is_main(), distributed.process_count() > 1
    say = print if main else lambda *a, **k: None
    check_preemption(s.preemption, s.prefill)
    if main:
        experiment.check_output_dir(out_dir)
    prof = load_profile(profile_path) if profile_path else None
    mesh, host_mode = serving_mesh(s), serving_host_mode(s.host_mode)
    model, tokenizer, source = experiment.resolve_model(checkpoint, preset, s.seed)
    model = distributed.to_host(model)  # (placeable on a mesh across processes)
    config = model.config
    traces = prepare_traces(s, tokenizer, config)  # the whole input, checked before any work
    for t in traces:
        if t.never_runs:
            say(
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
        kvp_model = distributed.to_host(load_prefill_model(kvp_dir, model))
    runner = ModelRunner(model, mesh)
    page_bytes = page_nbytes(config, s.page_size)
    profile_start = time.perf_counter()
    if prof is None:
        prof = profile_runner(runner, s, os.path.join(out_dir, "profile.json"), host_mode)
    profile_seconds = time.perf_counter() - profile_start
    # (label suffix, runner, profile): the base prefill, and KV prediction's when asked for
    variants = [("", runner, prof)]
    if kvp_model is not None:
        kvp_runner = ModelRunner(kvp_model, mesh)
        kvp_prof = profile_runner(
            kvp_runner, s, os.path.join(out_dir, "profile_kv_prediction.json"), host_mode
        )
        variants.append(("+kvp", kvp_runner, kvp_prof))
    results: dict = {
        "flags": flag_values or {},
        "environment": experiment.environment(),
        "model": {"source": source, "config": config.to_dict()},
        "profile": dataclasses.asdict(prof),
        "profile_seconds": profile_seconds,  # the base model's profile, compiling included
        "runs": [],
    }
    say(HEADER, flush=True)
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
                    host_mode=host_mode,
                    decode_steps=s.decode_steps,
                    **SWITCHES[s.switch],
                    **({"clock": multihost.ReplicatedClock()} if replicas else {}),
                )
                # only the buckets a request that can run reaches (none when none can)
                turns = any(r.conversation is not None for r in trace)
                warm_start = time.perf_counter()
                warm = engine.warmup(*reach, extend=engine.reuse and turns) if reach else 0
                warm_seconds = time.perf_counter() - warm_start
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
                    warmup_seconds=warm_seconds,
                    compiles_during_run=compiles,
                    reuse_hits=engine.conversations.hits,
                    reused_prompt_tokens=engine.conversations.tokens_reused,
                    prompt_tokens=sum(r.prompt_len for r in records),
                    host_fallbacks=engine.switch.fallbacks,
                    swap_bytes_not_copied=engine.switch.bytes_not_copied,
                    **preemption_summary([engine.timelines[r.id] for r in trace]),
                    **coordination_summary(engine),
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
                say(table_row(label, rate, summary), flush=True)
                for line in rejection_lines(summary) + detail_lines(summary):
                    say(line, flush=True)
        suffix = "" if len(s.rates) == 1 else f"_rate{rate:g}"
        if main:
            plots.latency_cdfs(by_sched, os.path.join(out_dir, f"latency_cdf{suffix}.png"))
    if len(s.rates) > 1 and main:
        plots.jct_vs_rate(sweep, os.path.join(out_dir, "jct_vs_rate.png"))
    if kvp_dir is not None:
        results["kv_prediction"] = {
            "checkpoint": os.path.abspath(kvp_dir),
            "ttft": ttft_comparison(results["runs"]),
        }
        for row in results["kv_prediction"]["ttft"]:
            say(
                f"TTFT with KV prediction, {row['scheduler']} at {row['rate']:g} req/s: mean "
                f"{fmt_s(row['mean_ttft_base'])} -> {fmt_s(row['mean_ttft_kvp'])} s "
                f"({fmt_x(row['mean_ttft_speedup'])}), p99 {fmt_s(row['p99_ttft_base'])} -> "
                f"{fmt_s(row['p99_ttft_kvp'])} s"
            )
    if main:
        experiment.write_json(os.path.join(out_dir, "results.json"), results)
    return results


def coordination_summary(engine: Engine) -> dict:
    """Across processes: the ticks of the run and their cost (`multihost.ClockStats`: process
    0's time posting them, the others' waiting for them); nothing on one process."""
    if not isinstance(engine.clock, multihost.ReplicatedClock):
        return {}
    st = engine.clock.stats
    n = max(st.ticks, 1)
    return {
        "processes": distributed.process_count(),
        "coordination_ticks": st.ticks,
        "coordination_us_per_tick": 1e6 * st.seconds / n,
        "coordination_bytes_per_tick": st.nbytes / n,
    }
