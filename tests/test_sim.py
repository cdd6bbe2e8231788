"""The simulator's loop: schedules worked by hand, under the synchronous and the engine's
timing. Every cost here is `LinearCost(a=1 s)` unless said otherwise, so times are counts."""

from __future__ import annotations

import pytest

from jaxserve.sched import Request, SchedulerConfig, State, make_scheduler
from jaxserve.sim import SYNC, LinearCost, Timing, simulate

ONE = LinearCost(a=1.0, b=0.0, b_prefill=0.0)


def cfg(**kw) -> SchedulerConfig:
    base = dict(max_batch=4, num_pages=64, page_size=16, max_seq_len=1024)
    return SchedulerConfig(**(base | kw))


def req(rid, prompt=4, out=3, cap=10, arrival=0.0) -> Request:
    return Request(rid, arrival=arrival, prompt_len=prompt, max_new_tokens=cap, output_len=out)


def test_sync_timing_reads_every_step_before_the_next():
    """SYNC: prefill [0,1] -> token 1 at 1; decodes [1,2], [2,3] -> tokens at 2, 3; the third
    token is the trace's last: JCT 3, TTFT 1, three iterations, nothing wasted."""
    res = simulate(make_scheduler("fcfs", cfg()), [req("a")], ONE, timing=SYNC)
    rec = res.records["a"]
    assert rec.token_times == [1.0, 2.0, 3.0] and rec.finish_reason == "stop"
    assert res.jct() == {"a": 3.0} and res.iterations == 3 and res.device_busy == 3.0


def test_one_step_ahead_computes_one_wasted_step_and_hides_host_time():
    """Engine timing, host 0.5 s an iteration. Plan k is dispatched after its host work and
    runs after plan k-1; plan k-1's tokens are read while plan k runs:
        plan 1 (prefill) host [0, .5] device [.5, 1.5]
        plan 2 (decode)  host [.5, 1]  device [1.5, 2.5]  then read plan 1: token 1 at 1.5
        plan 3           host [1.5, 2] device [2.5, 3.5]  read plan 2: token 2 at 2.5
        plan 4           host [2.5, 3] device [3.5, 4.5]  read plan 3: token 3 at 3.5, stop
    The scheduler learns of the stop one step late, so plan 4 is a wasted row: 4
    iterations for 3 tokens. A synchronous loop with the same host cost pays it every step:
    tokens at 1.5, 3, 4.5."""
    timing = Timing(decode_steps=1, host=0.5)
    res = simulate(make_scheduler("fcfs", cfg()), [req("a")], ONE, timing=timing)
    assert res.records["a"].token_times == [1.5, 2.5, 3.5]
    assert res.iterations == 4 and res.device_busy == 4.0
    sync = Timing(overlap=False, decode_steps=1, host=0.5)
    res = simulate(make_scheduler("fcfs", cfg()), [req("a")], ONE, timing=sync)
    assert res.records["a"].token_times == [1.5, 3.0, 4.5] and res.iterations == 3


def test_multi_step_chunks_follow_the_engines_rule():
    """Prompt 16 (1 page), 10 tokens by length, chunks of up to 4 steps, a = 1 s a step.
    Plan 1 prefills [0,1]. Plan 2: context 17 gets a second page (room 32-17+1 = 16), 9 tokens
    left -> 4 steps [1,5]. Plan 3: 5 left -> 4 steps [5,9]. Plan 4: 1 left -> 1 step [9,10],
    which ends the request by length at commit. Tokens are read when their call ends."""
    timing = Timing(decode_steps=4)
    r = req("a", prompt=16, out=None, cap=10)
    res = simulate(make_scheduler("fcfs", cfg()), [r], ONE, timing=timing)
    assert res.records["a"].token_times == [1.0] + [5.0] * 4 + [9.0] * 4 + [10.0]
    assert res.iterations == 4 and res.records["a"].finish_reason == "length"


class _Hiccup:
    """`ONE`, except that the third decode call takes 20 s a step (a slow call: a first run,
    the host descheduled); logs each call's steps (0: a prefill)."""

    def __init__(self):
        self.steps: list[int] = []

    def iteration_time(self, plan, steps):
        decode = bool(plan.decode) and not plan.prefill
        self.steps.append(steps if decode else 0)
        slow = decode and sum(1 for s in self.steps if s) == 3
        return ONE.iteration_time(plan, steps) * (20.0 if slow else 1.0)


def test_one_slow_call_does_not_shorten_the_chunks_after_it():
    """Chunks of up to 4, b due at 100 s. a's decode calls run [1,5], [5,9], then the slow
    one [9,89] (dispatched at 5, before it the estimate is 1 s a step) and [89,93]. Plan 6
    is made at 89, when the slow call is read: 11 s before b. The estimate is the median of
    the per-step times read so far (1, 1, 20): 1 s, so 4 steps still fit before b, as for
    every call up to b's arrival. (A running mean, 0.8 * 1 + 0.2 * 20 = 4.8 s, would
    allow int(11 / 4.8) = 2.)"""
    cost = _Hiccup()
    rs = [req("a", prompt=16, out=None, cap=40), req("b", arrival=100.0)]
    simulate(make_scheduler("fcfs", cfg()), rs, cost, timing=Timing(decode_steps=4))
    decode = [s for s in cost.steps if s]
    assert cost.steps[0] == 0 and decode[:6] == [4] * 6


def test_step_time_is_the_median_of_the_last_calls():
    from jaxserve.sched.steptime import StepTime

    est = StepTime(window=5)
    assert est.value == 0.0
    for x in (0.005, 0.005, 0.006, 0.005):
        est.add(x)
    assert est.value == pytest.approx(0.005)
    est.add(0.4)  # one slow call moves nothing
    assert est.value == pytest.approx(0.005)
    for _ in range(3):  # a real change of speed takes over within the window
        est.add(0.010)
    assert est.value == pytest.approx(0.010)
    with pytest.raises(ValueError, match="window"):
        StepTime(window=0)


def test_multi_step_needs_every_live_request_in_the_batch():
    """max_batch 1, a and b arrive together, 3 tokens each, engine timing with chunks of up
    to 16. While b waits, a's calls are single steps (b could change the plan): a prefill
    [0,1], decodes [1,2] [2,3] and the wasted [3,4]; tokens read at 1, 2, 3. Then b prefills
    [4,5]; alone, its decode runs 2 steps in one call [5,7] (its trace has 2 tokens left),
    then one wasted step [7,8]: b's tokens at 5, 7, 7. 7 calls, 8 steps of device time."""
    timing = Timing(decode_steps=16)
    res = simulate(make_scheduler("fcfs", cfg(max_batch=1)), [req("a"), req("b")], ONE,
                   timing=timing)  # fmt: skip
    assert res.records["a"].token_times == [1.0, 2.0, 3.0]
    assert res.records["b"].token_times == [5.0, 7.0, 7.0]
    assert res.iterations == 7 and res.device_busy == 8.0


def test_rejected_cancelled_and_later_turns():
    """SYNC. r0 never fits (prompt 100 > max_seq_len 64): rejected, no tokens. r1 and r4 run
    together, a token each per second. r1's cancellation at 1.5 s takes effect at the next
    iteration boundary, 2 s, after its second token. r4 ends at 3 s; r3, its next turn, is
    released 0.5 s of think time later, at 3.5 s, and emits its 3 tokens at 4.5, 5.5, 6.5."""
    s = make_scheduler("fcfs", cfg(max_seq_len=64))
    rs = [req("r0", prompt=100), req("r1", out=10, cap=10), req("r4"), req("r3", arrival=0.0)]
    res = simulate(s, rs, ONE, cancels=[(1.5, "r1")], after={"r3": ("r4", 0.5)})
    assert res.records["r0"].state == "rejected" and res.records["r0"].output_len == 0
    assert res.records["r0"].finish_reason.startswith("rejected")
    r1 = res.records["r1"]
    assert r1.state == "cancelled" and r1.token_times == [1.0, 2.0] and r1.finish_time == 2.0
    assert res.records["r4"].finish_time == 3.0
    r3 = res.records["r3"]
    assert r3.arrival == 3.5 and r3.token_times == [4.5, 5.5, 6.5]
    assert s.allocator.num_free == s.config.usable_pages and s.done
    summary = res.summary()
    assert summary["num_rejected"] == 1 and summary["num_finished"] == 2


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_swaps_and_recompute_cost_what_the_plans_move(mode):
    """vllm on a pool of 3 usable pages, two 16-token prompts: each prefill takes a page, then
    each decode needs a second one, so the newer request is preempted. With swapping, every
    page a plan moves costs 1 s (1-byte pages at 1 B/s) on top of 1 s per computing plan;
    with recompute nothing is copied and the victim is prefilled again."""
    moved, computing, prefills = [], [], []

    def watch(sched, plan):
        moved.append(plan.swap_in_pages + plan.swap_out_pages)
        computing.append(bool(plan.batch))
        prefills.extend(r.id for r in plan.prefill)

    cost = LinearCost(a=1.0, b=0.0, b_prefill=0.0, swap_bandwidth=1.0, kv_bytes_per_page=1)
    s = make_scheduler("vllm", cfg(num_pages=4, preemption=mode, max_batch=2))
    rs = [req("a", prompt=16, out=6), req("b", prompt=16, out=6, arrival=0.1)]
    res = simulate(s, rs, cost, on_step=watch)
    assert res.device_busy == pytest.approx(sum(computing) + sum(moved))
    assert all(res.records[r].output_len == 6 for r in "ab")
    if mode == "swap":
        assert sum(moved) > 0 and prefills.count("b") == 1
    else:
        assert sum(moved) == 0 and prefills.count("b") == 2
    assert rs[1].state is State.FINISHED and rs[1].preemptions >= 1


def test_timing_rejects_bad_settings():
    with pytest.raises(ValueError, match="power of two"):
        Timing(decode_steps=3)
    with pytest.raises(ValueError, match="host"):
        Timing(host=-1.0)


def random_case(seed: int, policy: str):
    """Requests with bursts of arrivals, mixed lengths, a pool that forces preemption, MLFQ
    demotions (small q0) and frequent starvation checks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 60
    arrivals = np.cumsum(rng.exponential(0.02, n))
    reqs = [
        Request(
            f"r{i}",
            arrival=float(arrivals[i]),
            prompt_len=int(rng.integers(1, 80)),
            max_new_tokens=int(rng.integers(20, 120)),
            output_len=int(rng.integers(1, 100)),
        )
        for i in range(n)
    ]
    config = SchedulerConfig(
        max_batch=int(rng.integers(2, 9)),
        num_pages=int(rng.integers(24, 60)),
        page_size=int(rng.choice([4, 16])),
        max_seq_len=256,
        preemption=str(rng.choice(["swap", "recompute"])),
        host_pages=int(rng.choice([10, 1000])),
        q0=float(rng.choice([0.005, 0.05])),
        promote_every=int(rng.choice([7, 50])),
        starve_s=0.05,
        reserve_pages=int(rng.integers(0, 3)),
        prefetch=int(rng.integers(0, 3)),
        swap_bandwidth=1e6,
        kv_bytes_per_page=1000,
        prefill_table=[(1, 0.002), (128, 0.02)],
    )
    return make_scheduler(policy, config), reqs


class RowUpdateCost(LinearCost):
    row_update_time = 3e-4  # a decode call whose rows or block tables changed costs more


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "mlfq", "skip_join_mlfq", "srpt"])
def test_fast_path_gives_the_same_run(policy):
    """Steady stretches run without re-planning (`fast=True`, the default) give exactly the
    run that plans every iteration: every token time, every scheduler field, every page."""
    cost = RowUpdateCost(a=1e-3, b=1e-4, b_prefill=2e-5, c=1e-6, swap_bandwidth=1e6,
                         kv_bytes_per_page=1000)  # fmt: skip
    timing = Timing(overlap=False, decode_steps=1, host=2e-4)
    skipped = 0
    for seed in range(4):
        runs = []
        for fast in (False, True):
            s, reqs = random_case(seed, policy)
            res = simulate(s, reqs, cost, timing=timing, fast=fast)
            state = [
                (r.id, r.state, r.num_generated, r.queue, r.entered_queue, r.preemptions,
                 r.quantum_used, r.last_run, tuple(r.pages))
                for r in reqs
            ]  # fmt: skip
            recs = [(x.id, x.token_times, x.finish_time, x.state) for x in res.records.values()]
            runs.append((recs, state, s.allocator.free_runs(), s.iteration, res.iterations,
                         res.time, res.device_busy, res.finished_events))  # fmt: skip
            s.check_invariants()
        assert runs[0] == runs[1]
        skipped += runs[0][4]
    assert skipped > 0


def jump_case(seed: int, policy: str):
    """Long stretches for the fast path's jumps: long outputs, frequent MLFQ moves (q0 of a
    few iterations), batches that are full, or hold every live request, or neither; page
    boundaries of 4 or 16 tokens, pools from ample to short (growth refused, reserve),
    starvation checks, cancellations, later turns; a linear cost (the generic per-iteration
    cost) or the roofline (its memoised `decode_step_time`), one or two pipeline stages."""
    import numpy as np

    from jaxserve.sim import HARDWARE, MODELS, Parallelism, RooflineCost

    rng = np.random.default_rng(1000 + seed)
    n = 40
    gap = float(rng.choice([0.002, 0.02, 0.2]))
    arrivals = np.cumsum(rng.exponential(gap, n))
    reqs = [
        Request(f"r{i}", arrival=float(arrivals[i]), prompt_len=int(rng.integers(1, 200)),
                max_new_tokens=int(rng.integers(30, 400)), output_len=int(rng.integers(1, 300)))
        for i in range(n)
    ]  # fmt: skip
    after = {f"r{i}": (f"r{i - 1}", 0.01) for i in range(1, n, 7)} if seed % 2 else {}
    cancels = [(float(arrivals[i]) + 0.05, f"r{i}") for i in range(3, n, 11)]
    if seed % 3 == 0:
        cost = RowUpdateCost(a=5e-3, b=1e-4, c=1e-7)
    else:
        llama = MODELS["llama-3-8b"]
        cost = RooflineCost(HARDWARE["h100"], llama, Parallelism(pp=1 + seed % 2 * 1))
    config = SchedulerConfig(
        max_batch=int(rng.choice([2, 4, 8, 16])),
        num_pages=int(rng.choice([60, 150, 4000])),
        page_size=int(rng.choice([4, 16])),
        max_seq_len=512,
        preemption=str(rng.choice(["swap", "recompute"])),
        q0=float(rng.choice([0.01, 0.03])),
        num_queues=int(rng.choice([3, 8])),
        promote_every=int(rng.choice([0, 13, 200])),
        starve_s=0.1,
        reserve_pages=int(rng.integers(0, 4)),
        prefetch=int(rng.integers(0, 3)),
        swap_bandwidth=1e9,
        kv_bytes_per_page=1 << 20,
        prefill_table=[(1, 0.002), (256, 0.02)],
    )
    timing = Timing(
        overlap=False, decode_steps=1, host=float(rng.choice([0.0, 2e-4])),
        host_per_row=float(rng.choice([0.0, 1e-5])), serial_host=bool(rng.integers(0, 2)),
    )  # fmt: skip
    return make_scheduler(policy, config), reqs, cost, timing, cancels, after


def run_state(s, reqs, res) -> tuple:
    """Everything a run leaves behind: records, request fields, pages, clocks, counters."""
    state = [
        (r.id, r.state, r.num_generated, r.queue, r.entered_queue, r.preemptions,
         r.quantum_used, r.last_run, r.first_token_time, r.finish_time, tuple(r.pages))
        for r in reqs
    ]  # fmt: skip
    recs = [(x.id, x.arrival, x.token_times, x.finish_time, x.finish_reason, x.state)
            for x in res.records.values()]  # fmt: skip
    return (recs, state, s.allocator.free_runs(), s.iteration, s.host_used, res.iterations,
            res.time, res.device_busy, res.finished_events, res.rejected_events)  # fmt: skip


def count_plans(s) -> list[float]:
    """The times `s.schedule` is called at, from now on."""
    calls, schedule = [], s.schedule

    def counted(now: float):
        calls.append(now)
        return schedule(now)

    s.schedule = counted
    return calls


def trace_pages(s) -> list[tuple[str, tuple[int, ...]]]:
    """The block table of every request as it ends or is evicted, from now on (the pages
    every growth was given, which a finished run no longer shows)."""
    tables, finish, evict = [], s._finish, s.evict

    def finished(r, *args):
        tables.append((r.id, tuple(r.pages)))
        return finish(r, *args)

    def evicted(r, *args):
        tables.append((r.id, tuple(r.pages)))
        return evict(r, *args)

    s._finish, s.evict = finished, evicted
    return tables


@pytest.mark.parametrize("policy", ["fcfs", "vllm", "mlfq", "skip_join_mlfq", "srpt"])
def test_fast_path_jumps_give_the_same_run(policy):
    """The jumps over long steady stretches (`jaxserve.sim.steady`) give exactly the run that
    plans every iteration, over random cases built to stop them every way they can stop,
    and they do skip plans (most of them, but where MLFQ turns small batches round robin)."""
    planned = iterations = 0
    for seed in range(6):
        runs = []
        for fast in (False, True):
            s, reqs, cost, timing, cancels, after = jump_case(seed, policy)
            calls, tables = count_plans(s), trace_pages(s)
            res = simulate(s, reqs, cost, timing=timing, cancels=cancels, after=after, fast=fast)
            s.check_invariants()
            runs.append((run_state(s, reqs, res), tables))
        assert runs[0] == runs[1], f"seed {seed}"
        planned += len(calls)
        iterations += res.iterations
    assert planned < iterations * 2 / 3


def test_traces_become_requests_as_the_engine_replays_them():
    """Caps follow `experiments.serve`'s replay rule, and a conversation's later turn is
    released its recorded think time after the previous turn finishes."""
    from jaxserve.sim.run import replay_cap, requests_from_trace
    from jaxserve.workload import TraceRequest

    # (prompt, trace output, max_output_len, max_seq_len): up to max_output_len, the trace's
    # length if longer, within the context
    for args, cap in [((10, 5, 256, 1024), 256), ((10, 500, 256, 1024), 500),
                      ((1000, 50, 256, 1024), 24)]:  # fmt: skip
        assert replay_cap(*args) == cap
    trace = [
        TraceRequest("a0", 0.0, 8, 3, conversation="a", turn=0),
        TraceRequest("b0", 0.5, 8, 3, conversation="b", turn=0),
        TraceRequest("a1", 2.0, 20, 3, conversation="a", turn=1),
    ]
    reqs, after = requests_from_trace(trace, max_output_len=16, max_seq_len=64)
    assert after == {"a1": ("a0", 2.0)} and [r.max_new_tokens for r in reqs] == [16, 16, 16]
    res = simulate(make_scheduler("fcfs", cfg()), reqs, ONE, after=after)
    assert res.records["a0"].finish_time == 3.0 and res.records["a1"].arrival == 5.0


@pytest.mark.parametrize("closed_loop", [True, False])
def test_multiturn_conversations_run_turn_after_turn(closed_loop):
    """`multiturn_synth` on two replicas: every conversation stays on one replica, and each
    later turn arrives its think time (the trace's gap) after the previous turn finished
    (closed loop), or at its trace time (open loop). Every turn finishes."""
    from jaxserve.sim import HARDWARE, MODELS, Parallelism, RooflineCost
    from jaxserve.sim.run import SimSettings, deal, make_trace, run_rates

    cost = RooflineCost(HARDWARE["h100"], MODELS["llama-3-8b"], Parallelism())
    s = SimSettings(schedulers=["skip_join_mlfq", "vtc"], workload="multiturn_synth",
                    rates=[2.0], num_requests=60, max_prompt_len=512, max_output_len=256,
                    replicas=2, closed_loop=closed_loop)  # fmt: skip
    trace = make_trace(s, 2.0)
    assert any(t.turn > 0 for t in trace) and len({t.client for t in trace}) > 2
    home = {t.conversation: k for k, part in enumerate(deal(trace, 2)) for t in part}
    for k, part in enumerate(deal(trace, 2)):
        assert all(home[t.conversation] == k for t in part)
    runs = run_rates(s, cost, SYNC, 8192, cost.kv_pages(), cost.kv_bytes_per_page)
    for run in runs:
        recs = {r["id"]: r for r in run["requests"]}
        assert run["summary"]["num_finished"] == len(trace)
        prev = {}
        for t in trace:
            p = prev.get(t.conversation)
            if p is not None:
                want = recs[p.id]["finish_time"] + (t.arrival - p.arrival)
                got = recs[t.id]["arrival"]
                assert got == pytest.approx(want if closed_loop else t.arrival), t.id
            prev[t.conversation] = t
