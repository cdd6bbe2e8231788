"""The engine's requests API: streams, stops, cancel, release, submit errors, rejections."""

from __future__ import annotations

import pytest
from conftest import random_model, tiny_config
from engine_helpers import PAGE, _config, _serve, _workload

from jaxserve.engine import Engine, UnknownRequestError
from jaxserve.sampling import SamplingParams


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
