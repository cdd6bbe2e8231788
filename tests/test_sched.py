"""Scheduler tests: model-free, exact, fast.

Hand-worked schedules are written out in each docstring as one line per iteration,
`iter k (t=...): <plan>`, and asserted with `Plan.summary()`. Helpers:

    step(s, t, dt)   schedule at t, then update at t + dt with every batch request emitting
                     one token (StepResult(dt)); returns the plan

The property tests drive every policy and preemption mode through `simloop.simulate` on
random workloads and check the scheduler's invariants after every plan.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve.sched import (
    POLICIES,
    OutOfPages,
    PageAllocator,
    Plan,
    Request,
    Scheduler,
    SchedulerConfig,
    State,
    StepResult,
    contiguous_runs,
    make_scheduler,
)
from jaxserve.sched.policies import skip_join_queue
from jaxserve.sched.preempt import recompute_seconds, swap_seconds, victim_mode
from jaxserve.sched.simloop import LinearCost, simulate


def config(**kw) -> SchedulerConfig:
    # the hand-worked schedules below charge every batch member the whole iteration
    fields = dict(
        max_batch=4, num_pages=64, page_size=4, max_seq_len=4096, quantum_charge="iteration"
    )
    fields.update(kw)
    return SchedulerConfig(**fields)


def req(rid: str, prompt: int, max_new: int = 100, arrival: float = 0.0, output_len=None):
    return Request(
        rid, arrival=arrival, prompt_len=prompt, max_new_tokens=max_new, output_len=output_len
    )


def step(s: Scheduler, t: float, dt: float = 0.25, finished=()) -> Plan:
    plan = s.schedule(t)
    s.update(t + dt, StepResult(iteration_time=dt, finished=set(finished)))
    s.check_invariants()
    return plan


def ids(rs) -> list[str]:
    return [r.id for r in rs]


# ------------------------------------------------------------------------ packaging


def test_import_does_not_import_jax():
    code = "import sys, jaxserve.sched, jaxserve.sched.simloop; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(ValueError, match="fcfs, vllm, mlfq, skip_join_mlfq, srpt, vtc, fair_pri"):
        make_scheduler("lottery", config())
    assert set(POLICIES) == {
        "fcfs",
        "vllm",
        "mlfq",
        "skip_join_mlfq",
        "srpt",
        "vtc",
        "fair_priority",
        "priority",
    }


def test_config_validates():
    with pytest.raises(ValueError, match="preemption"):
        config(preemption="magic")
    with pytest.raises(ValueError, match="num_pages"):
        config(num_pages=1)


# ------------------------------------------------------------------------ request, allocator


def test_token_and_page_accounting():
    """prompt 5, page_size 4: before prefill no KV and the step needs 5 tokens (2 pages);
    after it one token was sampled, KV of 5 tokens exists, the next step needs 6."""
    r = req("a", 5)
    assert (r.context_len, r.kv_len, r.pages_needed(4)) == (5, 0, 2)
    r.num_generated = 1
    assert (r.context_len, r.kv_len, r.pages_needed(4)) == (6, 5, 2)
    r.num_generated = 4
    assert (r.context_len, r.kv_len, r.pages_needed(4), r.pages_needed(4, 1)) == (9, 8, 3, 3)


def test_allocator_runs_hint_and_errors():
    """10 pages: 1..9 free. a=3 -> [1,2,3]; b=2 -> [4,5]; free a -> runs (1,3), (6,4).
    Best fit: 2 pages come from the 3-run [1,2], not the 4-run. A hint extends a block
    table in place. 5 pages with runs of 1 and 4 come as two runs, largest first."""
    a = PageAllocator(10, 4)
    assert a.num_free == 9 and not a.is_free(0)
    pa = a.allocate(3)
    pb = a.allocate(2)
    assert (pa, pb) == ([1, 2, 3], [4, 5])
    a.free(pa)
    assert a.free_runs() == [(1, 3), (6, 4)]
    assert a.allocate(2) == [1, 2]
    assert a.allocate(1, hint=6) == [6]  # page after a block table ending at 5
    assert a.free_runs() == [(3, 1), (7, 3)]
    assert contiguous_runs(a.allocate(4)) == [(7, 3), (3, 1)]
    with pytest.raises(OutOfPages):
        a.allocate(1)
    a.free([8, 9, 7])
    with pytest.raises(ValueError, match="double free"):
        a.free([8])
    with pytest.raises(ValueError, match="outside"):
        a.free([0])
    a.check()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=40))
def test_allocator_matches_a_set_model(ops):
    """Random allocate/free: pages are never handed out twice, a request that fits in one
    free run is served as one contiguous run, and the runs stay consistent."""
    a = PageAllocator(33, 4)
    owned: list[list[int]] = []
    model = set(range(1, 33))
    for alloc, n in ops:
        if alloc:
            if n > a.num_free:
                with pytest.raises(OutOfPages):
                    a.allocate(n)
                continue
            one_run = max((k for _, k in a.free_runs()), default=0) >= n
            pages = a.allocate(n)
            assert len(pages) == n and set(pages) <= model
            assert not one_run or len(contiguous_runs(pages)) == 1
            model -= set(pages)
            owned.append(pages)
        elif owned:
            pages = owned.pop(n % len(owned))
            a.free(pages)
            model |= set(pages)
        a.check()
        assert set(a.free_pages()) == model


# ------------------------------------------------------------------------ skip-join, MLFQ


def test_skip_join_queue_choice():
    """q0 = 10 ms, table {16: 5 ms, 512: 30 ms, 2048: 90 ms}, quanta 10, 20, 40, 80, 160 ms:
    16 -> 5 ms -> queue 0; 512 -> 30 ms -> queue 2; 2048 -> 90 ms -> queue 4;
    264 -> 5 + 25 * 248/496 = 17.5 ms -> queue 1; 4096 -> 90 + 60 * 2048/1536 = 170 ms
    (extrapolated) -> queue 5; 10**6 tokens -> capped at the last queue, 7."""
    table = [(512, 0.03), (16, 0.005), (2048, 0.09)]  # any order
    cfg = config(q0=0.01, prefill_table=table, num_pages=1024)
    assert cfg.prefill_seconds(264) == pytest.approx(0.0175)
    got = [skip_join_queue(cfg, n) for n in (16, 512, 2048, 264, 4096, 10**6)]
    assert got == [0, 2, 4, 1, 5, 7]
    s = make_scheduler("skip_join_mlfq", cfg)
    for n in (16, 512, 2048):
        s.add(req(f"p{n}", n))
    assert [r.queue for r in s.live] == [0, 2, 4]
    plain = make_scheduler("mlfq", cfg)  # plain MLFQ: everyone starts in queue 0
    plain.add(req("p2048", 2048))
    assert plain.live[0].queue == 0


def test_mlfq_demotes_after_quantum():
    """q0 = 0.5 s, every iteration 0.25 s: a job uses queue 0's quantum in 2 iterations
    and queue 1's (1.0 s) in 4 more, queue 2's (2.0 s) in 8 more.
    queue after each iteration: 0 1 1 1 1 2 2 2 2 2 2 2 2 3."""
    s = make_scheduler("mlfq", config(max_batch=1, q0=0.5, num_queues=4))
    a = s.add(req("a", 4))
    queues = []
    for k in range(14):
        step(s, 0.25 * k)
        queues.append(a.queue)
    assert queues == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    for _ in range(40):  # the last queue round-robins: stays at 3
        step(s, 0.0)
    assert a.queue == 3


def test_quantum_charge_own_work():
    """Table {4: 0.1 s, 8: 0.3 s}, q0 = 0.5 s. A (prompt 4) runs alone, then B (prompt 8)
    prefills next to A's decodes in iterations of 0.4 s.
        iter 0: prefill [A]    0.1 s  A charged 0.1 (its own prefill)
        iter 1: prefill [B] + decode [A]  0.4 s  B charged 0.3, A 0.4 - 0.3 = 0.1
        iter 2: decode [A, B]  0.2 s  both 0.2: A 0.4, B 0.5 -> B demoted
    With "iteration", A reaches 0.1 + 0.4 = 0.5 s in iter 1 and is demoted there, then has
    0.2 s of queue 1's quantum used."""
    table = [(4, 0.1), (8, 0.3)]
    for mode, a_used, a_queue in (("own", 0.4, 0), ("iteration", 0.2, 1)):
        s = make_scheduler("mlfq", config(q0=0.5, prefill_table=table, quantum_charge=mode))
        a = s.add(req("a", 4))
        step(s, 0.0, 0.1)
        b = s.add(req("b", 8, arrival=0.1))
        plan = step(s, 0.1, 0.4)
        assert [r.id for r in plan.prefill] == ["b"] and [r.id for r in plan.decode] == ["a"]
        step(s, 0.5, 0.2)
        assert a.queue == a_queue and b.queue == 1
        assert a.quantum_used == pytest.approx(a_used)


def test_quantum_charges_config():
    c = config(prefill_table=[(4, 0.1), (8, 0.3)], quantum_charge="own")
    assert c.charges(0.5, [], 3) == ([], 0.5)  # decode-only: everyone the iteration
    assert c.charges(0.5, [8], 0) == ([0.3], 0.0)
    assert c.charges(0.2, [8, 4], 2) == ([0.2, 0.1], 0.0)  # capped, never negative
    with pytest.raises(ValueError, match="quantum_charge"):
        config(quantum_charge="tokens")


def test_mlfq_preempts_long_job_for_new_short_one():
    """max_batch 1, q0 = 0.5 s, iterations of 0.25 s. L (prompt 8) arrives at 0, S (prompt 4,
    max_new 2) at 0.5.
        iter 0 (t=0):    prefill [L]
        iter 1 (t=0.25): decode  [L]        L used 0.5 s -> queue 1
        iter 2 (t=0.5):  prefill [S]        S in queue 0 wins; L preempted, KV stays on device
        iter 3 (t=0.75): decode  [S]        S emitted 2 tokens: finished
        iter 4 (t=1.0):  decode  [L]        L resumes without a prefill
    """
    s = make_scheduler("mlfq", config(max_batch=1, q0=0.5))
    long_ = s.add(req("L", 8))
    p0, p1 = step(s, 0.0), step(s, 0.25)
    s.add(req("S", 4, max_new=2, arrival=0.5))
    l_pages = list(long_.pages)
    p2, p3, p4 = step(s, 0.5), step(s, 0.75), step(s, 1.0)
    assert [p.summary() for p in (p0, p1, p2, p3, p4)] == [
        "prefill=[L] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[L] out=[] in=[] drop=[]",
        "prefill=[S] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[S] out=[] in=[] drop=[]",
        "prefill=[] decode=[L] out=[] in=[] drop=[]",
    ]
    assert ids(p2.preempted) == ["L"] and long_.preemptions == 1
    assert long_.pages == l_pages and long_.state is State.RUNNING
    assert s.requests["S"].state is State.FINISHED and s.requests["S"].finish_time == 1.0


@pytest.mark.parametrize("promote_every", [4, 0])
def test_starvation_promotion(promote_every):
    """max_batch 1, q0 = 0.5 s, iterations 0.25 s, starve_s 0.4, a check every 4 iterations.
    A long job A arrives at 0; short jobs B, C, D arrive at 0.5, 1.0, 1.5 (each fills queue 0
    for two iterations, so queue 0 is never empty and A, in queue 1, would starve).
        iter 0-1 (t=0, 0.25):  A runs, used 0.5 s -> queue 1 (last ran at t=0.5)
        iter 2-3 (t=0.5, .75): B runs -> queue 1
        iter 4   (t=1.0):      check: A idle 0.5 s > 0.4 -> queue 0, behind C; prefill [C]
        iter 5   (t=1.25):     decode [C] -> queue 1
        iter 6   (t=1.5):      A is ahead of D in queue 0: decode [A]
    Without the guard (promote_every 0), iter 6 is prefill [D] and A stays in queue 1.
    """
    cfg = config(max_batch=1, q0=0.5, starve_s=0.4, promote_every=promote_every)
    s = make_scheduler("mlfq", cfg)
    a = s.add(req("A", 8))
    plans = []
    for k in range(7):
        t = 0.25 * k
        if k in (2, 4, 6):
            s.add(req("BCD"[k // 2 - 1], 4, arrival=t))
        plans.append(step(s, t))
    if promote_every:
        assert plans[4].summary() == "prefill=[C] decode=[] out=[] in=[] drop=[]"
        assert plans[6].summary() == "prefill=[] decode=[A] out=[] in=[] drop=[]"
    else:
        assert plans[6].summary() == "prefill=[D] decode=[] out=[] in=[] drop=[]"
        assert a.queue == 1


# ------------------------------------------------------------------------ vllm, fcfs


def vllm_scenario(**kw) -> tuple[Scheduler, list[Plan]]:
    """page_size 2, 7 usable pages, max_batch 4. A, B, C: prompts of 3 (2 pages each);
    A, B stop after 4 tokens. D (prompt 1) arrives after iter 2.
        iter 0: prefill [A,B,C]             free 1
        iter 1: decode  [A,B,C]             contexts 4: 2 pages each
        iter 2: contexts 5 need 3 pages: A takes the free page; B finds none -> preempt the
                NEWEST, C (KV 4 tokens = 2 pages), B takes one: decode [A,B], C out, free 1
        iter 3: decode [A,B]; C needs 3 pages, 1 free: not resumed, so D (1 page, which
                would fit) is NOT admitted: preempted requests resume first. A, B finish.
        iter 4: 7 free: C resumes (2 pages swapped in + 1 to grow), then D is admitted
    """
    s = make_scheduler("vllm", config(num_pages=8, page_size=2, **kw))
    for k, rid in enumerate("ABC"):
        s.add(req(rid, 3, max_new=4 if rid != "C" else 10, arrival=float(k)))
    plans = [step(s, 0.0), step(s, 1.0), step(s, 2.0)]
    s.add(req("D", 1, max_new=10, arrival=3.0))
    plans += [step(s, 3.0), step(s, 4.0)]
    return s, plans


def test_vllm_preempts_newest_and_resumes_it_before_new_arrivals():
    s, plans = vllm_scenario(preemption="swap")
    assert [p.summary() for p in plans] == [
        "prefill=[A,B,C] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[A,B,C] out=[] in=[] drop=[]",
        "prefill=[] decode=[A,B] out=[C] in=[] drop=[]",
        "prefill=[] decode=[A,B] out=[] in=[] drop=[]",
        "prefill=[D] decode=[C] out=[] in=[C] drop=[]",
    ]
    c = s.requests["C"]
    assert ids(plans[2].preempted) == ["C"] and c.preemptions == 1
    assert len(plans[2].swap_out[0][1]) == 2 and len(plans[4].swap_in[0][1]) == 2
    assert len(c.pages) == 3 and c.pages[:2] == plans[4].swap_in[0][1]


def test_vllm_recompute_mode_drops_and_reprefills():
    """Same schedule with preemption="recompute": C is dropped at iter 2 and re-prefilled
    (prompt 3 + 2 generated = 5 tokens, 3 pages) at iter 4, before D."""
    s, plans = vllm_scenario(preemption="recompute")
    assert plans[2].summary() == "prefill=[] decode=[A,B] out=[] in=[] drop=[C]"
    assert plans[4].summary() == "prefill=[C,D] decode=[] out=[] in=[] drop=[]"


def test_fcfs_admits_by_reserved_pages_and_never_preempts():
    """page_size 4, 8 usable pages. A: prompt 14 + max_new 2 = 16 tokens -> reserves 4 pages.
    B: 4 + 16 = 20 -> 5 pages; C: 1 + 3 = 4 -> 1 page.
        iter 0: prefill [A] (4 pages, free 4); B needs 5: blocked, and C waits behind B
        iter 1: decode [A]; A finishes, its 4 pages return
        iter 2: prefill [B,C] (5 + 1 pages, free 2)
    Pages never grow after admission, nothing is ever preempted."""
    s = make_scheduler("fcfs", config(num_pages=9))
    a = s.add(req("A", 14, max_new=2, arrival=0.0))
    b = s.add(req("B", 4, max_new=16, arrival=1.0))
    s.add(req("C", 1, max_new=3, arrival=2.0))
    plans = [step(s, 0.0)]
    assert a.pages == [1, 2, 3, 4]
    plans += [step(s, 1.0), step(s, 2.0)]
    assert [p.summary() for p in plans] == [
        "prefill=[A] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[A] out=[] in=[] drop=[]",
        "prefill=[B,C] decode=[] out=[] in=[] drop=[]",
    ]
    assert s.allocator.num_free == 2 and len(b.pages) == 5
    t = 3.0
    while not s.done:
        plan = step(s, t)
        assert not (plan.preempted or plan.swap_out or plan.drop) and len(b.pages) in (0, 5)
        t += 1
    assert s.allocator.num_free == 8


# ------------------------------------------------------------------------ KV manager


def test_proactive_swap_out_keeps_the_reserve():
    """mlfq, max_batch 1, page_size 4, 8 usable pages, reserve 2, q0 0.5 s, 0.25 s steps.
    iter 0: prefill [A] (prompt 12: 3 pages, free 5)
    iter 1: decode  [A] (context 13: 4 pages, free 4); A -> queue 1
    iter 2: prefill [B] (B, prompt 8, arrived: 2 pages, free 2 = reserve); A preempted
    iter 3: decode  [B] grows to 3 pages, free 1 < 2: the lowest-priority job not
            running, A, is swapped out (KV 13 tokens = 4 pages), free 5; B -> queue 1
    iter 4: A (queue 1, entered first) is swapped back in and runs: decode [A], in [A]
    """
    s = make_scheduler("mlfq", config(max_batch=1, num_pages=9, q0=0.5, reserve_pages=2))
    a = s.add(req("A", 12, max_new=20))
    plans = [step(s, 0.0), step(s, 0.25)]
    s.add(req("B", 8, max_new=20, arrival=0.5))
    plans += [step(s, 0.5)]
    a_pages = list(a.pages)
    free = [s.allocator.num_free]
    for t in (0.75, 1.0):
        plans.append(step(s, t))
        free.append(s.allocator.num_free)
    assert free == [2, 5, 1]  # after iters 2, 3, 4 (A swapped back into 4 pages)
    assert [p.summary() for p in plans] == [
        "prefill=[A] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[A] out=[] in=[] drop=[]",
        "prefill=[B] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[B] out=[A] in=[] drop=[]",
        "prefill=[] decode=[A] out=[] in=[A] drop=[]",
    ]
    assert plans[3].swap_out[0][1] == a_pages and ids(plans[4].preempted) == ["B"]


@pytest.mark.parametrize("prefetch", [1, 0])
def test_prefetch_swaps_in_the_next_job_ahead_of_time(prefetch):
    """srpt (oracle), max_batch 1, page_size 4, 8 usable pages. Remaining tokens rank:
    C (2 tokens) < B (10) < A (min(output 50, max_new 20) = 20).
        iter 0-1: A alone (prompt 12): 4 pages after iter 1, free 4
        iter 2:   B, C arrive. C (prompt 20, 5 pages) needs more than the 4 free: A is
                  swapped out (4 pages); prefill [C], free 3
        iter 3:   decode [C] (6 pages, free 2): A (4 host pages) cannot be prefetched;
                  C finishes, free 8
        iter 4:   prefill [B] (2 pages, free 6); A is next to run: prefetched, in [A]
    Without prefetch, iter 4 is prefill [B] alone."""
    s = make_scheduler("srpt", config(max_batch=1, num_pages=9, prefetch=prefetch))
    a = s.add(req("A", 12, max_new=20, output_len=50))
    plans = [step(s, 0.0), step(s, 1.0)]
    s.add(req("B", 8, max_new=10, output_len=10, arrival=2.0))
    s.add(req("C", 20, max_new=2, output_len=2, arrival=2.0))
    plans += [step(s, 2.0), step(s, 3.0, finished={"C"}), step(s, 4.0)]
    assert plans[2].summary() == "prefill=[C] decode=[] out=[A] in=[] drop=[]"
    assert plans[3].summary() == "prefill=[] decode=[C] out=[] in=[] drop=[]"
    if prefetch:
        assert plans[4].summary() == "prefill=[B] decode=[] out=[] in=[A] drop=[]"
        assert a.state is State.RUNNING and len(a.pages) == 4  # resident, not in the batch
    else:
        assert plans[4].summary() == "prefill=[B] decode=[] out=[] in=[] drop=[]"
        assert a.state is State.SWAPPED


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_no_swap_in_in_an_iteration_that_swaps_out(mode):
    """mlfq, max_batch 1, page_size 4, 8 usable pages, q0 0.5 s, 0.25 s steps.
    iter 0-1: A (prompt 12) runs: 4 pages, free 4; A -> queue 1
    iter 2:   B (prompt 20, 5 pages) arrives in queue 0: A swapped out; prefill [B]
    iter 3:   decode [B] (6 pages, free 2); B -> queue 1, behind A
    iter 4:   A (SWAPPED) is first and needs 4 pages: B is evicted. With swap, B's KV goes
              out and A may not come in during the same iteration: out [B], no batch.
              With recompute, B is dropped and A is swapped in at once.
    iter 5 (swap): A swapped in and runs: decode [A], in [A]"""
    s = make_scheduler("mlfq", config(max_batch=1, num_pages=9, q0=0.5, preemption=mode))
    s.add(req("A", 12, max_new=20))
    plans = [step(s, 0.0), step(s, 0.25)]
    s.add(req("B", 20, max_new=12, arrival=0.5))
    plans += [step(s, 0.5), step(s, 0.75), step(s, 1.0), step(s, 1.25)]
    if mode == "swap":
        assert plans[2].summary() == "prefill=[B] decode=[] out=[A] in=[] drop=[]"
        assert plans[4].summary() == "prefill=[] decode=[] out=[B] in=[] drop=[]"
        assert plans[5].summary() == "prefill=[] decode=[A] out=[] in=[A] drop=[]"
    else:
        assert plans[2].summary() == "prefill=[B] decode=[] out=[] in=[] drop=[A]"
        assert plans[4].summary() == "prefill=[A] decode=[] out=[] in=[] drop=[B]"
    assert ids(plans[4].preempted) == ["B"]


def test_auto_mode_compares_swap_and_recompute_costs():
    """1000 bytes per page, 1000 prefill tokens/s. A victim with 13 KV tokens (4 pages of 4)
    and context 14: recompute 14 ms. At 1e6 B/s a swap moves 4000 B in 4 ms: swap.
    At 2e5 B/s it takes 20 ms: drop. A tie (14 ms both ways) drops."""
    v = req("v", 12)
    v.num_generated = 2
    for bw, want in ((1e6, "swap"), (2e5, "drop"), (4000 / 0.014, "drop")):
        cfg = config(
            preemption="auto", kv_bytes_per_page=1000, prefill_tokens_per_s=1000, swap_bandwidth=bw
        )
        assert recompute_seconds(cfg, v) == pytest.approx(0.014)
        assert swap_seconds(cfg, v) == pytest.approx(4000 / bw)
        assert victim_mode(cfg, v, host_used=0) == want
    # In the vllm schedule, C (KV 4 tokens = 2 pages of 2, context 5: 5 ms to recompute)
    # is swapped at 1e6 B/s (2 ms) and dropped at 2e5 B/s (10 ms).
    costs = dict(preemption="auto", kv_bytes_per_page=1000, prefill_tokens_per_s=1000)
    _, plans = vllm_scenario(swap_bandwidth=1e6, **costs)
    assert ids(r for r, _ in plans[2].swap_out) == ["C"]
    _, plans = vllm_scenario(swap_bandwidth=2e5, **costs)
    assert ids(plans[2].drop) == ["C"]


def test_host_budget_forces_drop():
    """swap mode with host room for 1 page: C's 2 KV pages do not fit, so C is dropped.
    Budget use is counted: with 3 pages of which 2 are in use, a 2-page victim drops."""
    s, plans = vllm_scenario(preemption="swap", host_pages=1)
    assert ids(plans[2].drop) == ["C"] and not plans[2].swap_out
    v = req("v", 4)
    v.num_generated = 5  # KV 8 tokens: 2 pages of 4
    assert victim_mode(config(host_pages=3), v, host_used=1) == "swap"
    assert victim_mode(config(host_pages=3), v, host_used=2) == "drop"
    assert victim_mode(config(preemption="recompute"), v, host_used=0) == "drop"


# ------------------------------------------------------------------------ reject, cancel


def test_rejects_what_can_never_fit():
    """4 usable pages of 4 = 16 tokens, max_seq_len 64: prompt 10 + 7 new = 17 tokens
    (5 pages) and a 65-token prompt are rejected, reported once, in the next plan;
    prompt 10 + 6 new = 16 tokens fits exactly."""
    s = make_scheduler("vllm", config(num_pages=5, max_seq_len=64))
    big = s.add(req("big", 10, max_new=7))
    long_ = s.add(req("long", 65, max_new=1))
    ok = s.add(req("ok", 10, max_new=6))
    assert big.state is State.REJECTED and long_.state is State.REJECTED
    assert "max_seq_len" in long_.finish_reason and "pages" in big.finish_reason
    assert ok.state is State.WAITING
    assert ids(step(s, 0.0).rejected) == ["big", "long"]
    assert step(s, 1.0).rejected == []
    assert ids(s.rejected) == ["big", "long"]


def test_length_limit_from_max_seq_len():
    """max_seq_len 8, prompt 6, max_new 10: steps need contexts 6, 7, 8; the third token
    makes the next context 9 > 8, so the request finishes with 3 tokens ('length')."""
    s = make_scheduler("mlfq", config(max_seq_len=8))
    r = s.add(req("r", 6, max_new=10))
    while not s.done:
        step(s, 0.0)
    assert (r.num_generated, r.finish_reason) == (3, "length")


def test_cancel_frees_device_and_host_pages():
    """After iter 2 of the vllm schedule C is on host (2 pages), A and B hold 3 pages each.
    Cancelling C releases the host budget; cancelling B while its plan executes frees its
    pages at once and `update` ignores it; then everything is free."""
    s2 = make_scheduler("vllm", config(num_pages=8, page_size=2))
    for k, rid in enumerate("ABC"):
        s2.add(req(rid, 3, max_new=10, arrival=float(k)))
    for t in range(3):
        step(s2, float(t))
    assert s2.host_used == 2 and s2.requests["C"].state is State.SWAPPED
    assert s2.cancel("C", now=3.0) and s2.host_used == 0
    plan = s2.schedule(3.0)
    assert ids(plan.decode) == ["A", "B"]
    assert s2.cancel("B", now=3.1)
    s2.update(3.2, StepResult(0.2))
    s2.check_invariants()
    b = s2.requests["B"]
    assert b.state is State.FINISHED and b.cancelled and b.num_generated == 3 and not b.pages
    assert s2.cancel("A") and not s2.cancel("A")
    assert s2.done and s2.allocator.num_free == 7 and s2.host_used == 0
    s2.check_invariants()


def test_update_contract():
    s = make_scheduler("fcfs", config())
    s.add(req("a", 4))
    s.schedule(0.0)
    with pytest.raises(RuntimeError, match="without update"):
        s.schedule(0.0)
    with pytest.raises(ValueError, match="not in the plan"):
        s.update(1.0, StepResult(1.0, finished={"zzz"}))
    s.schedule(0.0)
    with pytest.raises(ValueError, match="0 tokens in one step"):
        s.update(1.0, StepResult(1.0, tokens={"a": 0}))


def test_commit_counts_tokens_in_flight_and_complete_charges_them():
    """An executor one step ahead: plan 1 is committed (its token in flight), plan 2 is
    scheduled and committed before plan 1's tokens are read. Page needs and length limits see
    the in-flight tokens at once; the stop and the quantum charge come with `complete`.
    Hand-worked with page_size 4: "a" has prompt 3 and max_new 3, "b" prompt 4, max_new 2."""
    s = make_scheduler("mlfq", config(q0=1.0))
    a, b = s.add(req("a", 3, max_new=3)), s.add(req("b", 4, max_new=2))
    p1 = s.schedule(0.0)
    assert [r.id for r in p1.prefill] == ["a", "b"]
    assert s.commit(0.0) == []  # a: 1 of 3 tokens, b: 1 of 2
    p2 = s.schedule(0.0)  # before plan 1's tokens are read
    assert [r.id for r in p2.decode] == ["a", "b"]
    # a's context is 4 tokens (3 + the in-flight one): still one page; b's is 5: two pages
    assert (len(a.pages), len(b.pages)) == (1, 2)
    assert s.commit(0.0) == [b]  # b's second token reaches max_new: "length" at dispatch
    assert b.finish_reason == "length" and b.pages == []
    # plan 1's tokens arrive: a's first token was a stop; the charge goes to live requests
    assert s.complete(p1, 1.0, 0.5, stopped={"a"}) == [a]
    assert a.finish_reason == "stop" and a.pages == []
    assert s.done
    s.check_invariants()


def test_complete_charges_quanta_with_a_lag_of_one_plan():
    s = make_scheduler("mlfq", config(q0=1.0))
    a = s.add(req("a", 3, max_new=10))
    p1 = s.schedule(0.0)
    s.commit(0.0)
    s.schedule(0.0)
    s.commit(0.0)
    assert a.queue == 0
    s.complete(p1, 1.0, 1.0)  # plan 1 took a whole quantum of queue 0
    assert a.queue == 1 and a.quantum_used == 0.0


# ------------------------------------------------------------------------ simulation


def test_skip_join_beats_fcfs_on_one_long_job_then_short_ones():
    """One long job (prompt 512, 200 tokens) then 8 short ones (prompt 16, 4 tokens) arriving
    just after, max_batch 1, iteration = 10 ms + 0.05 ms per token. FCFS makes every short
    job wait for the long one; skip-join MLFQ runs them first. Mean completion time is
    computed by the simulator for both, and MLFQ must be lower."""

    def workload():
        rs = [req("long", 512, max_new=200, output_len=200, arrival=0.0)]
        rs += [
            req(f"s{i}", 16, max_new=4, output_len=4, arrival=0.05 + 0.001 * i) for i in range(8)
        ]
        return rs

    cost = LinearCost(a=0.01, b=5e-5)
    table = [(16, 0.0108), (512, 0.0356)]  # = a + b * tokens
    cfg = config(max_batch=1, num_pages=512, q0=0.01, prefill_table=table)
    jct = {}
    for policy in ("fcfs", "skip_join_mlfq", "mlfq"):
        res = simulate(make_scheduler(policy, cfg), workload(), cost)
        jct[policy] = res.mean_jct()
    assert jct["skip_join_mlfq"] < jct["fcfs"] / 3, jct
    assert jct["mlfq"] < jct["fcfs"] / 3, jct


@st.composite
def workloads(draw):
    """A policy, a config and up to 12 requests. The pool usually just fits the largest
    request (memory pressure without rejections); sometimes it is any size (rejections)."""
    n = draw(st.integers(1, 12))
    rs = [
        Request(
            f"r{i}",
            arrival=draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5])),
            prompt_len=draw(st.integers(1, 24)),
            max_new_tokens=draw(st.integers(1, 16)),
            output_len=draw(st.integers(1, 20)),
        )
        for i in range(n)
    ]
    page_size = draw(st.sampled_from([1, 2, 4, 8]))
    max_seq_len = draw(st.sampled_from([16, 4096, 4096]))
    fits = max(-(-min(r.prompt_len + r.max_new_tokens, max_seq_len) // page_size) for r in rs)
    num_pages = draw(st.one_of(st.integers(fits + 1, fits + 12), st.integers(2, 48)))
    cfg = SchedulerConfig(
        max_batch=draw(st.integers(1, 5)),
        num_pages=num_pages,
        page_size=page_size,
        max_seq_len=max_seq_len,
        preemption=draw(st.sampled_from(["swap", "recompute", "auto"])),
        host_pages=draw(st.sampled_from([None, None, 0, 3, 10])),
        swap_bandwidth=draw(st.sampled_from([1e4, 1e6])),
        prefill_tokens_per_s=1e3,
        kv_bytes_per_page=1000,
        q0=draw(st.sampled_from([0.005, 0.02, 0.1])),
        num_queues=draw(st.integers(1, 5)),
        promote_every=draw(st.sampled_from([0, 1, 3, 20])),
        starve_s=draw(st.sampled_from([0.0, 0.05, 1.0])),
        reserve_pages=draw(st.integers(0, 4)),
        prefetch=draw(st.integers(0, 2)),
        prefill_table=draw(st.sampled_from([None, [(1, 0.011), (64, 0.04)]])),
    )
    return draw(st.sampled_from(sorted(POLICIES))), cfg, rs


def check_plan(s: Scheduler, plan: Plan) -> None:
    s.check_invariants()
    batch = plan.batch
    assert len(batch) <= s.config.max_batch
    assert len({r.id for r in batch}) == len(batch)
    for r in batch:  # every computing request owns the pages its step writes
        assert r.state is State.RUNNING and len(r.pages) >= s.step_pages(r)
    out = {p for _, pages in plan.swap_out for p in pages}
    into = {p for _, pages in plan.swap_in for p in pages}
    assert not (out & into), "swap_in reuses a page of the same plan's swap_out"
    assert not (plan.swap_out and plan.swap_in), "ping-pong"
    for r, pages in plan.swap_in:
        assert r.pages[: len(pages)] == pages
    moved = [r.id for r, _ in plan.swap_out] + [r.id for r in plan.drop]
    assert len(set(moved)) == len(moved) and not set(moved) & {r.id for r in batch}
    if s.policy.name in ("fcfs", "vtc"):
        assert not (plan.preempted or plan.swap_out or plan.drop or plan.swap_in)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_random_workloads_keep_every_invariant(case):
    policy, cfg, requests = case
    s = make_scheduler(policy, cfg)
    total = sum(min(r.output_len, r.max_new_tokens) for r in requests)
    res = simulate(
        s,
        requests,
        LinearCost(a=0.01, b=1e-3),
        max_iterations=50 * (total + 10),
        on_step=check_plan,
    )
    s.check_invariants()
    assert s.done and s.allocator.num_free == cfg.usable_pages and s.host_used == 0
    ended = res.finished_events + res.rejected_events
    assert sorted(ended) == sorted(r.id for r in requests)  # each exactly once
    for r in requests:
        if r.prompt_len > cfg.max_seq_len or s.max_pages(r) > cfg.usable_pages:
            assert r.state is State.REJECTED and r.num_generated == 0
            continue
        assert r.state is State.FINISHED
        want = min(r.output_len, r.max_new_tokens, cfg.max_seq_len - r.prompt_len + 1)
        assert r.num_generated == want, (r, want)
        assert r.first_token_time is not None and r.finish_time >= r.first_token_time


def test_sim_policies_script_compares_every_policy_on_one_trace():
    """The model-free comparison script: every policy finishes the same trace; fcfs, which
    must reserve the whole max_output_len cap per request, is the slowest on a memory-bound
    pool, and the length-knowing srpt oracle beats the policies that do not know lengths."""
    r = subprocess.run(
        [sys.executable, "scripts/sim_policies.py", "--num_requests=150", "--rates=12"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = {
        line.split()[0]: float(line.split()[1])
        for line in r.stdout.splitlines()
        if line.split() and line.split()[0] in POLICIES
    }
    assert set(rows) == set(POLICIES)
    assert rows["fcfs"] == max(rows.values())
    assert rows["srpt"] < min(rows["mlfq"], rows["skip_join_mlfq"], rows["vllm"])
    assert "fcfs/skip_join_mlfq" in r.stdout and "skip_join_mlfq/srpt" in r.stdout


def test_linear_cost_by_hand():
    """a = 1 ms, b = 0.1 ms a decode row, b_prefill = 0.01 ms a prompt token, c = 1 us a
    context token, swaps at 1 MB/s of 1 kB pages. Prefill of 100 tokens next to decodes at
    contexts 51 and 31 (prompts of 50 and 30, one token each): 1 + 0.01 * 100 + 0.1 * 2
    + 0.001 * 82 = 2.282 ms."""
    s = make_scheduler("vllm", config(max_batch=4))
    d1, d2 = s.add(req("d1", 50)), s.add(req("d2", 30))
    step(s, 0.0)  # both prefilled
    assert (d1.context_len, d2.context_len) == (51, 31)
    s.add(req("p", 100, arrival=0.25))
    plan = s.schedule(0.25)
    assert ids(plan.prefill) == ["p"] and ids(plan.decode) == ["d1", "d2"]
    cost = LinearCost(a=1e-3, b=1e-4, b_prefill=1e-5, c=1e-6)
    assert cost.iteration_time(plan) == pytest.approx(2.282e-3)
    # without b_prefill and c, every computed token costs b (the two-parameter model)
    assert LinearCost(a=1e-3, b=1e-4).iteration_time(plan) == pytest.approx(1e-3 + 1e-4 * 102)
    swapping = LinearCost(a=0.0, b=0.0, swap_bandwidth=1e6, kv_bytes_per_page=1000)
    plan.swap_out.append((d1, [1, 2, 3]))
    assert swapping.iteration_time(plan) == pytest.approx(3e-3)
