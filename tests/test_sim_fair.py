"""The simulator's scheduler config is the engine's (one builder,
`jaxserve.sched.settings.config_from_settings`): the fair policies' fields and the trace's
client weights reach it, and change what vtc schedules."""

from __future__ import annotations

import dataclasses

from jaxserve import workload
from jaxserve.sim import HARDWARE, MODELS, Parallelism, RooflineCost, Timing
from jaxserve.sim.run import SimSettings, run_rates, scheduler_config

# every scheduler field a run's settings set, away from its default
KNOBS = dict(
    max_batch=3, page_size=8, preemption="recompute", host_pages=77, q0=0.125,
    num_queues=5, quantum_charge="iteration", promote_every=17, starve_s=1.5,
    reserve_pages=2, prefetch=1, input_cost=3.0, output_cost=0.5, rerank_every=3,
    rerank_margin=2.5,
)  # fmt: skip
WEIGHTS = {"a": 4.0, "b": 0.5}


def cost() -> RooflineCost:
    return RooflineCost(HARDWARE["h100"], MODELS["llama-3-8b"], Parallelism())


def test_the_simulated_config_holds_what_the_served_one_holds():
    """The same settings through `jaxserve.serve.scheduler_config` (a profile) and the
    simulator's (a cost model): every field the settings set is theirs in both, client
    weights included; only what each executor measures differs."""
    from jaxserve.profiler import Profile
    from jaxserve.serve import ServeSettings
    from jaxserve.serve import scheduler_config as served_config

    serve_s = ServeSettings(schedulers=["vtc"], workload="w", rates=[1.0], num_requests=1,
                            kv_pages=300, **KNOBS)  # fmt: skip
    prof = Profile("m", "cpu", prefill=[(16, 0.01), (64, 0.03)], decode=[(1, 0.002)],
                   swap_bandwidth=1e9, prefill_tokens_per_s=2000.0)  # fmt: skip
    served = served_config(serve_s, prof, 512, 4096, WEIGHTS)
    sim_s = SimSettings(schedulers=["vtc"], **KNOBS)
    simulated = scheduler_config(sim_s, cost(), 512, 300, 4096, WEIGHTS)
    measured = {"swap_bandwidth", "prefill_tokens_per_s", "prefill_table"}
    for f in dataclasses.fields(simulated):
        if f.name not in measured:
            assert getattr(simulated, f.name) == getattr(served, f.name), f.name
    for name, value in KNOBS.items():
        assert getattr(simulated, name) == value, name
    assert dict(simulated.client_weights) == WEIGHTS


def test_trace_weights_change_what_vtc_schedules(tmp_path):
    """Two clients asking for the same service, alternately, 200 requests/s on a batch of 2
    (a trace's arrivals are spread at the rate), well past what it sustains:
    with client a weighted 4 (in the trace, as `experiments.serve` reads weights) vtc serves
    a before b, so a's mean JCT falls below b's; without weights the two are close. And the
    fair settings reach the scheduler: the same run with other costs schedules otherwise."""
    reqs = [
        workload.TraceRequest(f"{c}{i}", 0.0, 64, 64, client=c) for i in range(30) for c in "ab"
    ]

    def run(weights: dict[str, float] | None, **knobs) -> dict[str, float]:
        trace = [dataclasses.replace(r, weight=(weights or {}).get(r.client)) for r in reqs]
        path = tmp_path / f"trace{len(list(tmp_path.iterdir()))}.jsonl"
        workload.write_trace(path, trace)
        s = SimSettings(schedulers=["vtc"], workload=str(path), rates=[200.0],
                        num_requests=len(trace), max_batch=2, **knobs)  # fmt: skip
        c = cost()
        runs = run_rates(s, c, Timing(overlap=False, decode_steps=1), 2048, 4000,
                         c.kv_bytes_per_page)  # fmt: skip
        out = {}
        for client in "ab":
            jcts = [r["finish_time"] - r["arrival"] for r in runs[0]["requests"]
                    if r["client"] == client]  # fmt: skip
            out[client] = sum(jcts) / len(jcts)
        return out

    plain, weighted = run(None), run({"a": 4.0})
    assert weighted["a"] < 0.8 * weighted["b"]
    assert abs(plain["a"] - plain["b"]) < 0.2 * plain["b"]
    assert weighted != plain
    assert run(None, input_cost=0.0, output_cost=1.0) != plain
