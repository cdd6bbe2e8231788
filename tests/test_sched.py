"""Scheduler core: packaging, config, rejection, cancel, the schedule/update/commit contract."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sched_helpers import config, ids, req, step

from jaxserve.sched import POLICIES, State, StepResult, make_scheduler

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
