"""Fair scheduling: vtc and fair_priority by hand, VTC's bound in the simulator, and the
engine (preemption by a fair policy must not change greedy outputs; conversations replayed in
a closed loop).

Hand-worked schedules are one line per iteration, `iter k (t): <plan>`, with the counters
after the iteration's tokens (input_cost per prompt token at admission, output_cost per
generated token, divided by the client's weight).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_model, tiny_config

from jaxserve import metrics, serve_trace
from jaxserve.sched import Plan, Request, Scheduler, SchedulerConfig, StepResult, make_scheduler
from jaxserve.sched.policies import vtc_bound
from jaxserve.sched.simloop import LinearCost, simulate


def config(**kw) -> SchedulerConfig:
    fields = dict(
        max_batch=2, num_pages=64, page_size=4, max_seq_len=4096, input_cost=1.0, output_cost=2.0
    )
    fields.update(kw)
    return SchedulerConfig(**fields)


def req(rid, client, prompt=4, max_new=100, arrival=0.0, output_len=None) -> Request:
    return Request(
        rid,
        arrival=arrival,
        prompt_len=prompt,
        max_new_tokens=max_new,
        output_len=output_len,
        client=client,
    )


def step(s: Scheduler, t: float, dt: float = 0.25) -> Plan:
    plan = s.schedule(t)
    s.update(t + dt, StepResult(iteration_time=dt))
    s.check_invariants()
    return plan


def summaries(s: Scheduler, n: int, t0: float = 0.0, dt: float = 0.25) -> list[str]:
    return [step(s, t0 + i * dt, dt).summary() for i in range(n)]


def counters(s: Scheduler) -> dict[str, float]:
    return dict(s.policy.counters.counter)


# ------------------------------------------------------------------------------ vtc


def test_vtc_admits_the_least_served_client_by_weight():
    """Clients a (weight 1) and b (weight 2), two requests each at t=0, prompt 4, two tokens
    each; batch 2; input 1, output 2 per token.

        iter 0: prefill=[a1,b1]  a: 4 + 2 = 6     b: (4 + 2) / 2 = 3
        iter 1: decode=[a1,b1]   a: 8             b: 4          (both finish)
        iter 2: prefill=[b2,a2]  b (4) < a (8): b's request goes first although a2 is older
    """
    s = make_scheduler("vtc", config(client_weights={"b": 2.0}))
    for rid in ("a1", "a2", "b1", "b2"):
        s.add(req(rid, rid[0], max_new=2))
    got = summaries(s, 3)
    assert got[0] == "prefill=[a1,b1] decode=[] out=[] in=[] drop=[]"
    assert counters(s) == {"a": 12.0 + 2.0, "b": 6.0 + 1.0}
    assert got[1] == "prefill=[] decode=[a1,b1] out=[] in=[] drop=[]"
    assert got[2] == "prefill=[b2,a2] decode=[] out=[] in=[] drop=[]"


def test_vtc_lifts_a_returning_client_and_never_preempts():
    """Batch 1, prompts of 4, one token each (input 1, output 2: 6 a request).

        iter 0 (t=0):    prefill=[a1]   a: 6
        iter 1 (t=0.25): prefill=[a2]   a: 12
        t=0.5: b1, b2 arrive while a3 waits: b is lifted from 0 to a's 12
        iter 2 (t=0.5):  prefill=[a3]   a: 16 at admission, 18   (tie: a3 arrived first)
                         a has nothing waiting any more: the last counter to leave is 16
        iter 3 (t=0.75): prefill=[b1]   b: 18
        iter 4 (t=1.0):  prefill=[b2]   b: 22 at admission (last to leave), 24
        t=1.25: d1 arrives with nobody waiting: d starts at the last counter to leave, 22
    Without the lift, b (at 0) would take two turns before a3.
    """
    s = make_scheduler("vtc", config(max_batch=1))
    for rid in ("a1", "a2", "a3"):
        s.add(req(rid, "a", max_new=1))
    got = summaries(s, 2)
    s.add(req("b1", "b", max_new=1, arrival=0.5))
    s.add(req("b2", "b", max_new=1, arrival=0.5))
    assert counters(s) == {"a": 12.0, "b": 12.0}
    got += summaries(s, 3, t0=0.5)
    assert [g.split()[0] for g in got] == [f"prefill=[{x}]" for x in ("a1", "a2", "a3", "b1", "b2")]
    assert counters(s) == {"a": 18.0, "b": 24.0}
    s.add(req("d1", "d", max_new=1, arrival=1.25))
    assert counters(s)["d"] == 22.0
    assert all(r.preemptions == 0 for r in s.requests.values())


# ------------------------------------------------------------------------------ fair_priority


def test_fair_priority_reranks_every_n_iterations_and_preempts_what_falls_out():
    """Batch 1, re-rank every 2 iterations, input and output 1 a token; a1, a2 (client a)
    and b1 (client b) at t=0, prompts of 4.

        iter 0: rank a1, a2, b1 (all 0)    prefill=[a1]          a: 4 + 1 = 5
        iter 1: no re-rank                 decode=[a1]           a: 6
        iter 2: rank b1 (0), a1, a2 (6)    prefill=[b1]          a1 preempted, b: 5
        iter 3: no re-rank                 decode=[b1]           b: 6
        iter 4: rank a1, a2, b1 (tie 6, add order)  decode=[a1]  b1 preempted
    The pool is large: the left-out request keeps its KV on the device. No hysteresis
    (rerank_margin=0): a resident is preempted for any client behind its own.
    """
    cfg = config(max_batch=1, rerank_every=2, output_cost=1.0, rerank_margin=0.0)
    s = make_scheduler("fair_priority", cfg)
    for rid in ("a1", "a2", "b1"):
        s.add(req(rid, rid[0]))
    plans = [step(s, 0.25 * i) for i in range(5)]
    assert [p.summary() for p in plans] == [
        "prefill=[a1] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[a1] out=[] in=[] drop=[]",
        "prefill=[b1] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[b1] out=[] in=[] drop=[]",
        "prefill=[] decode=[a1] out=[] in=[] drop=[]",
    ]
    assert [[r.id for r in p.preempted] for p in plans] == [[], [], ["a1"], [], ["b1"]]
    assert counters(s) == {"a": 7.0, "b": 6.0}


def test_fair_priority_interleaves_clients_in_the_ranking():
    """Batch 2; a1, a2, a3 (client a) and b1 (client b) at t=0, prompts of 4, counters 0.
    Ranking by counter alone would put all of a's requests before b1 (a tie broken by
    arrival, then add order); the ranking projects each client's counter by what a place
    costs in one re-rank period instead: a1 takes a to 4 (prompt) + 2 * 8 (a slot emits a
    token an iteration until measured, 8 iterations) = 20, so b1 (0) comes next, then a2."""
    s = make_scheduler("fair_priority", config(max_batch=2))
    for rid in ("a1", "a2", "a3", "b1"):
        s.add(req(rid, rid[0]))
    assert step(s, 0.0).summary() == "prefill=[a1,b1] decode=[] out=[] in=[] drop=[]"
    assert sorted(s.policy.rank, key=s.policy.rank.get) == ["a1", "b1", "a2", "a3"]


@pytest.mark.parametrize(
    "margin, batches, preempted_at",
    [(0.0, "aabbaabb", [2, 4, 6]), (1.0, "aaaabbbb", [4])],
)
def test_fair_priority_hysteresis_keeps_a_resident_within_the_margin(margin, batches, preempted_at):
    """Batch 1, re-rank every 2 iterations; a1 and b1 at t=0; prompts free (input_cost 0),
    output 1 a token, so a slot's service in one period is 2 (1 token an iteration, measured).

        margin 0: iter 2: a 2 > b 0, b1 runs; iter 4: a 2 = b 2, a1 (add order); iter 6: b1
        margin 1: a resident competes 1 period (2) lower: iter 2: a 2 - 2 = 0 ties b 0, a1
                  stays; iter 4: a 4 - 2 > 0, b1 runs; iter 6: b 2 - 2 < a 4, b1 stays
    """
    cfg = config(max_batch=1, rerank_every=2, input_cost=0.0, output_cost=1.0, rerank_margin=margin)
    s = make_scheduler("fair_priority", cfg)
    s.add(req("a1", "a"))
    s.add(req("b1", "b"))
    plans = [step(s, 0.25 * i) for i in range(8)]
    assert "".join(p.batch[0].client for p in plans) == batches
    assert [i for i, p in enumerate(plans) if p.preempted] == preempted_at


def test_fair_priority_swaps_out_what_falls_out_when_pages_run_short():
    """4 usable pages of 4 tokens; a1 and b1 (prompts of 8, up to 8 new tokens) at t=0;
    batch 1, re-rank every 2; input and output 1 a token; no hysteresis.

        iter 0: prefill=[a1] (2 pages)            a: 9
        iter 1: decode=[a1] (grows to 3 pages)    a: 10
        iter 2: b1 ranks first; it needs 2 pages, 1 is free: a1 (the lowest resident) is
                swapped out (its 9 tokens of KV, 3 pages)   prefill=[b1] out=[a1]    b: 9
        iter 3: decode=[b1]                       b: 10
        iter 4: tie, a1 first: it needs 3 pages, 1 is free: b1 is swapped out, and a1's
                swap-in waits one iteration (no swap-in while swapping out)   out=[b1]
        iter 5: in=[a1] decode=[a1]
    """
    cfg = config(
        max_batch=1,
        num_pages=5,
        rerank_every=2,
        output_cost=1.0,
        preemption="swap",
        rerank_margin=0.0,
    )
    s = make_scheduler("fair_priority", cfg)
    s.add(req("a1", "a", prompt=8, max_new=8))  # 16 tokens at most: fits the 4 pages
    s.add(req("b1", "b", prompt=8, max_new=8))
    got = summaries(s, 6)
    assert got == [
        "prefill=[a1] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[a1] out=[] in=[] drop=[]",
        "prefill=[b1] decode=[] out=[a1] in=[] drop=[]",
        "prefill=[] decode=[b1] out=[] in=[] drop=[]",
        "prefill=[] decode=[] out=[b1] in=[] drop=[]",
        "prefill=[] decode=[a1] out=[] in=[a1] drop=[]",
    ]


def test_fair_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"client_weights\['b'\] must be > 0"):
        config(client_weights={"b": 0.0})
    with pytest.raises(ValueError, match="output_cost must be a finite number >= 0"):
        config(output_cost=-1.0)
    with pytest.raises(ValueError, match="cannot both be 0"):
        config(input_cost=0.0, output_cost=0.0)
    with pytest.raises(ValueError, match="rerank_every must be >= 1"):
        config(rerank_every=0)
    with pytest.raises(ValueError, match="rerank_margin must be a finite number >= 0"):
        config(rerank_margin=-1.0)
    assert config(client_weights={"b": 2}).weight("b") == 2.0
    assert config().weight("anyone") == 1.0


# ------------------------------------------------------------------------------ the bound


def overload_trace(seed: int = 0) -> list[Request]:
    """A heavy client (weight 2) with 240 requests against three light ones with 40 each,
    all arriving in the first second: every client stays backlogged for a long time."""
    rng = np.random.default_rng(seed)
    out = []
    for client, n in (("heavy", 240), ("l0", 40), ("l1", 40), ("l2", 40)):
        for i in range(n):
            o = int(rng.integers(4, 25))
            out.append(
                req(
                    f"{client}-{i}",
                    client,
                    prompt=int(rng.integers(4, 17)),
                    max_new=o,
                    arrival=float(rng.uniform(0, 1)),
                    output_len=o,
                )
            )
    return out


def serve_in_sim(policy: str, cfg: SchedulerConfig, check=None):
    cost = LinearCost(a=0.01, b=1e-3)
    times: dict[str, list[float]] = {}

    def on_step(s: Scheduler, plan: Plan) -> None:
        end = plan.now + cost.iteration_time(plan)
        for r in plan.batch:
            times.setdefault(r.id, []).append(end)
        if check is not None:
            check(s)

    s = make_scheduler(policy, cfg)
    res = simulate(s, overload_trace(), cost, on_step=on_step)
    records = [
        metrics.RequestRecord(
            r.id,
            r.arrival,
            r.prompt_len,
            len(times[r.id]),
            times[r.id][0],
            r.finish_time,
            times[r.id],
            client=r.client,
        )
        for r in res.requests
    ]
    return s, records


def test_vtc_service_gap_stays_within_its_bound_under_overload():
    """M = 32 pages * 4 = 128 tokens, longest prompt L = 16, input 1, output 2, weights
    heavy 2 and light 1: U = (16 + 2 * 128) / 1 = 272 and the gap bound 2U = 544 weighted
    tokens. At every plan the counters of the backlogged clients are within U of each other,
    and the gap measured from the emitted tokens stays within 2U; fcfs on the same trace
    serves clients in proportion to their demand and breaks it many times over."""
    weights = {"heavy": 2.0}
    cfg = config(max_batch=8, num_pages=33, client_weights=weights)
    bound = vtc_bound(cfg, max_prompt_len=16)
    assert bound == 544.0
    spreads = []

    def check(s: Scheduler) -> None:
        backlogged = {r.client for r in s.waiting}
        if len(backlogged) > 1:
            c = [s.policy.counters[k] for k in backlogged]
            spreads.append(max(c) - min(c))

    _, records = serve_in_sim("vtc", cfg, check)
    assert spreads and max(spreads) <= bound / 2
    gap = metrics.max_service_gap(records, weights, 1.0, 2.0)
    assert 0 < gap["gap"] <= bound
    _, fcfs = serve_in_sim("fcfs", cfg)
    assert metrics.max_service_gap(fcfs, weights, 1.0, 2.0)["gap"] > 5 * bound


# ------------------------------------------------------------------------------ the engine

PAGE = 4


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=11)


@pytest.fixture(scope="module")
def runner(model):
    from jaxserve.runner import ModelRunner

    return ModelRunner(model)


def engine_config(num_pages: int, **kw) -> SchedulerConfig:
    fields = dict(
        max_batch=4,
        num_pages=num_pages,
        page_size=PAGE,
        max_seq_len=128,
        host_pages=1000,
        swap_bandwidth=1e9,
        prefill_tokens_per_s=1e4,
        kv_bytes_per_page=1024,
        client_weights={"b": 2.0},
        rerank_every=2,
    )
    fields.update(kw)
    return SchedulerConfig(**fields)


def serve_requests(model, runner, policy, cfg, prompts, lens):
    from jaxserve.engine import Engine
    from jaxserve.sampling import SamplingParams

    engine = Engine(model, policy, cfg, runner=runner)
    for i, (p, n) in enumerate(zip(prompts, lens)):
        engine.submit(p, SamplingParams(max_new_tokens=n), request_id=f"r{i}", client="ab"[i % 2])
    engine.run_until_done(max_iterations=5000)
    assert not engine.has_work
    engine.scheduler.check_invariants()
    return engine, {rid: engine.output(rid) for rid in engine.timelines}


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
def test_fair_policies_do_not_change_greedy_outputs(model, runner, preemption):
    """Eight requests of two clients; fcfs on a roomy pool is the reference. vtc never
    preempts; fair_priority re-ranks every 2 iterations on a pool too small for everyone,
    so requests are preempted (swapped or dropped and recomputed), and outputs stay equal."""
    rs = np.random.RandomState(0)
    prompts = [[int(t) for t in rs.randint(3, 128, rs.randint(3, 20))] for _ in range(8)]
    lens = [int(x) for x in rs.randint(5, 30, 8)]
    _, ref = serve_requests(model, runner, "fcfs", engine_config(200), prompts, lens)
    _, out = serve_requests(model, runner, "vtc", engine_config(40), prompts, lens)
    assert out == ref
    cfg = engine_config(24, preemption=preemption)
    engine, out = serve_requests(model, runner, "fair_priority", cfg, prompts, lens)
    assert out == ref
    assert sum(tl.preemptions for tl in engine.timelines.values()) > 0


def test_closed_loop_replay_releases_a_turn_after_the_previous_one(model, runner):
    """Turn 1 of a conversation is released when turn 0 has ended plus the think time (the
    trace's arrival gap, 0.05 s), with turn 0's prompt and actual output before its own new
    message (3 tokens); its output equals a fresh run of that prompt."""
    from jaxserve import workload
    from jaxserve.engine import Engine
    from jaxserve.sampling import SamplingParams

    t0 = workload.TraceRequest("c-t0", 0.0, 5, 4, client="a", conversation="c", turn=0)
    t1 = workload.TraceRequest("c-t1", 0.05, 5 + 4 + 3, 3, client="a", conversation="c", turn=1)
    x = workload.TraceRequest("x", 0.0, 6, 3, client="b")
    prompts = {"c-t0": [5, 6, 7, 8, 9], "c-t1": list(range(20, 32)), "x": [3] * 6}
    trace = serve_trace.PreparedTrace(1.0, [t0, x, t1], prompts, {}, {})
    engine = Engine(model, "vtc", engine_config(64), runner=runner)
    serve_trace.replay_trace(engine, trace, max_output_len=8)
    first, second = engine.timelines["c-t0"], engine.timelines["c-t1"]
    assert second.arrival >= first.finish_time + 0.05
    assert second.prompt_len == 12 and len(first.output_ids) == 4
    want = prompts["c-t0"] + first.output_ids + [29, 30, 31]
    fresh = Engine(model, "fcfs", engine_config(64), runner=runner)
    fresh.submit(want, SamplingParams(max_new_tokens=3), request_id="y")
    fresh.run_until_done()
    assert fresh.output("y") == second.output_ids
