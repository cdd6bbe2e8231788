"""The `priority` policy: each request's own priority (lower first), ties by arrival, preemptive.

Hand-worked schedules, one line per iteration (`iter k (t=...): <plan>`), asserted with
`Plan.summary()`; every iteration lasts 0.25 s and emits one token per batch request.
"""

from __future__ import annotations

import pytest

from jaxserve.sched import (
    Plan,
    Request,
    Scheduler,
    SchedulerConfig,
    State,
    StepResult,
    make_scheduler,
)


def config(**kw) -> SchedulerConfig:
    fields = dict(max_batch=2, num_pages=64, page_size=4, max_seq_len=4096)
    fields.update(kw)
    return SchedulerConfig(**fields)


def req(rid: str, prompt: int, priority: int, max_new: int = 100, arrival: float = 0.0):
    return Request(rid, arrival, prompt, max_new, priority=priority)


def step(s: Scheduler, t: float) -> str:
    plan: Plan = s.schedule(t)
    s.update(t + 0.25, StepResult(iteration_time=0.25))
    s.check_invariants()
    return plan.summary()


def test_a_better_arrival_takes_the_worst_running_slot():
    """max_batch 2, pages plenty. A and B (priority 5) arrive at 0; at 0.5 come C (priority 1,
    2 tokens) and D (priority 5, so behind A and B: a later equal is no reason to preempt).
        iter 0 (t=0):    prefill [A, B]
        iter 1 (t=0.25): decode  [A, B]
        iter 2 (t=0.5):  prefill [C] decode [A]    order C, A, B, D: B preempted, KV kept
        iter 3 (t=0.75): decode  [C, A]            C's second token: finished
        iter 4 (t=1.0):  decode  [A, B]            B resumes without a prefill; D waits
    """
    s = make_scheduler("priority", config())
    a, b = s.add(req("A", 4, 5)), s.add(req("B", 4, 5))
    plans = [step(s, 0.0), step(s, 0.25)]
    b_pages = list(b.pages)
    s.add(req("C", 4, 1, max_new=2, arrival=0.5))
    d = s.add(req("D", 4, 5, arrival=0.5))
    plans += [step(s, 0.5), step(s, 0.75), step(s, 1.0)]
    assert plans == [
        "prefill=[A,B] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[A,B] out=[] in=[] drop=[]",
        "prefill=[C] decode=[A] out=[] in=[] drop=[]",
        "prefill=[] decode=[C,A] out=[] in=[] drop=[]",
        "prefill=[] decode=[A,B] out=[] in=[] drop=[]",
    ]
    assert s.requests["C"].state is State.FINISHED and s.requests["C"].finish_time == 1.0
    assert b.preemptions == 1 and a.preemptions == 0 and b.pages == b_pages
    assert d.state is State.WAITING


def test_a_better_arrival_evicts_the_worst_resident_when_pages_run_short():
    """5 usable pages of 4 tokens, max_batch 4, swap. A and B (priority 5, prompt 6: 2 pages
    each, 8 tokens) arrive at 0; C (priority 0, prompt 8: 2 pages, 2 tokens) at 0.5.
        iter 0 (t=0):    prefill [A, B]                 1 page free
        iter 1 (t=0.25): decode  [A, B]                 contexts 7: still 2 pages each
        iter 2 (t=0.5):  C needs 2 > 1 free: the worst resident, B, swaps out (2 pages);
                         prefill [C] decode [A] out [B]  (A's context 8 fits its 2 pages)
        iter 3 (t=0.75): C (context 9) takes the last page; A needs a third page and only
                         C ranks above it: A is left out, KV kept. decode [C]: C finished
        iter 4 (t=1.0):  C's 3 pages free: A grows to 3, B swaps back into 2. decode [A, B]
    """
    s = make_scheduler("priority", config(max_batch=4, num_pages=6, preemption="swap"))
    a, b = s.add(req("A", 6, 5, max_new=8)), s.add(req("B", 6, 5, max_new=8))
    plans = [step(s, 0.0), step(s, 0.25)]
    assert s.allocator.num_free == 1
    s.add(req("C", 8, 0, max_new=2, arrival=0.5))
    plans.append(step(s, 0.5))
    assert b.state is State.SWAPPED and b.host_pages == 2
    plans += [step(s, 0.75), step(s, 1.0)]
    assert plans == [
        "prefill=[A,B] decode=[] out=[] in=[] drop=[]",
        "prefill=[] decode=[A,B] out=[] in=[] drop=[]",
        "prefill=[C] decode=[A] out=[B] in=[] drop=[]",
        "prefill=[] decode=[C] out=[] in=[] drop=[]",
        "prefill=[] decode=[A,B] out=[] in=[B] drop=[]",
    ]
    assert s.requests["C"].finish_time == 1.0
    assert a.num_generated == 4 and b.num_generated == 3
    assert (a.preemptions, b.preemptions) == (1, 1)


def test_equal_priorities_are_fcfs_and_lower_values_run_first():
    """max_batch 1: four requests arriving together in the order W(3), X(-1), Y(3), Z(0) run
    one after another as X, Z, W, Y (priority, then arrival), each to completion."""
    s = make_scheduler("priority", config(max_batch=1))
    for rid, p in (("W", 3), ("X", -1), ("Y", 3), ("Z", 0)):
        s.add(req(rid, 4, p, max_new=2))
    ran = []
    t = 0.0
    while not s.done:
        plan = s.schedule(t)
        ran += [r.id for r in plan.batch]
        s.update(t + 0.25, StepResult(iteration_time=0.25))
        t += 0.25
    assert ran == ["X", "X", "Z", "Z", "W", "W", "Y", "Y"]


def test_priority_must_be_an_int():
    s = make_scheduler("priority", config())
    with pytest.raises(ValueError, match="priority must be an int"):
        s.add(Request("A", 0.0, 4, 4, priority=1.5))


def test_trace_priority_column_round_trips_and_is_checked(tmp_path):
    """An optional `priority` per line (default 0, written back); a non-integer names the line."""
    from jaxserve import workload as wl
    from jaxserve.workload.request import TraceRequest

    reqs = [TraceRequest("a", 0.0, 3, 2, priority=-2), TraceRequest("b", 1.0, 3, 2)]
    path = tmp_path / "t.jsonl"
    wl.write_trace(path, reqs)
    assert [r.priority for r in wl.read_trace(path)] == [-2, 0]
    path.write_text(
        '{"arrival": 0, "output_len": 2, "prompt_len": 3}\n'
        '{"arrival": 1, "output_len": 2, "prompt_len": 3, "priority": "high"}\n'
    )
    with pytest.raises(wl.WorkloadError, match=r"t.jsonl:2: priority must be an integer"):
        wl.read_trace(path)


def test_trace_replay_passes_each_requests_priority_to_the_engine():
    """`experiments.serve`'s replay submits a trace line's priority with its request: under
    `priority` with one batch slot, the later, better request is served first."""
    from conftest import random_model, tiny_config

    from jaxserve.engine import Engine
    from jaxserve.serve_trace import PreparedTrace, replay_trace
    from jaxserve.workload.request import TraceRequest

    model = random_model(tiny_config(vocab_size=128))
    engine = Engine(model, "priority", config(max_batch=1, max_seq_len=64))
    reqs = [
        TraceRequest("low", 0.0, 4, 6, priority=3),
        TraceRequest("mid", 0.0, 4, 6, priority=2),
        TraceRequest("high", 0.0, 4, 6, priority=-1),
    ]
    prompts = {r.id: [5, 6, 7, 8] for r in reqs}
    trace = PreparedTrace(1.0, reqs, prompts, {r.id: 6 for r in reqs}, {})
    replay_trace(engine, trace, max_output_len=6)
    order = sorted(reqs, key=lambda r: engine.timelines[r.id].finish_time)
    assert [r.id for r in order] == ["high", "mid", "low"]
