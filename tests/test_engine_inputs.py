"""The engine with what a user gives it: a tokenizer and stop strings, an oracle policy that
preempts, requests that can never run (their reasons reach the serving records)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_model, tiny_config
from engine_helpers import _config, _serve

from jaxserve.engine import Engine
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.serve_report import to_record
from jaxserve.tokenizer import load_default


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=11)


@pytest.fixture(scope="module")
def runner(model):
    return ModelRunner(model)


def _staggered(n: int = 8, seed: int = 3):
    """Long jobs first, short ones arriving later: SRPT preempts the long ones for them."""
    rs = np.random.RandomState(seed)
    prompts = [[int(t) for t in rs.randint(3, 128, rs.randint(8, 20))] for _ in range(n)]
    lens = [40] * (n // 2) + [4] * (n - n // 2)
    return prompts, lens


def test_srpt_swap_preemption_does_not_change_outputs(model, runner):
    prompts, lens = _staggered()
    _, ref = _serve(model, runner, "fcfs", _config(200), prompts, lens)
    engine = Engine(model, "srpt", _config(24), runner=runner)
    for i, (p, n) in enumerate(zip(prompts, lens)):
        engine.submit(p, SamplingParams(max_new_tokens=n, seed=5), request_id=f"r{i}", output_len=n)
        if i < len(prompts) // 2:
            for _ in range(6):  # the long jobs run a while before the short ones arrive
                engine.step()
    engine.run_until_done(max_iterations=5000)
    engine.scheduler.check_invariants()
    out = {f"r{i}": engine.output(f"r{i}") for i in range(len(prompts))}
    assert out == ref
    assert sum(t.preemptions for t in engine.timelines.values()) > 0
    assert sum(t.swapped_bytes for t in engine.timelines.values()) > 0


def _first_index_containing(tokenizer, ids: list[int], stop: str) -> int:
    """The length of the shortest prefix of `ids` whose text contains `stop`."""
    for n in range(1, len(ids) + 1):
        if stop in tokenizer.decode(ids[:n]):
            return n
    raise AssertionError("the stop string never appears")


def test_stop_strings_end_a_request_once_its_text_contains_one():
    tokenizer = load_default()
    m = random_model(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128), seed=4)
    runner = ModelRunner(m)
    prompt = tokenizer.encode("def fib(n):")
    free = Engine(m, "fcfs", _config(60), tokenizer, runner=runner)
    rid = free.submit(prompt, SamplingParams(max_new_tokens=24))
    free.run_until_done()
    ids = free.output(rid)
    # a stop string first completed by the 6th token or later: the text that token added
    k = next(
        n
        for n in range(6, len(ids))
        if tokenizer.decode(ids[:n]).strip()
        and tokenizer.decode(ids[:n]) != tokenizer.decode(ids[: n - 1])
    )
    stop = tokenizer.decode(ids[:k])[len(tokenizer.decode(ids[: k - 1])) :]
    want = ids[: _first_index_containing(tokenizer, ids, stop)]
    assert len(want) < len(ids)
    engine = Engine(m, "fcfs", _config(60), tokenizer, runner=runner)
    r = engine.submit(prompt, SamplingParams(max_new_tokens=24, stop_strings=(stop,)))
    events = []
    while engine.has_work:
        events += engine.step()
    assert engine.output(r) == want
    assert engine.timelines[r].finish_reason == "stop"
    assert [e.detail for e in events if e.kind == "finish"] == ["stop"]
    assert engine.scheduler.allocator.num_free == 60 - 1


def test_rejection_reasons_reach_the_serving_record(model, runner):
    engine = Engine(model, "fcfs", _config(3), runner=runner)
    engine.submit([1] * 20, SamplingParams(max_new_tokens=2), request_id="big")
    engine.submit([1, 2], SamplingParams(max_new_tokens=2), request_id="ok")
    engine.run_until_done(max_iterations=50)
    big, ok = to_record(engine.timelines["big"]), to_record(engine.timelines["ok"])
    assert big.state == "rejected" and ok.state == "finished"
    assert big.finish_reason == engine.timelines["big"].finish_reason
    assert big.finish_reason.startswith("rejected: needs 6 pages")  # 22 tokens of 4 per page
