"""How a dropped request gets its KV back (`--preemption=predict|recompute|auto`) on a KV
prediction model with random weights: the resume's cache is exactly the one the chosen
reference prefill writes (the auxiliary model's prediction, or the base's exact prefill), no
page leaks, and `auto` picks the cheapest of swap / recompute / predict by hand-worked costs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import engine_config, random_model, randomize, tiny_config
from flax import nnx

from jaxserve.device_batch import DeviceBatch
from jaxserve.engine import Engine
from jaxserve.errors import InputError
from jaxserve.runner import ModelRunner
from jaxserve.sampling import SamplingParams
from jaxserve.sched import Request, SchedulerConfig, State, preempt

PAGE = 4


@pytest.fixture(scope="module")
def kvp():
    from kvpred.model import KVPModel
    from kvpred.predictor import KVPredictor

    base = random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=11)
    layers = list(range(base.config.num_layers))
    pred = randomize(KVPredictor(base.config, base.config, layers, rngs=nnx.Rngs(0)), seed=3)
    return KVPModel(base, nnx.clone(base), pred)


@pytest.fixture(scope="module")
def runner(kvp):
    return ModelRunner(kvp)


def _config(num_pages: int, preemption: str, **kw) -> SchedulerConfig:
    return engine_config(num_pages, preemption, PAGE, **kw)


def _pages_kv(kv, pages: list[int], n: int) -> np.ndarray:
    """The first `n` tokens' K and V of a request, all layers, as one array."""
    out = []
    for x in kv.k + kv.v:
        a = np.asarray(x)[:, pages]  # [heads, P, S, hd]
        out.append(a.reshape(a.shape[0], -1, a.shape[-1])[:, :n])
    return np.concatenate(out, 0)


def _record_prefills(engine: Engine) -> list[dict]:
    """Spy on the engine's prefill calls: the rows, the kind, and each row's cache after."""
    calls = []
    real = engine.device.prefill

    def prefill(kv, reqs, seqs, params, keys, base=False):
        kv, out = real(kv, reqs, seqs, params, keys, base)
        for r, s in zip(reqs, seqs):
            cache = _pages_kv(kv, list(r.pages), len(s))
            calls.append({"id": r.id, "seq": list(s), "base": base, "cache": cache})
        return kv, out

    engine.device.prefill = prefill
    return calls


def _reference(runner, seq: list[int], base: bool) -> np.ndarray:
    """The cache a lone prefill of `seq` writes, by the model's prefill or the base's."""
    cfg = _config(40, "swap")
    device = DeviceBatch(runner, cfg, 4)
    r = Request("ref", 0.0, len(seq), 1)
    r.pages = list(range(1, 1 + -(-len(seq) // PAGE)))
    kv = runner.new_kv(40, PAGE)
    kv, _ = device.prefill(kv, [r], [seq], [SamplingParams()], [np.zeros(2, np.uint32)], base)
    return _pages_kv(kv, r.pages, len(seq))


def _serve(kvp, runner, config):
    rs = np.random.RandomState(4)
    engine = Engine(kvp, "vllm", config, runner=runner)
    calls = _record_prefills(engine)
    for i in range(6):
        prompt = [int(t) for t in rs.randint(3, 128, rs.randint(4, 14))]
        engine.submit(prompt, SamplingParams(max_new_tokens=int(rs.randint(10, 24))), f"r{i}")
    engine.run_until_done(max_iterations=3000)
    assert not engine.has_work
    engine.scheduler.check_invariants()
    assert engine.scheduler.allocator.num_free == config.num_pages - 1  # no page leaked
    assert engine.host.live_bytes == 0
    return engine, calls


# predict_tokens_per_s makes auto's predict the cheapest: 1e9 tokens/s against a swap of
# 1024-byte pages at 1e3 bytes/s and a recompute at 1e4 tokens/s
@pytest.mark.parametrize(
    "mode, config_kw, base",
    [
        ("predict", {}, False),
        ("recompute", {}, True),
        ("auto", {"predict_tokens_per_s": 1e9, "swap_bandwidth": 1e3}, False),
        ("auto", {"swap_bandwidth": 1e3}, True),  # without a prediction cost: recompute
    ],
)
def test_a_dropped_request_resumes_with_the_chosen_prefill(kvp, runner, mode, config_kw, base):
    """Every resume (a prefill of prompt + generated tokens) writes exactly the cache of the
    reference prefill of that recovery: the auxiliary model's prediction (the KVP model's
    prefill) or the base model's exact prefill; fresh prompts always predict."""
    engine, calls = _serve(kvp, runner, _config(14, mode, **config_kw))
    prompts = {rid: engine.timelines[rid].prompt_len for rid in engine.timelines}
    resumes = [c for c in calls if len(c["seq"]) > prompts[c["id"]]]
    assert resumes, "no request was dropped and resumed"
    assert all(not c["base"] for c in calls if len(c["seq"]) == prompts[c["id"]])
    assert all(c["base"] == base for c in resumes)
    kinds = {k for tl in engine.timelines.values() for k in tl.resume_kinds}
    assert kinds - {"pause"} == {"recompute" if base else "predict"}
    for c in resumes[:3]:
        want = _reference(runner, c["seq"], base)
        other = _reference(runner, c["seq"], not base)
        np.testing.assert_allclose(c["cache"], want, rtol=1e-4, atol=1e-4)
        assert np.abs(want - other).max() > 1e-2  # the two recoveries differ


def test_predict_needs_a_model_that_predicts(runner):
    base = random_model(tiny_config(vocab_size=128, max_seq_len=128), seed=11)
    with pytest.raises(InputError, match="kv_prediction"):
        Engine(base, "vllm", _config(14, "predict"))
    with pytest.raises(InputError, match="cannot predict"):
        Engine(base, "vllm", _config(14, "auto", predict_tokens_per_s=1e4))
    with pytest.raises(ValueError, match="predict_tokens_per_s"):
        _config(14, "auto", predict_tokens_per_s=0)


def test_auto_picks_the_cheapest_recovery_by_hand_worked_costs():
    """A victim with 39 tokens of KV (10 pages of 1000 bytes) and 40 tokens of context:
    swap 10 * 1000 / bandwidth, recompute 40 / prefill rate, predict 40 / prediction rate."""
    r = Request("v", 0.0, prompt_len=30, max_new_tokens=50)
    r.num_generated, r.state = 10, State.RUNNING  # kv_len 39, context 40

    def cfg(**kw):
        fields = dict(max_batch=4, num_pages=100, page_size=4, max_seq_len=128)
        fields |= dict(preemption="auto", kv_bytes_per_page=1000)
        return SchedulerConfig(**(fields | kw))

    # swap 0.01 s, recompute 0.04 s, predict 0.005 s: drop, and predict
    c = cfg(swap_bandwidth=1e6, prefill_tokens_per_s=1e3, predict_tokens_per_s=8e3)
    assert preempt.victim_mode(c, r, 0) == "drop" and preempt.recovery(c, r) == "predict"
    # predict 0.02 s: now the swap is the cheapest
    c = cfg(swap_bandwidth=1e6, prefill_tokens_per_s=1e3, predict_tokens_per_s=2e3)
    assert preempt.victim_mode(c, r, 0) == "swap"
    # swap 0.1 s, recompute 0.04 s, predict 0.05 s: drop, and recompute
    c = cfg(swap_bandwidth=1e5, prefill_tokens_per_s=1e3, predict_tokens_per_s=8e2)
    assert preempt.victim_mode(c, r, 0) == "drop" and preempt.recovery(c, r) == "recompute"
    # no prediction cost (a model that cannot predict): swap 0.01 s < recompute 0.04 s
    c = cfg(swap_bandwidth=1e6, prefill_tokens_per_s=1e3)
    assert preempt.victim_mode(c, r, 0) == "swap" and preempt.recovery(c, r) == "recompute"
    # the host budget has no room for 10 pages: drop, by the cheaper recovery
    c = cfg(swap_bandwidth=1e6, prefill_tokens_per_s=1e3, predict_tokens_per_s=2e3, host_pages=9)
    assert preempt.victim_mode(c, r, 0) == "drop" and preempt.recovery(c, r) == "predict"
    # the fixed modes
    c = cfg(preemption="predict", predict_tokens_per_s=1.0)
    assert preempt.victim_mode(c, r, 0) == "drop" and preempt.recovery(c, r) == "predict"
    c = cfg(preemption="swap", host_pages=9, predict_tokens_per_s=1e9)
    assert preempt.victim_mode(c, r, 0) == "drop" and preempt.recovery(c, r) == "recompute"


def test_serve_refuses_predict_without_kv_prediction():
    from jaxserve.serve import check_preemption

    with pytest.raises(InputError, match="--prefill=kv_prediction"):
        check_preemption("predict", "base")
    check_preemption("predict", "kv_prediction:/some/dir")
    check_preemption("auto", "base")


def test_the_profile_measures_prediction_beside_the_base_prefill(kvp, runner):
    """A predicting model's profile: its prefill table is the prediction's, and the
    recompute cost is the base's exact prefill; a base model has no prediction cost."""
    from jaxserve.profiler import profile

    prof = profile(runner, PAGE, lengths=[16, 32], batches=[1], reps=1)
    assert prof.predict_tokens_per_s == pytest.approx(32 / prof.prefill[-1][1])
    assert prof.prefill_tokens_per_s > 0 and prof.prefill_tokens_per_s != prof.predict_tokens_per_s
    base = profile(ModelRunner(kvp.base), PAGE, lengths=[16], batches=[1], reps=1)
    assert base.predict_tokens_per_s is None
