"""The engine on a tiny random model: preemption, overlap, multi-step decode change no output."""

from __future__ import annotations

import pytest
from engine_helpers import PAGE, _config, _serve, _workload

from jaxserve.engine import Engine
from jaxserve.generate import Generator
from jaxserve.sampling import SamplingParams


@pytest.mark.parametrize("policy", ["vllm", "mlfq", "skip_join_mlfq"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_swap_preemption_does_not_change_outputs(model, runner, policy, temperature):
    """Swaps are dispatched and never waited for: the engine's host loop spends no time
    waiting on them, and each request's swap time is its bytes over the profiled bandwidth."""
    prompts, lens = _workload()
    _, ref = _serve(model, runner, "fcfs", _config(200), prompts, lens, temperature)
    # 24 pages cannot hold 8 requests of up to ~50 tokens: jobs are swapped out and back
    engine, out = _serve(model, runner, policy, _config(24), prompts, lens, temperature)
    assert out == ref
    assert sum(len(v) for v in out.values()) == sum(lens)
    assert sum(t.preemptions for t in engine.timelines.values()) > 0
    assert sum(t.swapped_bytes for t in engine.timelines.values()) > 0
    bw = engine.sched_config.swap_bandwidth
    for t in engine.timelines.values():
        assert t.swap_time == pytest.approx(t.swapped_bytes / bw)
        assert t.stall_time == 0.0
    assert engine.swap_wait == 0.0


@pytest.mark.parametrize("switch", ["baseline", "block_groups"])
def test_switch_ablations_change_no_output(model, runner, switch):
    """Per-page and block-group transfers, each swap waited for: same tokens, and the waits
    are counted."""
    from jaxserve.serve import SWITCHES

    prompts, lens = _workload(seed=2)
    _, ref = _serve(model, runner, "fcfs", _config(200), prompts, lens)
    engine, out = _serve(model, runner, "vllm", _config(24), prompts, lens, **SWITCHES[switch])
    assert out == ref
    assert engine.host.transfer == SWITCHES[switch]["swap_transfer"]
    assert sum(t.preemptions for t in engine.timelines.values()) > 0
    assert engine.swap_wait > 0 and sum(t.stall_time for t in engine.timelines.values()) > 0


def test_recompute_preemption_agrees(model, runner):
    prompts, lens = _workload(seed=1)
    _, ref = _serve(model, runner, "fcfs", _config(200), prompts, lens)
    engine, out = _serve(model, runner, "vllm", _config(24, "recompute"), prompts, lens)
    assert sum(t.preemptions for t in engine.timelines.values()) > 0
    same = sum(a == b for k in ref for a, b in zip(ref[k], out[k]))
    assert same / sum(lens) >= 0.99


def test_engine_matches_generator(model, runner):
    prompts, lens = _workload(4, seed=2)
    _, out = _serve(model, runner, "fcfs", _config(200), prompts, [12] * 4)
    gen = Generator(model, page_size=PAGE, chunk=4).generate(prompts, SamplingParams(12))
    assert [out[f"r{i}"] for i in range(4)] == [c.token_ids for c in gen]


def _serve_with_stop(model, runner, policy, pages, prompts, lens, k, stop, **engine_kw):
    engine = Engine(model, policy, _config(pages), runner=runner, **engine_kw)
    for i, (p, n) in enumerate(zip(prompts, lens)):
        stops = (stop,) if f"r{i}" == k else ()
        engine.submit(
            p, SamplingParams(max_new_tokens=n, stop_token_ids=stops, seed=5), request_id=f"r{i}"
        )
    engine.run_until_done(max_iterations=5000)
    engine.scheduler.check_invariants()
    assert engine.scheduler.allocator.num_free == pages - 1
    assert (
        not engine.device.resident and engine.device.num_free_slots == pages - 1
    )  # every slot back
    return engine, {f"r{i}": engine.output(f"r{i}") for i in range(len(prompts))}


@pytest.mark.parametrize("pages", [200, 24])
@pytest.mark.parametrize("policy", ["fcfs", "skip_join_mlfq", "srpt"])
def test_overlap_and_multi_step_decode_change_no_output(model, runner, policy, pages):
    """Planning one step ahead (the scheduler sees a step's tokens an iteration late) and
    several decode steps per device call give the tokens of the synchronous loop, also when a
    request stops early on a token (its extra step is never emitted) and when the plan keeps
    changing (preemption, with 24 pages)."""
    prompts, lens = _workload(4, seed=4)
    _, ref = _serve(model, runner, policy, _config(pages), prompts, lens, overlap=False)
    k = max(ref, key=lambda r: len(ref[r]))  # the longest request stops halfway, on a token
    stop = ref[k][len(ref[k]) // 2]
    args = (model, runner, policy, pages, prompts, lens, k, stop)
    _, sync = _serve_with_stop(*args, overlap=False)
    one, ahead = _serve_with_stop(*args, overlap=True, decode_steps=1)
    multi, chunked = _serve_with_stop(*args, overlap=True, decode_steps=4)
    assert sync == ahead == chunked
    assert sync[k] == ref[k][: ref[k].index(stop) + 1]
    assert all(sync[r] == ref[r] for r in ref if r != k)
    assert one.decode_calls > multi.decode_calls  # some calls ran several steps
    if pages == 200:  # no preemption: every step of a long decode-only stretch is chunked
        assert multi.decode_calls < 0.6 * one.decode_calls


def test_a_stopped_request_gets_one_extra_step_that_is_never_emitted(model, runner):
    """With the host a step behind, the step after a stop token is already dispatched when
    the stop is read: the request is in it, its token is dropped, its pages and slot come
    back, and the other request is unaffected."""
    prompts, _ = _workload(2, seed=5)
    _, ref = _serve(model, runner, "fcfs", _config(60), prompts, [16, 16], overlap=False)
    i = next(i for i in range(3, 16) if ref["r0"][i] not in ref["r0"][:i])
    stop = ref["r0"][i]  # a token r0 first emits as its (i+1)-th
    engine = Engine(model, "fcfs", _config(60), runner=runner, decode_steps=1)
    engine.submit(prompts[0], SamplingParams(16, stop_token_ids=(stop,), seed=5), "r0")
    engine.submit(prompts[1], SamplingParams(16, seed=5), "r1")
    dispatched = []  # r0's presence in each committed (dispatched) plan
    commit = engine.scheduler.commit

    def spy(*args, **kw):
        dispatched.append(any(r.id == "r0" for r in engine.scheduler._inflight.batch))
        return commit(*args, **kw)

    engine.scheduler.commit = spy
    events = []
    while engine.has_work:
        events += engine.step()
    out = engine.output("r0")
    assert out == ref["r0"][: i + 1]
    assert engine.output("r1") == ref["r1"]
    assert [e.token for e in events if e.kind == "token" and e.request_id == "r0"] == out
    # its prefill, i decode steps, and the one dispatched before the stop was read
    assert sum(dispatched) == len(out) + 1
    assert engine.scheduler.allocator.num_free == 60 - 1 and not engine.device.resident


@pytest.fixture(scope="module")
def tight_mlfq(model, runner):
    """(reference outputs, engine, outputs): a workload served without preemption, and by
    mlfq on a pool of 24 pages, where requests are swapped out, in and out again."""
    prompts, lens = _workload(seed=3)
    _, ref = _serve(model, runner, "fcfs", _config(200), prompts, lens)
    engine, out = _serve(model, runner, "mlfq", _config(24), prompts, lens)
    return ref, engine, out


def test_swap_outs_copy_only_pages_not_on_the_host(tight_mlfq):
    """Requests swapped out, in and out again: each later swap-out moves only the pages
    written since its swap-in (the full pages stay on the host), outputs equal the run
    without preemption, and no host copy outlives its request."""
    ref, engine, out = tight_mlfq
    assert out == ref
    switch = engine.switch
    out_bytes = switch.bytes_out
    assert switch.bytes_not_copied > 0 and out_bytes > 0
    assert engine.host.live_bytes == 0 and not switch.on_host and not switch.swapped


@pytest.mark.parametrize("failure", ["budget", "raises"])
def test_a_swap_the_host_cannot_hold_drops_its_request(model, runner, tight_mlfq, failure):
    """Host memory runs out (a budget of 6 pages, or an allocation that raises): the victim
    is dropped instead, the engine goes on, and every request finishes with the output of
    the run without preemption."""
    prompts, lens = _workload(seed=3)
    ref = tight_mlfq[0]
    kv = runner.new_kv(2, PAGE)
    page = kv.nbytes // kv.num_pages
    kw = {"host_bytes": 6 * page} if failure == "budget" else {}
    engine = Engine(model, "mlfq", _config(24), runner=runner, **kw)
    if failure == "raises":
        real, calls = engine.host.swap_out, []

        def swap_out(kv, pages):  # every other allocation fails
            calls.append(len(pages))
            if len(calls) % 2:
                raise MemoryError("host allocation failed")
            return real(kv, pages)

        engine.host.swap_out = swap_out
    for i, (p, n) in enumerate(zip(prompts, lens)):
        engine.submit(p, SamplingParams(max_new_tokens=n, seed=5), request_id=f"r{i}")
    engine.run_until_done(max_iterations=5000)
    assert {i: engine.output(i) for i in ref} == ref
    kinds = [k for tl in engine.timelines.values() for k in tl.preempt_kinds]
    assert engine.switch.fallbacks > 0 and "drop" in kinds and "swap" in kinds
    engine.scheduler.check_invariants()
    assert engine.scheduler.allocator.num_free == 24 - 1 and engine.host.live_bytes == 0


def test_preempt_and_resume_times_are_recorded_in_async_mode(tight_mlfq):
    """Overlapped loop, asynchronous swaps: every preemption has its time and kind, every
    resume its time (after the preemption it ends), kind and measured cost."""
    from jaxserve.events import preemption_summary

    engine = tight_mlfq[1]
    assert engine.overlap and not engine.sync_swaps
    tls = list(engine.timelines.values())
    assert sum(tl.preemptions for tl in tls) > 0
    for tl in tls:
        assert len(tl.preempt_times) == len(tl.preempt_kinds) == tl.preemptions
        # every preempted request here computed again, and each resume's step was read
        assert len(tl.resume_times) == len(tl.resume_costs) == tl.preemptions
        for p, r in zip(tl.preempt_times, tl.resume_times):
            assert tl.arrival <= p < r <= tl.finish_time
        later = tl.preempt_times[1:] + [tl.finish_time]
        assert all(r <= q for r, q in zip(tl.resume_times, later))
        assert all(c > 0 for c in tl.resume_costs)
        for pk, rk in zip(tl.preempt_kinds, tl.resume_kinds):
            assert (pk, rk) in {("swap", "swap"), ("pause", "pause"), ("pause", "swap")}
    summary = preemption_summary(tls)
    n = sum(tl.preemptions for tl in tls)
    assert summary["preempt_to_resume"]["n"] == summary["resume_cost"]["n"] == n


def test_preemption_summary_by_hand():
    from jaxserve.events import Timeline, preemption_record, preemption_summary

    a = Timeline("a", 0.0, 4, preempt_times=[1.0, 5.0], preempt_kinds=["swap", "drop"])
    a.resume_times, a.resume_kinds, a.resume_costs = [2.0, 9.0], ["swap", "recompute"], [0.1, 0.5]
    b = Timeline("b", 0.0, 4, preempt_times=[3.0], preempt_kinds=["pause"])  # never resumed
    s = preemption_summary([a, b])
    assert s["preempt_to_resume"]["n"] == 2 and s["preempt_to_resume"]["mean"] == 2.5
    assert s["preempt_to_resume"]["max"] == 4.0 and s["resume_cost"]["mean"] == 0.3
    assert s["resumes_by_kind"]["recompute"]["preempt_to_resume"]["mean"] == 4.0
    assert s["resumes_by_kind"]["swap"]["resume_cost"]["mean"] == 0.1
    assert preemption_record(a)["preempted_for"] == [1.0, 4.0]
    assert preemption_record(b)["preempted_for"] == []
