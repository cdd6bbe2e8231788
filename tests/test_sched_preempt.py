"""vllm and fcfs preemption; the KV manager: reserve, prefetch, swap or recompute, host room."""

from __future__ import annotations

import pytest
from sched_helpers import config, ids, req, step

from jaxserve.sched import Plan, Scheduler, State, make_scheduler
from jaxserve.sched.preempt import recompute_seconds, swap_seconds, victim_mode

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
