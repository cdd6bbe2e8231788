"""The simulator: policies compared, invariants on random workloads, the linear cost model."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import config, ids, req, step

from jaxserve.sched import (
    POLICIES,
    Plan,
    Request,
    Scheduler,
    SchedulerConfig,
    State,
    make_scheduler,
)
from jaxserve.sched.simloop import LinearCost, simulate

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
