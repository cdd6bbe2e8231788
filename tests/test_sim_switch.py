"""The simulator's context-switch model (`jaxserve.sim.switch`): FastSwitch's mechanisms priced
copy by copy, worked by hand. Swap time here is 1 ms per page (1000-byte pages at 1 MB/s)."""

from __future__ import annotations

import pytest
from sched_helpers import config

from jaxserve.sched import Plan, Request
from jaxserve.sim.cost import LinearCost
from jaxserve.sim.loop import SYNC
from jaxserve.sim.run import simulate_trace
from jaxserve.sim.switch import Switch, SwitchState, switch_for
from jaxserve.workload import TraceRequest

COST = LinearCost(a=0.01, b=0.001, b_prefill=0.002, swap_bandwidth=1e6, kv_bytes_per_page=1000)


def state(switch: Switch, **kw) -> SwitchState:
    return SwitchState(switch, COST, page_size=4, kv_bytes_per_page=1000, **kw)


def running(rid: str, prompt: int, generated: int) -> Request:
    r = Request(rid, 0.0, prompt, 100)
    r.num_generated = generated
    return r


def test_a_swap_is_cut_into_copies_as_the_transfer_mode_says():
    """Pages [3, 4, 5, 9], 4 copies per transfer at 0.1 ms each: one gathered copy
    (4 ms + 0.4 ms), two runs (3 ms + 1 ms + 2 x 0.4 ms), four pages (4 x 1 ms + 4 x 0.4 ms)."""
    pages = [3, 4, 5, 9]
    want = {"gather": 4.4e-3, "groups": 4.8e-3, "pages": 5.6e-3}
    for transfer, seconds in want.items():
        s = state(Switch(transfer=transfer, copies=4, copy_latency=1e-4))
        assert s.transfer_time(pages, "a") == pytest.approx(seconds)
        assert s.bytes_copied == 4000 and s.per_request["a"] == (4000, pytest.approx(seconds))
    base, full = switch_for("baseline", copies=64, copy_latency=2e-6), switch_for("all", 64)
    assert (base.transfer, base.sync, base.reuse, base.copies) == ("pages", True, False, 64)
    assert (full.transfer, full.sync, full.reuse, full.copies) == ("gather", False, True, 1)
    with pytest.raises(ValueError, match="unknown switch"):
        switch_for("fast")


def test_sync_swaps_add_to_the_call_async_swap_outs_hide_under_it():
    """A decode call of 2 ms that swaps out a 4-page request (4 ms): waited for, 6 ms with 4
    stalled; overlapped, 4 ms with 2 stalled. A swap-in always precedes the compute."""
    for sync, seconds, stall in ((True, 6e-3, 4e-3), (False, 4e-3, 2e-3)):
        s = state(Switch(sync=sync, reuse=False))
        plan = Plan(decode=[running("d", 8, 1)], swap_out=[(running("a", 10, 3), [1, 2, 3, 4])])
        assert s.price(plan, 1, lambda p, k: 2e-3) == pytest.approx(seconds)
        assert s.stall == pytest.approx(stall)
        plan = Plan(decode=[running("d", 8, 2)], swap_in=[(running("a", 10, 3), [5, 6])])
        assert s.price(plan, 1, lambda p, k: 2e-3) == pytest.approx(4e-3)


def test_with_reuse_a_second_swap_out_copies_only_what_the_host_lacks():
    """a (13 tokens: 12 with KV, 3 full pages) is swapped out, in, grows to 18 tokens and is
    swapped out again: the second copy moves pages 4 and 5 only (2 ms, 3 pages saved);
    without reuse all 5 (5 ms)."""
    for reuse, second, saved in ((True, 2e-3, 3000), (False, 5e-3, 0)):
        s = state(Switch(reuse=reuse))
        a = running("a", 10, 3)
        nothing = lambda p, k: 0.0  # noqa: E731
        assert s.price(Plan(swap_out=[(a, [1, 2, 3, 4])]), 1, nothing) == pytest.approx(4e-3)
        assert s.price(Plan(swap_in=[(a, [7, 8, 9, 10])]), 1, nothing) == pytest.approx(4e-3)
        a.num_generated = 8
        out = Plan(swap_out=[(a, [7, 8, 9, 10, 11])])
        assert s.price(out, 1, nothing) == pytest.approx(second)
        assert s.bytes_saved == saved
        assert s.per_request["a"][0] == 8000 + int(second * 1e6)
        s.price(Plan(drop=[a]), 1, nothing)  # a dropped request's host copy is gone
        assert "a" not in s.host_valid


def test_the_next_turn_swaps_in_the_kept_kv_and_prefills_only_its_new_tokens():
    """Turn 1 (prompt 8, 4 tokens out) ends with KV for 11 tokens in 3 pages; turn 2 (prompt
    20) arrives 0.5 s later. Its prefill call, with reuse: turn 1's 3 pages copied out
    (3 ms, overlapped by the compute), 3 pages in (3 ms), 9 new tokens (10 ms + 9 x 2 ms):
    TTFT 31 ms. Without reuse, or without the switch model: the whole prompt, 50 ms."""
    trace = [
        TraceRequest("t0", 0.0, 8, 4, conversation="c", turn=0),
        TraceRequest("t1", 0.5, 20, 3, conversation="c", turn=1),
    ]
    cfg = config(page_size=4, num_pages=64, max_batch=4, kv_bytes_per_page=1000)
    ttft = {}
    for name, sw in (("reuse", switch_for("all")), ("async", switch_for("async")), ("none", None)):
        records, (res,) = simulate_trace("fcfs", trace, cfg, COST, SYNC, 64, switch=sw)
        t1 = records[1]
        ttft[name] = t1.first_token_time - t1.arrival
        if name == "reuse":
            assert res.switch["prompt_tokens_reused"] == 11
            # turn 1 out, turn 1 in, and turn 2's own 22 tokens (6 pages) out when it ends
            assert res.switch["bytes_copied"] == 12000
            assert t1.swapped_bytes == 9000 and records[0].swapped_bytes == 3000
    assert ttft["reuse"] == pytest.approx(0.031)
    assert ttft["async"] == pytest.approx(0.05) and ttft["none"] == pytest.approx(0.05)


def test_kept_conversations_beyond_the_host_budget_go_least_recently_used_first():
    """A budget of 5 host pages: b's 3 pages after a's 3 evict a; c's turn takes nothing."""
    s = state(switch_for("all"), host_pages=5, conversation={"a0": "a", "b0": "b", "a1": "a"})
    s.finished(running("a0", 8, 4), [1, 2, 3], tokens=11)
    s.finished(running("b0", 8, 4), [4, 5, 6], tokens=11)
    assert list(s.kept) == ["b"]
    assert s._take(Request("a1", 1.0, 20, 5)) == 0


def test_simulated_records_carry_preemptions_copies_and_stalls():
    """vllm on a pool too small for three growing requests swaps some out: each record's
    preemptions are its swap-outs, its bytes are its copies, and with waited-for swaps
    every request in a call that copied stalled for the copy."""
    from jaxserve.sched import Scheduler
    from jaxserve.sim.loop import simulate

    cfg = config(page_size=4, num_pages=9, max_batch=4, kv_bytes_per_page=1000)
    reqs = [Request(f"r{i}", 0.01 * i, 6, 10, output_len=10) for i in range(3)]
    outs: dict[str, int] = {}

    def count(sched, plan):
        for r, _ in plan.swap_out:
            outs[r.id] = outs.get(r.id, 0) + 1

    sw = SwitchState(switch_for("baseline"), COST, 4, 1000)
    res = simulate(Scheduler(cfg, "vllm"), reqs, COST, on_step=count, switch=sw)
    recs = res.records
    assert sum(outs.values()) > 0
    assert {rid: rec.preemptions for rid, rec in recs.items() if rec.preemptions} == outs
    assert all(recs[rid].swapped_bytes == sw.per_request[rid][0] for rid in outs)
    assert all(recs[rid].stall_time > 0 for rid in recs)
