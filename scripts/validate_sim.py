"""The calibrated simulator against the engine: every policy on traces this CPU can serve.

    python -m scripts.validate_sim --out=runs/validate_sim            # serve, fit, simulate
    python -m scripts.validate_sim --out=runs/validate_sim --reuse    # re-simulate only

1. Profile the engine's model (`jaxserve.profiler.profile`: prefill by length, decode by
   batch x context x steps per call, swaps by size) and measure its host seconds per
   iteration on a calibration trace (its own seed, not one of the validation traces).
2. Serve each validation trace with every policy on the engine (`experiments.serve`'s
   replay: same scheduler config, same request caps, emulated EOS at the trace length).
3. Fit `CalibratedCost` to the profile, scale its device times to match the calibration
   runs (one factor for every policy: the profile times each call alone, the engine runs
   them back to back next to its host work), and simulate the validation traces with the
   same scheduler config and the engine's timing (one step ahead, multi-step chunks, host
   cost of each policy from the calibration runs).
4. Print the errors of the simulator's mean JCT, P99 JCT and mean TTFT against the engine's
   and write everything to DIR/validate.json (the engine's records to DIR/engine.json, which
   `--reuse` reads instead of serving again).
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

# name -> (what it stresses, ServeSettings overrides)
TRACES = {
    "load": ("high load, default lengths", {"rates": [25.0]}),
    "tail": ("heavy output tail (sigma 2)", {"rates": [40.0], "output_sigma": 2.0}),
    "memory": ("long requests, memory pressure", {"rates": [12.0], "scale": 0.6}),
}
CALIBRATION = ("calibration", {"rates": [30.0], "seed": 100})
BASE = {
    "workload": "sharegpt_synth",
    "max_batch": 8,
    "kv_pages": 96,
    "page_size": 16,
    "scale": 0.25,
    "max_prompt_len": 128,
    "max_output_len": 128,
}


def settings(args, overrides: dict):
    from jaxserve.serve import ServeSettings

    kw = dict(BASE, num_requests=args.num_requests, seed=args.seed, schedulers=args.policies)
    kw["rates"] = [1.0]
    return ServeSettings(**(kw | overrides))


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


def flight_profile(engine: dict, prof: dict) -> dict:
    """A profile made of the engine's own calls on the calibration trace (read to read, so
    host work and its contention with the device are inside): the median time of each
    decode bucket (batch, width, steps) seen at least 3 times, and of each single-prompt
    prefill bucket; swaps and everything else from the profiler's profile."""
    import statistics

    from jaxserve.sim.cost import pow2

    ps = int(prof.get("page_size", 16))
    decode, prefill = {}, {}
    for flights in engine["calibration"]["flights"].values():
        for pre, dec, steps, pages, seconds in flights:
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

    calib = settings(args, CALIBRATION[1])
    (ctrace,) = serve_trace.prepare_traces(calib, tokenizer, model.config)
    host, calibration, flights = {}, {}, {}
    for name in args.policies:
        with logged_flights(Engine) as flights[name]:
            records, engine = run(calib, name, ctrace)
        calibration[name] = metrics.records_to_json(records)
        host[name] = profiler.host_seconds(engine)
        print(f"calibration {name}: host {host[name] * 1e3:.3f} ms/iteration", flush=True)
    prof.host_per_iteration = sum(host.values()) / len(host)
    prof.save(os.path.join(args.out, "profile.json"))
    out = {
        "model": source,
        "device": str(jax.devices()[0].device_kind),
        "page_bytes": page_bytes,
        "max_seq_len": model.config.max_seq_len,
        "host": host,  # policy -> host seconds per iteration on the calibration trace
        "calibration": {
            "settings": dataclasses.asdict(calib),
            "runs": calibration,
            "flights": flights,
        },
        "traces": {},
    }
    for tname in names:
        s = settings(args, TRACES[tname][1])
        (trace,) = serve_trace.prepare_traces(s, tokenizer, model.config)
        entry = {"settings": dataclasses.asdict(s), "runs": {}}
        for name in args.policies:
            records, engine = run(s, name, trace)
            summary = metrics.summarize(records)
            summary["iterations"] = engine.iterations
            entry["runs"][name] = {"summary": summary, "requests": metrics.records_to_json(records)}
            print(f"engine {tname:>7} {name:>15}: mean JCT {summary['mean_jct']:.4f} s", flush=True)
        out["traces"][tname] = entry
    return out


def _sim_run(name, run_requests, s, sc, cost, timing, host):
    """Simulate one served run's trace (arrivals and lengths from its records)."""
    from jaxserve.workload import TraceRequest

    recs = metrics.records_from_json(run_requests)
    t0 = min(r.arrival for r in recs)
    trace = [TraceRequest(r.id, r.arrival - t0, r.prompt_len, r.output_len) for r in recs]
    return simulate_trace(
        name, trace, sc, cost, dataclasses.replace(timing, host=host), s.max_output_len
    )


def fit_time_scale(engine: dict, cost, timing: Timing, prof) -> float:
    """The device-time scale that best matches the calibration runs' mean JCT and mean TTFT
    over every policy (least squares in log ratio over a grid of scales)."""
    import math

    from jaxserve.serve import ServeSettings, scheduler_config

    cal = engine["calibration"]
    s = ServeSettings(**cal["settings"])
    sc = scheduler_config(s, prof, engine["max_seq_len"], engine["page_bytes"])
    best = (math.inf, 1.0)
    for k in range(25):
        scale = 0.5 * 8 ** (k / 24)  # 0.5 .. 4
        c = dataclasses.replace(cost, time_scale=scale)
        err = 0.0
        for name, reqs in cal["runs"].items():
            eng = metrics.summarize(metrics.records_from_json(reqs))
            host = engine["host"][name]
            sim = metrics.summarize(_sim_run(name, reqs, s, sc, c, timing, host)[0])
            err += sum(math.log(sim[m] / eng[m]) ** 2 for m in ("mean_jct", "mean_ttft"))
        best = min(best, (err, scale))
    return best[1]


def simulate_all(args, engine: dict, timing: Timing) -> dict:
    """Simulate every served run with its policy's calibrated host cost."""
    from jaxserve.profiler import Profile
    from jaxserve.serve import ServeSettings, scheduler_config

    prof_path = os.path.join(args.out, "profile.json")
    prof = Profile.load(prof_path)
    measured = json.load(open(prof_path))
    if args.calibration == "engine":  # the engine's own calls; host work is inside them
        cost = fit_profile(flight_profile(engine, measured), engine["page_bytes"])
        timing = dataclasses.replace(timing, host=0.0)
        engine = engine | {"host": {}}
    else:
        cost = fit_profile(measured, engine["page_bytes"])
    if args.calibration == "profile" and not args.no_time_scale and "calibration" in engine:
        cost = dataclasses.replace(cost, time_scale=fit_time_scale(engine, cost, timing, prof))
        print(f"device time scale fitted on the calibration trace: {cost.time_scale:.2f}")
    rows = {}
    for tname, entry in engine["traces"].items():
        s = ServeSettings(**entry["settings"])
        sc = scheduler_config(s, prof, engine["max_seq_len"], engine["page_bytes"])
        for name, run in entry["runs"].items():
            host = engine.get("host", {}).get(name, timing.host)
            sim_records, results = _sim_run(name, run["requests"], s, sc, cost, timing, host)
            sim = metrics.summarize(sim_records)
            eng = run["summary"]
            rows[(tname, name)] = {
                k: (eng[k], sim[k], sim[k] / eng[k] - 1)
                for k in ("mean_jct", "p99_jct", "mean_ttft")
            } | {"iterations": (eng["iterations"], results[0].iterations, None)}
    return {"cost": dataclasses.asdict(cost), "timing": dataclasses.asdict(timing), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/validate_sim")
    p.add_argument("--model", default="tiny")
    p.add_argument("--traces", default=",".join(TRACES))
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--num_requests", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=7, help="profiler repetitions per point")
    p.add_argument("--reuse", action="store_true", help="re-simulate the saved engine runs")
    p.add_argument(
        "--calibration",
        choices=["profile", "engine"],
        default="profile",
        help="cost tables from the profiler, or from the engine's calls on the calibration trace",
    )
    p.add_argument(
        "--no_time_scale", action="store_true", help="use the profile's times as they are"
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
    print(f"\n{engine['model']} on {engine['device']}; errors = simulated / engine - 1")
    head = ("trace", "policy", "mean JCT", "p99 JCT", "mean TTFT", "iterations")
    print("{:>7} {:>15} {:>20} {:>20} {:>20} {:>11}".format(*head))
    worst = {"mean_jct": 0.0, "p99_jct": 0.0, "mean_ttft": 0.0}
    for (tname, name), row in val["rows"].items():
        cells = []
        for k in ("mean_jct", "p99_jct", "mean_ttft"):
            e, s, err = row[k]
            worst[k] = max(worst[k], abs(err))
            cells.append(f"{e:7.4f} {s:7.4f} {err:+5.0%}")
        it = row["iterations"]
        print(f"{tname:>7} {name:>15} " + " ".join(f"{c:>20}" for c in cells), it[0], it[1])
    print("worst |error|: " + ", ".join(f"{k} {v:.1%}" for k, v in worst.items()))
    val["rows"] = [{"trace": t, "policy": n, **row} for (t, n), row in val["rows"].items()]
    val["worst"] = worst
    with open(os.path.join(args.out, "validate.json"), "w") as f:
        json.dump(val, f, indent=1)


if __name__ == "__main__":
    main()
