"""Whole simulated experiments: every scheduler on the same trace, at every rate.

    settings + cost model -> for each rate:
        trace = make_workload(...)                      # identical for every scheduler
        for each scheduler: simulate(Scheduler(config), requests(trace), cost, timing)
    -> summaries in `experiments.serve`'s schema (`metrics.summarize`), results.json, plots

The scheduler config is derived as the engine derives it from its profile: q0 from the cost
of one decode iteration at max_batch, the skip-join prefill table from the cost of one
prompt at powers of two, swap bandwidth and prefill throughput likewise. Requests are
replayed as `experiments.serve` replays them: they ask for `max_output_len` tokens (their
trace length if longer) and end at their trace length.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

from jaxserve import metrics, workload
from jaxserve.sched import Scheduler, SchedulerConfig
from jaxserve.sched.plan import Plan
from jaxserve.sched.request import Request
from jaxserve.sched.settings import config_from_settings
from jaxserve.sim.loop import SimResult, Timing, simulate
from jaxserve.sim.switch import Switch, SwitchState, switch_for
from jaxserve.workload import replay_cap

__all__ = [
    "SimSettings",
    "plan_seconds",
    "replay_cap",
    "requests_from_trace",
    "run_rates",
    "scheduler_config",
    "simulate_trace",
]


@dataclasses.dataclass
class SimSettings:
    schedulers: Sequence[str]
    workload: str = "sharegpt_synth"
    rates: Sequence[float] = (4.0,)
    num_requests: int = 256
    seed: int = 0
    arrival: str = "poisson"
    cv: float = 1.0
    scale: float = 1.0
    output_sigma: float | None = None  # lognormal sigma of synthetic outputs (None: default)
    max_prompt_len: int = 1024
    max_output_len: int = 1024
    max_batch: int = 16
    page_size: int = 16
    kv_pages: int | None = None  # None: what the cost model's memory holds
    preemption: str = "swap"
    host_pages: int | None = None  # None: 4x the device pool
    q0: float | None = None  # None: q0_iterations decode iterations at max_batch
    q0_iterations: float = 8.0
    num_queues: int = 8
    quantum_charge: str = "own"
    promote_every: int = 1000
    starve_s: float = 3.0
    reserve_pages: int = 0
    prefetch: int = 2
    input_cost: float = 1.0  # fair policies (vtc, fair_priority): charge per prompt token
    output_cost: float = 2.0  # ... and per generated token
    rerank_every: int = 8  # fair_priority: iterations between re-rankings
    rerank_margin: float = 1.0  # fair_priority: hysteresis, re-rank periods of service
    closed_loop: bool = True  # a conversation's next turn waits for the previous one to end
    replicas: int = 1  # data-parallel copies; requests (whole conversations) dealt round robin
    switch: str | None = None  # FastSwitch's mechanisms, a key of SWITCHES (`sim.switch`);
    # None: swaps priced by the cost model alone, no reuse


def requests_from_trace(
    trace: Sequence[workload.TraceRequest],
    max_output_len: int,
    max_seq_len: int,
    closed_loop: bool = True,
) -> tuple[list[Request], dict[str, tuple[str, float]]]:
    """Scheduler requests for a trace, and the turn links of its conversations: a later turn
    is released its recorded gap after the previous turn finishes (closed loop; open loop:
    no links, every turn arrives at its trace time)."""
    reqs, after, last = [], {}, {}
    for t in trace:
        reqs.append(
            Request(
                id=t.id,
                arrival=t.arrival,
                prompt_len=t.prompt_len,
                output_len=t.output_len,
                client=t.client,
                max_new_tokens=replay_cap(t.prompt_len, t.output_len, max_output_len, max_seq_len),
            )
        )
        if t.conversation is not None and closed_loop:
            prev = last.get(t.conversation)
            if prev is not None and t.turn > 0:
                after[t.id] = (prev.id, max(0.0, t.arrival - prev.arrival))
            last[t.conversation] = t
    return reqs, after


def conversations(trace: Sequence[workload.TraceRequest]) -> dict[str, str]:
    """Request id -> its conversation, for the requests of the trace that have one."""
    return {t.id: t.conversation for t in trace if t.conversation is not None}


def plan_seconds(cost, prefill: Sequence[int] = (), decode: Sequence[int] = ()) -> float:
    """Device seconds the cost model gives a plan of these prompts and decode contexts."""
    plan = Plan()
    for i, n in enumerate(prefill):
        plan.prefill.append(Request(f"p{i}", 0.0, n, 1))
    for i, c in enumerate(decode):
        r = Request(f"d{i}", 0.0, max(1, c - 1), 1 << 30)
        r.num_generated = c - r.prompt_len
        plan.decode.append(r)
    return cost.iteration_time(plan, 1)


def scheduler_config(
    s: SimSettings,
    cost,
    max_seq_len: int,
    kv_pages: int,
    kv_bytes_per_page: int,
    client_weights: dict[str, float] | None = None,
) -> SchedulerConfig:
    """The engine's config (`jaxserve.sched.settings.config_from_settings`, which
    `jaxserve.serve.scheduler_config` calls too) with the cost model in place of the
    engine's profile: one decode iteration at max_batch, the prefill table at powers of two,
    swap bandwidth; `client_weights`: the trace's (`workload.client_weights`)."""
    decode = plan_seconds(cost, decode=[max(2, s.max_prompt_len // 2)] * s.max_batch)
    top = max(16, min(s.max_prompt_len, max_seq_len))
    lengths = [16 << i for i in range(int(math.log2(top / 16)) + 1)]
    table = [(n, plan_seconds(cost, prefill=[n])) for n in lengths]
    swap = cost.iteration_time(_swap_plan(), 1)
    return config_from_settings(
        s,
        num_pages=kv_pages,
        max_seq_len=max_seq_len,
        decode_seconds=decode,
        swap_bandwidth=kv_bytes_per_page / swap if swap > 0 else 1e30,
        prefill_tokens_per_s=table[-1][0] / table[-1][1],
        kv_bytes_per_page=kv_bytes_per_page,
        prefill_table=table,
        client_weights=client_weights,
    )


def _swap_plan() -> Plan:
    """A plan that swaps out one page and computes nothing."""
    plan = Plan()
    plan.swap_out.append((Request("s", 0.0, 1, 1), [1]))
    return plan


def simulate_trace(
    policy: str,
    trace: Sequence[workload.TraceRequest],
    config: SchedulerConfig,
    cost,
    timing: Timing,
    max_output_len: int,
    replicas: int = 1,
    fast: bool = True,
    closed_loop: bool = True,
    switch: Switch | None = None,
) -> tuple[list[metrics.RequestRecord], list[SimResult]]:
    """One scheduler over a trace: records in trace order (and each replica's result).
    Requests are dealt to replicas round robin, a conversation's turns all to the replica of
    its first. `fast`: `simulate`'s steady-plan fast path (same result); `closed_loop`: a
    later turn waits for the previous one (`requests_from_trace`); `switch`: FastSwitch's
    mechanisms priced per copy (`sim.switch`), each replica with its own host."""
    results = []
    records: dict[str, metrics.RequestRecord] = {}
    for part in deal(trace, replicas):
        reqs, after = requests_from_trace(part, max_output_len, config.max_seq_len, closed_loop)
        state = None
        if switch is not None:
            state = SwitchState(switch, cost, config.page_size, config.kv_bytes_per_page,
                                config.host_pages, conversations(part))  # fmt: skip
        res = simulate(
            Scheduler(config, policy), reqs, cost, timing=timing, after=after, fast=fast,
            switch=state,
        )  # fmt: skip
        results.append(res)
        records |= res.records
    return [records[t.id] for t in trace], results


def deal(
    trace: Sequence[workload.TraceRequest], replicas: int
) -> list[list[workload.TraceRequest]]:
    """The trace split over `replicas` round robin by request, except that a later turn of a
    conversation goes where its first turn went (it reuses nothing elsewhere)."""
    parts: list[list[workload.TraceRequest]] = [[] for _ in range(replicas)]
    home: dict[str, int] = {}
    k = 0
    for t in trace:
        if t.conversation is not None and t.conversation in home:
            parts[home[t.conversation]].append(t)
            continue
        if t.conversation is not None:
            home[t.conversation] = k % replicas
        parts[k % replicas].append(t)
        k += 1
    return parts


def make_trace(s: SimSettings, rate: float) -> list[workload.TraceRequest]:
    return workload.workload_for(s, rate)


def run_rates(
    s: SimSettings,
    cost,
    timing: Timing,
    max_seq_len: int,
    kv_pages: int,
    kv_bytes_per_page: int,
    on_run: Callable[[str, float, dict], None] | None = None,
    switch: Switch | None = None,
) -> list[dict]:
    """Every scheduler at every rate: `experiments.serve`'s run entries (scheduler, prefill,
    rate, summary, requests). `on_run(scheduler, rate, summary)` after each. The scheduler
    config carries each trace's client weights, as the engine's does."""
    runs = []
    for rate in s.rates:
        trace = make_trace(s, rate)
        if not trace:
            raise workload.WorkloadError(f"--workload={s.workload}: no requests in it")
        weights = workload.client_weights(trace)
        config = scheduler_config(s, cost, max_seq_len, kv_pages, kv_bytes_per_page, weights)
        for name in s.schedulers:
            records, results = simulate_trace(
                name, trace, config, cost, timing, s.max_output_len, s.replicas,
                closed_loop=s.closed_loop, switch=switch,
            )  # fmt: skip
            summary = metrics.summarize(records)
            summary.update(
                iterations=sum(r.iterations for r in results),
                busy_seconds=sum(r.device_busy for r in results),
                simulated_seconds=max(r.time for r in results),
            )
            if switch is not None:
                for key in results[0].switch:
                    summary[key] = sum(r.switch[key] for r in results)
            runs.append(
                {
                    "scheduler": name,
                    "prefill": "base",
                    "rate": rate,
                    "summary": summary,
                    "requests": metrics.records_to_json(records),
                }
            )
            if on_run is not None:
                on_run(name, rate, summary)
    return runs


def write_plots(runs: list[dict], out_dir: str) -> list[str]:
    """jct_vs_rate.png (mean and p99 JCT against rate, one line per scheduler) and
    tail_vs_rate.png (p99 TTFT and TBT)."""
    from jaxserve import plots

    sweep: dict[str, list] = {}
    for r in runs:
        sweep.setdefault(r["scheduler"], []).append((r["rate"], r["summary"]))
    return [
        str(plots.jct_vs_rate(sweep, os.path.join(out_dir, "jct_vs_rate.png"))),
        str(plots.tail_vs_rate(sweep, os.path.join(out_dir, "tail_vs_rate.png"))),
    ]


HEADER = (
    f"{'scheduler':>16} {'rate':>7} {'mean JCT':>9} {'p99 JCT':>9} {'mean TTFT':>9} "
    f"{'p99 TTFT':>9} {'p99 TBT':>8} {'tok/s':>9} {'preempt':>7} {'rejected':>8}"
)


def table_row(name: str, rate: float, s: dict) -> str:
    def f(x, w=9, p=3):
        return f"{x:{w}.{p}f}" if x is not None else f"{'-':>{w}}"

    return (
        f"{name:>16} {rate:7.2f} {f(s['mean_jct'])} {f(s['p99_jct'])} {f(s['mean_ttft'])} "
        f"{f(s['p99_ttft'])} {f(s['p99_tbt'], 8, 4)} {f(s['throughput_tokens_per_s'], 9, 1)} "
        f"{s['total_preemptions']:7d} {s['num_rejected']:8d}"
    )


def run_analytical(
    s: SimSettings,
    hardware: str,
    model: str,
    num_devices: int,
    tp: int,
    pp: int,
    out_dir: str,
    *,
    microbatches: int | None = None,
    dtype: str = "bfloat16",
    flops_efficiency: float = 1.0,
    bandwidth_efficiency: float = 1.0,
    timing: Timing | None = None,
    flag_values: dict | None = None,
    verbose: bool = True,
) -> dict:
    """Every scheduler at every rate on `num_devices` x `hardware` serving `model` with
    tensor parallelism `tp` and pipeline parallelism `pp` (data parallel over the rest);
    writes out_dir/results.json, out_dir/jct_vs_rate.png and tail_vs_rate.png. `InputError`
    for a setup that cannot run (unknown names, devices not a multiple of tp x pp, a model
    that does not fit)."""
    from jaxserve.errors import InputError
    from jaxserve.sim.analytical import Parallelism, RooflineCost
    from jaxserve.sim.hardware import get_hardware
    from jaxserve.sim.shapes import get_model
    from jaxserve.utils import write_json

    try:
        hw, shape = get_hardware(hardware), get_model(model)
        par = Parallelism(tp, pp, microbatches)
        if num_devices < 1 or num_devices % par.devices:
            raise ValueError(
                f"--num_devices={num_devices} is not a multiple of tp x pp = {par.devices}"
            )
        cost = RooflineCost(
            hw, shape, par, dtype=dtype, page_size=s.page_size,
            flops_efficiency=flops_efficiency, bandwidth_efficiency=bandwidth_efficiency,
        )  # fmt: skip
        kv_pages = s.kv_pages if s.kv_pages is not None else cost.kv_pages()
        switch = None
        if s.switch is not None:  # a per-layer cache: K and V of each of a device's layers
            switch = switch_for(s.switch, 2 * cost.layers_per_stage, hw.host_copy_latency)
    except ValueError as e:
        raise InputError(str(e)) from None
    s = dataclasses.replace(s, replicas=num_devices // par.devices)
    timing = timing or Timing(overlap=False, decode_steps=1)
    max_seq_len = shape.max_seq_len
    if verbose:
        print(
            f"{shape.name} on {num_devices} x {hw.name} (tp={tp}, pp={pp}, "
            f"{s.replicas} replica(s)): {kv_pages - 1} KV pages of {s.page_size} tokens each",
            flush=True,
        )
        print(HEADER, flush=True)

    def show(name, rate, summary):
        if verbose:
            print(table_row(name, rate, summary), flush=True)

    runs = run_rates(s, cost, timing, max_seq_len, kv_pages, cost.kv_bytes_per_page, show, switch)
    results = {
        "flags": flag_values or {},
        "simulator": {
            "cost": "analytical",
            "hardware": dataclasses.asdict(hw),
            "model": dataclasses.asdict(shape),
            "parallelism": {**dataclasses.asdict(par), "replicas": s.replicas},
            "kv_pages": kv_pages,
            "kv_bytes_per_page": cost.kv_bytes_per_page,
            "timing": dataclasses.asdict(timing),
            "settings": dataclasses.asdict(s),
        },
        "runs": runs,
    }
    write_plots(runs, out_dir)
    write_json(os.path.join(out_dir, "results.json"), results)
    return results
