"""Warm-up and compile counts, and a conversation's next turn reusing its kept KV."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import PAGE, _config, _serve, _workload

from jaxserve.engine import Engine
from jaxserve.runner import CompileCounter, ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.sched.request import pages_for


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


def test_warmup_runs_every_program_it_compiles_and_leaves_no_trace(model, monkeypatch):
    """A program's first run costs more than its later ones (XLA loads its code), so a
    warm-up that compiled runs each program once (one that compiled nothing, after an earlier
    warm-up on the same runner, runs none); what those runs decode is thrown away: serving
    after the warm-up gives the tokens serving without one does."""
    runner = ModelRunner(model)  # its own programs: compiled (or loaded) here
    calls = {"lowered": 0, "ran": 0}

    def counting(fn):
        def counted(*args, **kw):
            calls["lowered" if runner.ahead is not None else "ran"] += 1
            return fn(*args, **kw)

        return counted

    for name in ("prefill", "update_slots", "decode_slots"):
        monkeypatch.setattr(runner, name, counting(getattr(runner, name)))
    prompts, lens = _workload(seed=4)
    warm = Engine(model, "fcfs", _config(40), runner=runner, decode_steps=4)
    warm.warmup(20, 50)
    assert calls["ran"] == calls["lowered"] > 10
    Engine(model, "vllm", _config(40), runner=runner, decode_steps=4).warmup(20, 50)
    assert calls["ran"] * 2 == calls["lowered"]
    monkeypatch.undo()
    outs = []
    for engine in (warm, Engine(model, "fcfs", _config(40), runner=runner, decode_steps=4)):
        ids = [engine.submit(p, SamplingParams(max_new_tokens=n)) for p, n in zip(prompts, lens)]
        engine.run_until_done(max_iterations=2000)
        outs.append([engine.output(i) for i in ids])
    assert outs[0] == outs[1]


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
