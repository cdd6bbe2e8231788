"""The calibrated simulator against the engine: every policy on traces this CPU can serve.

    python -m scripts.validate_sim --out=runs/validate_sim            # serve, fit, simulate
    python -m scripts.validate_sim --out=runs/validate_sim --reuse    # re-simulate only

1. Profile the engine's model (`jaxserve.profiler.profile`: prefill by length, decode by
   batch x context x steps per call, swaps by size).
2. `--rounds` rounds, each of which serves a calibration trace (its own seed, not one of
   the validation traces) with every policy, then every validation trace with every policy
   in turn (`experiments.serve`'s replay: same scheduler config, same request caps,
   emulated EOS at the trace length). A round's calibration gives each policy's host
   seconds per iteration and one device-time scale for every policy (the profile times
   each call alone, the engine runs them back to back next to its host work), so a machine
   whose speed drifts between rounds is simulated at the round's speed. The scale is the
   engine's seconds over the cost model's for the calibration's own device calls
   (`--time_scale=calls`); fitting it to the calibration's JCT instead (`jct`) lets a
   queue that grows on a slow stretch of the machine triple the scale's error.
3. Each trace's arrival rate is a utilization of its saturation rate: the requests a second
   the simulator, calibrated on round 0, serves it at when every request arrives at once
   (fcfs). So a trace loads a slower or faster machine, or another model, as much.
4. Each served run is simulated with its round's calibration, with the same scheduler
   config and the engine's timing (one step ahead, multi-step chunks, host cost). Each
   figure of a cell, engine and simulated, is its median over the rounds; the errors of the
   simulator's mean JCT, P99 JCT and mean TTFT are printed with the engine's spread over its
   rounds beside them, and everything goes to DIR/validate.json (the engine's records to
   DIR/engine.json, which `--reuse` reads instead of serving again).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time

from jaxserve import metrics, serve_report, serve_trace
from jaxserve.sched.policies import POLICIES
from jaxserve.sim import Timing, fit_profile
from jaxserve.sim.run import simulate_trace

# name -> (what it stresses, ServeSettings overrides; "utilization" sets the rate)
TRACES = {
    "load": ("0.7 of saturation, default lengths", {"utilization": 0.7}),
    "tail": ("0.5 of saturation, heavy output tail (sigma 2)", {"utilization": 0.5,
                                                               "output_sigma": 2.0}),
    "memory": ("0.6 of saturation, long requests, memory pressure", {"utilization": 0.6,
                                                                     "scale": 0.6}),
}  # fmt: skip
CALIBRATION = ("calibration", {"utilization": 0.6, "seed": 100})
METRICS = ("mean_jct", "p99_jct", "mean_ttft")
BASE = {
    "workload": "sharegpt_synth",
    "max_batch": 8,
    "kv_pages": 96,
    "page_size": 16,
    "scale": 0.25,
    "max_prompt_len": 128,
    "max_output_len": 128,
}


def settings(args, overrides: dict, rate: float = 1.0):
    from jaxserve.serve import ServeSettings

    kw = dict(BASE, num_requests=args.num_requests, seed=args.seed, schedulers=args.policies)
    kw |= {k: v for k, v in overrides.items() if k != "utilization"}
    return ServeSettings(**(kw | {"rates": [rate]}))


def saturation_rate(trace, sc, cost, timing: Timing, max_output_len: int) -> float:
    """Requests a second the simulator serves `trace`'s requests at (fcfs) when all of them
    arrive at once: the rate a utilization is a fraction of."""
    from jaxserve.workload import TraceRequest

    reqs = [
        TraceRequest(r.id, 0.0, len(trace.prompts[r.id]), min(r.output_len, trace.caps[r.id]))
        for r in trace.requests
        if r.id not in trace.never_runs
    ]
    records, _ = simulate_trace("fcfs", reqs, sc, cost, timing, max_output_len)
    return len(records) / max(r.finish_time for r in records)


def median_summary(summaries: list[dict]) -> dict:
    """Each validated figure (and the iteration count) at its median over the rounds, with
    its spread: (max - min) / median."""
    import statistics

    out = {}
    for k in (*METRICS, "iterations"):
        xs = [x[k] for x in summaries]
        out[k] = statistics.median(xs)
        out[k + "_spread"] = (max(xs) - min(xs)) / out[k] if out[k] else 0.0
    return out


@contextlib.contextmanager
def logged_flights(engine_cls):
    """Record every device call an engine makes while the block runs: [prefill lengths,
    decode contexts, steps, swapped pages, seconds from the previous read to its read].
    The engine's methods are wrapped for the block only (the engine is not changed)."""
    log: list = []
    dispatch, read = engine_cls._dispatch, engine_cls._read

    def logged_dispatch(self, plan, swapped_out):
        shape = (
            [r.context_len for r in plan.prefill],
            [r.context_len for r in plan.decode],
            plan.swap_in_pages + plan.swap_out_pages,
        )
        flight = dispatch(self, plan, swapped_out)
        flight.shape = shape
        return flight

    def logged_read(self, flight):
        last = self._last_read
        events = read(self, flight)
        prefill, decode, pages = flight.shape
        log.append(
            [prefill, decode, flight.steps, pages, self._last_read - max(last, flight.dispatched)]
        )
        return events

    engine_cls._dispatch, engine_cls._read = logged_dispatch, logged_read
    try:
        yield log
    finally:
        engine_cls._dispatch, engine_cls._read = dispatch, read


def calibration_flights(engine: dict, k: int | None = None) -> list:
    """Every policy's device calls in round k's calibration (in every round's: None); the
    rounds served so far may be fewer than the run's (round 0's scale sets the traces'
    rates before round 1 runs). Records written before the calls were kept by round hold
    one list of each policy's calls: it is cut into rounds where the run's first call
    recurs."""
    out = []
    for name, runs in engine["calibration"]["flights"].items():
        if runs and runs[0] and isinstance(runs[0][-1], (int, float)):  # one list of calls
            starts = [i for i, f in enumerate(runs) if f[:3] == runs[0][:3]] + [len(runs)]
            runs = [runs[a:b] for a, b in zip(starts, starts[1:])]
        if k is not None and k >= len(runs):
            raise ValueError(f"{name}: no calibration calls of round {k} ({len(runs)} kept)")
        out += [f for j, calls in enumerate(runs) if k is None or j == k for f in calls]
    return out


def call_time_scale(flights: list, cost) -> float:
    """The engine's seconds over the cost model's (unscaled) for the same device calls:
    [prefill lengths, decode contexts, steps, swapped pages, seconds] each."""
    measured = sum(f[4] for f in flights)
    predicted = sum(
        cost.prefill_time(pre) + cost.decode_time(dec, steps) + cost.swap_time(pages)
        for pre, dec, steps, pages, _ in flights
    )
    if predicted <= 0:
        raise ValueError("no device calls to fit the time scale on")
    return measured / predicted


def round_time_scale(mode: str, engine: dict, cost, timing: Timing, prof, k: int) -> float:
    """Round k's device-time scale: from its calibration's calls (`calls`), fitted to its
    calibration's JCT and TTFT (`jct`), or none."""
    if mode == "calls":
        return call_time_scale(calibration_flights(engine, k), cost)
    if mode == "jct":
        return fit_time_scale(engine, cost, timing, prof, k)
    return 1.0


def flight_profile(engine: dict, prof: dict) -> dict:
    """A profile made of the engine's own calls on the calibration trace (read to read, so
    host work and its contention with the device are inside): the median time of each
    decode bucket (batch, width, steps) seen at least 3 times, and of each single-prompt
    prefill bucket; swaps and everything else from the profiler's profile."""
    import statistics

    from jaxserve.sim.cost import pow2

    ps = int(prof.get("page_size", 16))
    decode, prefill = {}, {}
    for pre, dec, steps, pages, seconds in calibration_flights(engine):
        if pages:
            continue
        if dec and not pre:
            width = pow2(-(-(max(dec) + steps - 1) // ps)) * ps
            decode.setdefault((pow2(len(dec)), width, steps), []).append(seconds)
        elif len(pre) == 1 and not dec:
            prefill.setdefault(pow2(pre[0], 16), []).append(seconds)
    grid = [(*k, statistics.median(v)) for k, v in sorted(decode.items()) if len(v) >= 3]
    table = [(n, statistics.median(v)) for n, v in sorted(prefill.items()) if len(v) >= 3]
    return prof | {"decode_grid": grid, "prefill": table or prof["prefill"], "slot_update": 0.0}


def serve_all(args, names: list[str]) -> dict:
    """Profile, calibrate the host cost, serve every trace with every policy."""
    import jax

    from jaxserve import cli, experiment, profiler, serve
    from jaxserve.engine import Engine
    from jaxserve.runner import ModelRunner
    from jaxserve.sampling import SamplingParams

    cli.use_compilation_cache()
    model, tokenizer, source = experiment.resolve_model(None, args.model, args.seed)
    runner = ModelRunner(model)
    base = settings(args, {})
    t0 = time.perf_counter()
    lengths = [16 << i for i in range(4)]  # 16 .. 128: every prefill bucket of the traces
    prof = profiler.profile(
        runner,
        base.page_size,
        lengths=lengths,
        batches=[1, 2, 4, 8],
        reps=args.reps,
        contexts=[16, 64, 256],
        steps=[1, 16],
        swap_pages=[1, 4, 16],
    )
    print(f"profiled in {time.perf_counter() - t0:.0f} s", flush=True)
    page_bytes = serve.page_nbytes(model.config, base.page_size)

    def run(s, name: str, trace) -> tuple[list, Engine]:
        sc = serve.scheduler_config(s, prof, model.config.max_seq_len, page_bytes)
        engine = Engine(model, name, sc, tokenizer, runner=runner, decode_steps=s.decode_steps)
        reach = serve_trace.warmup_lengths(trace, model.config.max_seq_len)
        if reach is not None:
            engine.warmup(*reach)

        def submitter(r):
            cap = trace.caps[r.id]
            params = SamplingParams(max_new_tokens=cap, seed=0)

            def submit(arrival: float) -> str:
                return engine.submit(
                    trace.prompts[r.id],
                    params,
                    request_id=r.id,
                    arrival=arrival,
                    output_len=r.output_len,
                    stop_at_output_len=True,
                )

            return submit

        engine.replay([(r.arrival, submitter(r)) for r in trace.requests])
        return [serve_report.to_record(engine.timelines[r.id]) for r in trace.requests], engine

    prof.host_per_iteration = 0.0
    prof_path = os.path.join(args.out, "profile.json")
    prof.save(prof_path)
    cost = fit_profile(json.load(open(prof_path)), page_bytes)
    timing = Timing(host=0.0, serial_host=args.serial_host)

    def at_utilization(overrides: dict):
        """The trace of these settings at its utilization of the saturation rate."""
        s = settings(args, overrides)
        (trace,) = serve_trace.prepare_traces(s, tokenizer, model.config)
        sc = serve.scheduler_config(s, prof, model.config.max_seq_len, page_bytes)
        sat = saturation_rate(trace, sc, cost, timing, s.max_output_len)
        s = settings(args, overrides, overrides["utilization"] * sat)
        (trace,) = serve_trace.prepare_traces(s, tokenizer, model.config)
        return s, trace, sat

    calib, ctrace, sat = at_utilization(CALIBRATION[1])
    print(f"calibration trace: {calib.rates[0]:.1f} req/s (saturation {sat:.1f})", flush=True)
    host = {name: [] for name in args.policies}  # policy -> seconds per iteration, by round
    calibration = {name: [] for name in args.policies}
    flights = {name: [] for name in args.policies}
    out = {
        "model": source,
        "device": str(jax.devices()[0].device_kind),
        "page_bytes": page_bytes,
        "max_seq_len": model.config.max_seq_len,
        "rounds": args.rounds,
        "host": host,
        "calibration": {
            "settings": dataclasses.asdict(calib),
            "runs": calibration,  # policy -> one list of records per round
            "flights": flights,
        },
        "traces": {},
    }
    traces, rounds = {}, {}
    for k in range(args.rounds):  # each round: the calibration, then every trace
        for name in args.policies:
            with logged_flights(Engine) as log:
                records, engine = run(calib, name, ctrace)
            flights[name].append(log)
            calibration[name].append(metrics.records_to_json(records))
            host[name].append(profiler.host_seconds(engine))
            print(f"round {k} calibration {name}: host {host[name][-1] * 1e3:.3f} ms/iteration")
        if k == 0:  # the validation traces' rates, from the simulator calibrated on round 0
            scale = round_time_scale(args.time_scale, out, cost, timing, prof, 0)
            cost = dataclasses.replace(cost, time_scale=scale)
            timing = dataclasses.replace(timing, host=round_host(out, 0))
            for tname in names:
                s, trace, sat = at_utilization(TRACES[tname][1])
                print(f"trace {tname}: {s.rates[0]:.1f} req/s (saturation {sat:.1f})")
                traces[tname] = (s, trace)
                out["traces"][tname] = {
                    "settings": dataclasses.asdict(s),
                    "saturation": sat,
                    "runs": {},
                }
        for tname, (s, trace) in traces.items():
            for name in args.policies:  # the policies take turns within each round
                records, engine = run(s, name, trace)
                summary = metrics.summarize(records)
                summary["iterations"] = engine.iterations
                rounds.setdefault((tname, name), []).append(summary)
                if k == 0:  # every round serves the same requests at the same arrivals
                    out["traces"][tname]["runs"][name] = {
                        "requests": metrics.records_to_json(records)
                    }
                print(
                    f"round {k} {tname:>7} {name:>15}: mean JCT {summary['mean_jct']:.4f} s",
                    flush=True,
                )
    for (tname, name), summaries in rounds.items():
        run_ = out["traces"][tname]["runs"][name]
        run_["summary"] = median_summary(summaries)
        run_["rounds"] = [{k: x[k] for k in (*METRICS, "iterations")} for x in summaries]
    prof.host_per_iteration = sum(map(sum, host.values())) / sum(map(len, host.values()))
    prof.save(prof_path)
    return out


def round_host(engine: dict, k: int) -> float:
    """Host seconds per iteration in round k's calibration, averaged over the policies."""
    hosts = [v[k] for v in engine["host"].values()]
    return sum(hosts) / len(hosts)


def _sim_run(name, run_requests, s, sc, cost, timing, host):
    """Simulate one served run's trace (arrivals and lengths from its records)."""
    from jaxserve.workload import TraceRequest

    recs = metrics.records_from_json(run_requests)
    t0 = min(r.arrival for r in recs)
    trace = [TraceRequest(r.id, r.arrival - t0, r.prompt_len, r.output_len) for r in recs]
    return simulate_trace(
        name, trace, sc, cost, dataclasses.replace(timing, host=host), s.max_output_len
    )


def fit_time_scale(engine: dict, cost, timing: Timing, prof, k: int) -> float:
    """The device-time scale that best matches round k's calibration runs' mean JCT and
    mean TTFT over every policy (least squares in log ratio): a grid of 9% steps from 0.5 to
    4, then 1% steps around its best."""
    import math

    from jaxserve.serve import ServeSettings, scheduler_config

    cal = engine["calibration"]
    s = ServeSettings(**cal["settings"])
    sc = scheduler_config(s, prof, engine["max_seq_len"], engine["page_bytes"])
    engine_runs = {  # name -> (records, summary, host) of round k
        name: (rounds[k], metrics.summarize(metrics.records_from_json(rounds[k])),
               engine["host"][name][k])
        for name, rounds in cal["runs"].items()
    }  # fmt: skip

    def error(scale: float) -> float:
        c = dataclasses.replace(cost, time_scale=scale)
        err = 0.0
        for name, (reqs, eng, host) in engine_runs.items():
            sim = metrics.summarize(_sim_run(name, reqs, s, sc, c, timing, host)[0])
            err += sum(math.log(sim[m] / eng[m]) ** 2 for m in ("mean_jct", "mean_ttft"))
        return err

    coarse = min((error(x), x) for x in (0.5 * 8 ** (i / 24) for i in range(25)))[1]
    return min((error(x), x) for x in (coarse * 1.01**i for i in range(-5, 6)))[1]


def simulate_all(args, engine: dict, timing: Timing) -> dict:
    """Simulate every served run once per round, calibrated on that round (its device-time
    scale and each policy's host cost), and compare the simulated figures' medians over the
    rounds with the engine's."""
    import statistics

    from jaxserve.profiler import Profile
    from jaxserve.serve import ServeSettings, scheduler_config

    prof_path = os.path.join(args.out, "profile.json")
    prof = Profile.load(prof_path)
    measured = json.load(open(prof_path))
    if args.calibration == "engine":  # the engine's own calls; host work is inside them
        base = fit_profile(flight_profile(engine, measured), engine["page_bytes"])
    else:
        base = fit_profile(measured, engine["page_bytes"])
    sims, scales = {}, []
    for k in range(engine["rounds"]):
        cost = base
        if args.calibration == "profile":
            scale = round_time_scale(args.time_scale, engine, base, timing, prof, k)
            cost = dataclasses.replace(cost, time_scale=scale)
        scales.append(cost.time_scale)
        for tname, entry in engine["traces"].items():
            s = ServeSettings(**entry["settings"])
            sc = scheduler_config(s, prof, engine["max_seq_len"], engine["page_bytes"])
            for name, run in entry["runs"].items():
                host = 0.0 if args.calibration == "engine" else engine["host"][name][k]
                records, results = _sim_run(name, run["requests"], s, sc, cost, timing, host)
                summary = metrics.summarize(records) | {"iterations": results[0].iterations}
                sims.setdefault((tname, name), []).append(summary)
    print("device time scale fitted on each round's calibration: " + ", ".join(
        f"{x:.2f}" for x in scales))  # fmt: skip
    rows = {}
    for (tname, name), summaries in sims.items():
        sim = {k: statistics.median(x[k] for x in summaries) for k in (*METRICS, "iterations")}
        eng = engine["traces"][tname]["runs"][name]["summary"]
        rows[(tname, name)] = {
            k: (eng[k], sim[k], sim[k] / eng[k] - 1, eng.get(k + "_spread")) for k in METRICS
        } | {"iterations": (eng["iterations"], sim["iterations"], None, None)}
    return {"scales": scales, "timing": dataclasses.asdict(timing), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/validate_sim")
    p.add_argument("--model", default="small")
    p.add_argument("--traces", default=",".join(TRACES))
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--num_requests", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=7, help="profiler repetitions per point")
    p.add_argument("--rounds", type=int, default=3, help="engine runs of each cell (median)")
    p.add_argument("--reuse", action="store_true", help="re-simulate the saved engine runs")
    p.add_argument(
        "--calibration",
        choices=["profile", "engine"],
        default="profile",
        help="cost tables from the profiler, or from the engine's calls on the calibration trace",
    )
    p.add_argument(
        "--time_scale",
        choices=["calls", "jct", "none"],
        default="calls",
        help="each round's device-time scale: the engine's seconds over the cost model's for "
        "the calibration's calls, fitted to the calibration's JCT, or none (profile as is)",
    )
    p.add_argument("--serial_host", action="store_true", help="host work delays the device")
    args = p.parse_args()
    args.policies = args.policies.split(",")
    names = args.traces.split(",")
    unknown = sorted(set(names) - set(TRACES)) + sorted(set(args.policies) - set(POLICIES))
    if unknown:
        p.error(f"unknown traces or policies {unknown}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "engine.json")
    if args.reuse:
        engine = json.load(open(path))
    else:
        engine = serve_all(args, names)
        with open(path, "w") as f:
            json.dump(engine, f)
    prof = json.load(open(os.path.join(args.out, "profile.json")))
    timing = Timing(host=prof["host_per_iteration"] or 0.0, serial_host=args.serial_host)
    val = simulate_all(args, engine, timing)
    print(f"\n{engine['model']} on {engine['device']}; engine (median of its rounds) and")
    print("simulated seconds, error = simulated / engine - 1, and the engine's spread over")
    print("its rounds ((max - min) / median); then device calls, engine and simulated")
    head = ("trace", "policy", "mean JCT", "P99 JCT", "mean TTFT", "calls")
    print("{:>7} {:>15} {:>27} {:>27} {:>27} {:>11}".format(*head))
    worst = dict.fromkeys(METRICS, 0.0)
    for (tname, name), row in val["rows"].items():
        cells = []
        for k in METRICS:
            e, s, err, spread = row[k]
            worst[k] = max(worst[k], abs(err))
            cells.append(f"{e:7.4f} {s:7.4f} {err:+5.0%} ({spread or 0:4.0%})")
        it = row["iterations"]
        print(f"{tname:>7} {name:>15} " + " ".join(f"{c:>27}" for c in cells), it[0], it[1])
    print("worst |error|: " + ", ".join(f"{k} {v:.1%}" for k, v in worst.items()))
    within = {
        k: sum(abs(row[k][2]) <= lim for row in val["rows"].values())
        for k, lim in zip(METRICS, (0.10, 0.15, 0.15))
    }
    print(
        f"within 10% / 15% / 15%: {within['mean_jct']}, {within['p99_jct']}, "
        f"{within['mean_ttft']} of {len(val['rows'])}"
    )
    val["rows"] = [{"trace": t, "policy": n, **row} for (t, n), row in val["rows"].items()]
    val["worst"] = worst
    with open(os.path.join(args.out, "validate.json"), "w") as f:
        json.dump(val, f, indent=1)


if __name__ == "__main__":
    main()
