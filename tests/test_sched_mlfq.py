"""Skip-join and plain MLFQ: queue choice, demotion, quantum charges, starvation promotion."""

from __future__ import annotations

import pytest
from sched_helpers import config, ids, req, step

from jaxserve.sched import State, make_scheduler
from jaxserve.sched.policies import skip_join_queue

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
