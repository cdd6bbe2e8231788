"""The engine on a real (tiny, random) model: preemption must not change outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import engine_config, random_model, tiny_config

from jaxserve.engine import Engine, UnknownRequestError
from jaxserve.generate import Generator
from jaxserve.runner import CompileCounter, ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.sched import SchedulerConfig
from jaxserve.sched.request import pages_for

PAGE = 4


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=11)


@pytest.fixture(scope="module")
def runner(model):
    return ModelRunner(model)


def _config(num_pages: int, preemption: str = "swap", **kw) -> SchedulerConfig:
    return engine_config(num_pages, preemption, PAGE, **kw)


def _workload(n: int = 8, seed: int = 0):
    rs = np.random.RandomState(seed)
    prompts = [[int(t) for t in rs.randint(3, 128, rs.randint(3, 20))] for _ in range(n)]
    lens = [int(x) for x in rs.randint(5, 30, n)]
    return prompts, lens


def _serve(model, runner, policy, config, prompts, lens, temperature=0.0, **engine_kw):
    engine = Engine(model, policy, config, runner=runner, **engine_kw)
    ids = [
        engine.submit(
            p,
            SamplingParams(max_new_tokens=n, temperature=temperature, seed=5),
            request_id=f"r{i}",
            output_len=n,
        )
        for i, (p, n) in enumerate(zip(prompts, lens))
    ]
    engine.run_until_done(max_iterations=5000)
    assert not engine.has_work
    engine.scheduler.check_invariants()
    return engine, {i: engine.output(i) for i in ids}


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


def test_trace_replay_stops_at_output_len_but_plans_with_the_cap(model, runner):
    """A replayed request ends at its trace length ("stop", an emulated EOS); fcfs (Orca)
    cannot know that length, so it reserves pages for the whole max_new_tokens cap."""
    engine = Engine(model, "fcfs", _config(40), runner=runner)
    rid = engine.submit(
        [5, 6, 7], SamplingParams(max_new_tokens=40), output_len=6, stop_at_output_len=True
    )
    engine.step()  # prefill: admission reserved prompt + cap = 43 tokens = 11 pages
    assert len(engine.scheduler.requests[rid].pages) == -(-(3 + 40) // PAGE)
    engine.run_until_done(max_iterations=100)
    assert len(engine.output(rid)) == 6
    assert engine.timelines[rid].finish_reason == "stop"
    with pytest.raises(ValueError, match="stop_at_output_len needs an output_len"):
        engine.submit([5], SamplingParams(max_new_tokens=4), stop_at_output_len=True)


def test_stream_events_and_cancel(model, runner):
    engine = Engine(model, "mlfq", _config(40), runner=runner)
    a = engine.submit([5, 6, 7], SamplingParams(max_new_tokens=10))
    b = engine.submit([8, 9], SamplingParams(max_new_tokens=50))
    streamed = list(engine.stream(a))
    assert streamed == engine.output(a) and len(streamed) == 10
    assert engine.timelines[a].finish_reason == "length"
    assert len(engine.output(b)) > 0
    engine.cancel(b)
    assert engine.timelines[b].finish_reason == "cancelled"
    assert not engine.has_work
    assert engine.scheduler.allocator.num_free == 40 - 1  # every page back (page 0 reserved)
    engine.scheduler.check_invariants()


def test_stop_tokens_and_events(model, runner):
    engine = Engine(model, "fcfs", _config(60), runner=runner)
    free = engine.submit([5, 6, 7], SamplingParams(max_new_tokens=15))
    engine.run_until_done()
    stop = engine.output(free)[4]
    engine2 = Engine(model, "fcfs", _config(60), runner=runner)
    r = engine2.submit([5, 6, 7], SamplingParams(max_new_tokens=15, stop_token_ids=(stop,)))
    events = []
    while engine2.has_work:
        events += engine2.step()
    out = engine2.output(r)
    assert out == engine.output(free)[: engine.output(free).index(stop) + 1]
    assert [e.kind for e in events].count("finish") == 1
    assert [e.token for e in events if e.kind == "token"] == out
    assert engine2.scheduler.allocator.num_free == 60 - 1


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


def test_cancel_with_tokens_in_flight(model, runner):
    """A request cancelled while its step is in flight emits nothing more; the survivor's
    tokens are those of the synchronous loop, and every page and slot comes back."""
    prompts, _ = _workload(2, seed=5)
    _, ref = _serve(model, runner, "fcfs", _config(60), prompts, [16, 16], overlap=False)
    engine = Engine(model, "fcfs", _config(60), runner=runner, decode_steps=4)
    for i, p in enumerate(prompts):
        engine.submit(p, SamplingParams(max_new_tokens=16, seed=5), request_id=f"r{i}")
    for _ in range(3):
        engine.step()
    assert engine._inflight is not None and "r1" in {r.id for r in engine._inflight.plan.batch}
    seen = len(engine.output("r1"))
    engine.cancel("r1")
    engine.run_until_done(max_iterations=100)
    assert len(engine.output("r1")) == seen
    assert engine.output("r0") == ref["r0"]
    assert engine.scheduler.allocator.num_free == 60 - 1 and not engine.device.resident


def test_release_forgets_ended_requests_even_with_tokens_in_flight(model, runner):
    prompts, lens = _workload(3, seed=6)
    _, ref = _serve(model, runner, "fcfs", _config(60), prompts, [12] * 3, overlap=False)
    engine = Engine(model, "fcfs", _config(60), runner=runner, decode_steps=4)
    for i, p in enumerate(prompts):
        engine.submit(p, SamplingParams(max_new_tokens=12, seed=5), request_id=f"r{i}")
    for _ in range(3):
        engine.step()
    with pytest.raises(ValueError, match="has not ended"):
        engine.release("r0")
    engine.cancel("r1")  # its step is in flight: its tokens are dropped when they arrive
    assert "r1" in {r.id for r in engine._inflight.plan.batch}
    engine.release("r1")
    assert "r1" not in engine.timelines and "r1" not in engine.scheduler.requests
    engine.run_until_done(max_iterations=100)
    for rid in ("r0", "r2"):
        assert engine.output(rid) == ref[rid]
        engine.release(rid)
    assert not engine.timelines and not engine.scheduler.requests and not engine.device.resident
    assert engine.scheduler.allocator.num_free == 60 - 1
    with pytest.raises(UnknownRequestError):
        engine.release("r0")
    # the id can be used again
    engine.submit(prompts[0], SamplingParams(max_new_tokens=3), request_id="r0")
    engine.run_until_done(max_iterations=50)
    assert len(engine.output("r0")) == 3


def test_no_recompilation_once_buckets_are_warm(model, runner):
    prompts, lens = _workload(seed=3)
    Engine(model, "fcfs", _config(24), runner=runner).warmup(20, 50)
    Engine(model, "fcfs", _config(200), runner=runner).warmup(20, 50)
    before = CompileCounter.count()
    for policy in ("skip_join_mlfq", "vllm"):
        engine, _ = _serve(model, runner, policy, _config(24), prompts, lens)
        assert sum(t.preemptions for t in engine.timelines.values()) > 0
    engine, _ = _serve(model, runner, "fcfs", _config(200), prompts, lens)
    assert engine.decode_calls < sum(lens) - len(lens)  # multi-step programs were warmed too
    assert CompileCounter.count() == before


def test_submit_errors(model, runner):
    engine = Engine(model, "fcfs", _config(20), runner=runner)
    engine.submit([1, 2], request_id="x")
    with pytest.raises(ValueError, match="already submitted"):
        engine.submit([1, 2], request_id="x")
    with pytest.raises(ValueError, match="empty prompt"):
        engine.submit([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit([1, 999])
    with pytest.raises(TypeError, match="integers, got float"):
        engine.submit([1.7, 2.2])
    with pytest.raises(TypeError, match="integers, got str"):
        engine.submit(["1"])
    for call in (engine.cancel, engine.output, lambda rid: next(engine.stream(rid))):
        with pytest.raises(UnknownRequestError, match="unknown request id 'nope'"):
            call("nope")


def test_rejections_carry_the_schedulers_reason(model, runner):
    # 3 pages of 4 tokens: a 20-token prompt can never fit the pool
    engine = Engine(model, "fcfs", _config(3), runner=runner)
    engine.submit([1] * 20, SamplingParams(max_new_tokens=2), request_id="big")
    engine.submit([1, 2], SamplingParams(max_new_tokens=2), request_id="ok")
    events = engine.step()
    (reject,) = [e for e in events if e.kind == "reject"]
    assert reject.request_id == "big"
    assert reject.detail.startswith("rejected: ") and len(reject.detail) > len("rejected: ")
    tl = engine.timelines["big"]
    assert tl.rejected and tl.finish_reason == reject.detail
    engine.run_until_done(max_iterations=50)
    assert engine.timelines["ok"].finish_reason == "length"


def test_stop_strings_need_a_tokenizer(model, runner):
    engine = Engine(model, "fcfs", _config(20), runner=runner)
    with pytest.raises(ValueError, match="stop strings need an engine with a tokenizer"):
        engine.submit([1, 2], SamplingParams(4, stop_strings=("\n",)))


def test_a_rejection_alone_is_still_reported(model, runner):
    """A request rejected on arrival when nothing else is live keeps the engine busy until a
    plan has carried its rejection to the event stream and its timeline."""
    engine = Engine(model, "fcfs", _config(3), runner=runner)
    engine.submit([1] * 20, SamplingParams(max_new_tokens=2), request_id="big")
    assert engine.has_work
    events = engine.step()
    assert [e.kind for e in events] == ["reject"] and engine.timelines["big"].rejected
    assert not engine.has_work


def test_jaxserve_never_imports_kvpred():
    """KV prediction's model reaches the engine as a `ServingModel` from an entry point."""
    import ast
    import pathlib

    import jaxserve
    from jaxserve.runner import ServingModel

    root = pathlib.Path(jaxserve.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "kvpred" for n in names), path
    from kvpred.model import KVPModel

    assert isinstance(random_model(tiny_config()), ServingModel)
    assert all(callable(getattr(KVPModel, name, None)) for name in ("prefill_paged",))
    assert isinstance(KVPModel.decoder, property)


def test_the_profile_compiles_the_engines_own_prefill_programs(model):
    """Profiled on the engine's pool size, the profile's programs (its two batch-1 prefills,
    its swap's) are ones the warm-up then finds compiled."""
    import jax

    from jaxserve.profiler import profile

    def warmup_compiles(profiled: bool) -> int:
        jax.clear_caches()
        runner = ModelRunner(model)
        if profiled:
            profile(runner, PAGE, lengths=[16, 32], batches=[1], reps=1, num_pages=40)
        return Engine(model, "fcfs", _config(40), runner=runner).warmup(32, 32)

    assert warmup_compiles(False) - warmup_compiles(True) >= 4


def test_warmup_covers_a_kept_turns_continuation(model, runner):
    """With reuse, warm-up also compiles the continuation of a kept turn and the assembly
    of its first token with a plain prefill's in the same iteration: serving compiles
    nothing after it."""
    engine = Engine(model, "fcfs", _config(60), runner=runner, reuse=True)
    engine.warmup(48, 80, extend=True)
    before = CompileCounter.count()
    rs = np.random.RandomState(5)
    first = [int(t) for t in rs.randint(3, 128, 11)]
    engine.submit(first, SamplingParams(max_new_tokens=5), request_id="t0", conversation="c")
    engine.run_until_done(max_iterations=50)
    turn = first + engine.output("t0") + [int(t) for t in rs.randint(3, 128, 9)]
    for n in (1, 3):  # the continuation alone, then beside plain prompts
        for i in range(n - 1):
            other = [int(t) for t in rs.randint(3, 128, 5 + 7 * i)]
            engine.submit(other, SamplingParams(max_new_tokens=4), request_id=f"o{n}{i}")
        rid = engine.submit(turn, SamplingParams(max_new_tokens=4), conversation="c")
        engine.run_until_done(max_iterations=50)
        turn = turn + engine.output(rid) + [7, 8]
    assert engine.conversations.hits == 2
    assert CompileCounter.count() == before


@pytest.mark.parametrize("ending", ["length", "stop"])
def test_a_conversations_next_turn_reuses_its_kept_kv(model, runner, ending):
    """Turn 2 (and 3) start from the previous turn's KV brought back from the host and
    prefill only the new tokens; greedy outputs equal serving each whole conversation from
    scratch. A turn ends by its length limit or by a stop (the trace's emulated EOS)."""
    rs = np.random.RandomState(11)
    new = [[int(t) for t in rs.randint(3, 128, n)] for n in (13, 7, 21)]
    kept = Engine(model, "fcfs", _config(60), runner=runner, reuse=True)
    fresh = Engine(model, "fcfs", _config(60), runner=runner)
    prompt, saved, last = [], 0, 0
    page = kept.kv.nbytes // kept.kv.num_pages
    for turn, tokens in enumerate(new):
        prompt = prompt + tokens
        kw = {"output_len": 6, "stop_at_output_len": True} if ending == "stop" else {}
        params = SamplingParams(max_new_tokens=9)
        outs = []
        if turn:  # admitted first, it takes (and overwrites) the pages the last turn left
            filler = [int(t) for t in rs.randint(3, 128, 40 * turn)]
            kept.submit(filler, SamplingParams(max_new_tokens=2), request_id=f"filler{turn}")
        for engine, conv in ((kept, "c"), (fresh, None)):
            rid = engine.submit(prompt, params, request_id=f"t{turn}", conversation=conv, **kw)
            engine.run_until_done(max_iterations=200)
            outs.append(engine.output(rid))
        assert outs[0] == outs[1]
        assert kept.conversations.hits == turn
        # bytes moved: the kept turn back in, and out only the pages it did not hold
        cached = len(prompt) + len(outs[0]) - 1
        pages_in = pages_for(last, PAGE) if turn else 0
        pages_out = pages_for(cached, PAGE) - (last // PAGE if turn else 0)
        assert kept.timelines[f"t{turn}"].swapped_bytes == (pages_in + pages_out) * page
        last = cached
        if turn:  # everything but the previous turn's last token came back
            assert kept.conversations.tokens_reused - saved == len(prompt) - len(tokens) - 1
        saved = kept.conversations.tokens_reused
        prompt = prompt + outs[0]
    assert kept.scheduler.allocator.num_free == 60 - 1
    # a prompt that does not continue the kept turn prefills from scratch
    kept.submit(new[0], SamplingParams(max_new_tokens=3), request_id="other", conversation="c")
    kept.run_until_done(max_iterations=50)
    assert kept.conversations.hits == len(new) - 1 and kept.conversations.misses >= 1


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
